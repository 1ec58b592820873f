"""A task is data: a YAML/JSON config read into `TaskConfig`. Adding a benchmark needs no code.

    task: arc_easy
    type: multiple_choice                 # multiple_choice | generate | perplexity
    source: {hf: allenai/ai2_arc, name: ARC-Easy, split: test}
    description: ""                       # instruction prefix (a template)
    prompt: "Question: {{question}}\\nAnswer:"
    choices: choices.text                 # expression -> list of strings
    target: choices.label.index(answerKey)  # expression -> index, choice text, or list of indices
    target_delimiter: " "
    fewshot: {k: 0, source: {split: train}, select: fixed, seed: 1234, delimiter: "\\n\\n"}
    metrics: [acc, acc_norm]
    generation: {max_new_tokens: 32, temperature: 0, stop: ["\\n\\n"]}   # SamplingParams fields
    answer: {regex: ["#### (-?[0-9.,]+)"], match: first, fallback: last_number, normalize: true}

Unknown fields are errors that name the field and the file; ready configs live in
lmstack/evaluate/tasks/*.yaml (`lmstack eval tasks` lists them).
"""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from lmstack.backends import as_sampling
from lmstack.errors import LmstackError

from .sources import validate_source
from .templating import Template

TASK_DIR = Path(__file__).parent / "tasks"
TYPES = ("multiple_choice", "generate", "perplexity")
METRICS = {
    "multiple_choice": ("acc", "acc_norm", "mc2"),
    "generate": ("exact_match",),
    "perplexity": ("perplexity", "bits_per_byte", "word_perplexity", "byte_perplexity"),
}
DEFAULT_METRICS = {"multiple_choice": ["acc", "acc_norm"], "generate": ["exact_match"],
                   "perplexity": ["perplexity", "bits_per_byte", "word_perplexity"]}


@dataclass
class FewShot:
    k: int = 0
    source: dict | None = None  # a source, or {split: NAME} of the task's own source; None: the eval set minus the item
    select: str = "fixed"  # fixed | random | nearest
    seed: int = 1234
    delimiter: str = "\n\n"
    target: str | None = None  # template of an example's answer (default: its target text)
    rationale: str | None = None  # template of a chain-of-thought example's answer (reasoning + answer)
    same: str | None = None  # only examples whose field of this name equals the item's (MMLU: subject)


@dataclass
class Answer:
    regex: list[str] = field(default_factory=list)  # tried in order; group 1 if any
    match: str = "first"  # first | last
    fallback: str | None = "text"  # text | last_number | first_number | none
    normalize: bool = True  # SQuAD-style normalisation before exact match


@dataclass
class CoT:
    trigger: str = "Let's think step by step."
    answer_trigger: str = "Therefore, the answer is"
    max_new_tokens: int = 256


@dataclass
class SelfConsistency:
    n: int = 5
    temperature: float = 0.7
    top_p: float = 1.0


@dataclass
class TaskConfig:
    task: str
    type: str
    source: dict
    prompt: str = "{{ text }}"
    description: str = ""
    choices: str | list | None = None
    target: str | int | None = None
    target_delimiter: str = " "
    fewshot: FewShot = field(default_factory=FewShot)
    metrics: list[str] = field(default_factory=list)
    generation: dict = field(default_factory=dict)
    answer: Answer = field(default_factory=Answer)
    cot: CoT = field(default_factory=CoT)
    self_consistency: SelfConsistency = field(default_factory=SelfConsistency)
    chat: bool = False  # wrap the prompt as a user message in the model's chat template
    limit: int | None = None
    text: str | None = None  # perplexity: template of the document to score (default: prompt)
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    path: str = ""  # where the config was read from (set by the loader)

    def to_dict(self) -> dict:
        return asdict(self)


_NESTED = {"fewshot": FewShot, "answer": Answer, "cot": CoT, "self_consistency": SelfConsistency}


def _check_keys(d: dict, cls, where: str) -> None:
    known = {f.name for f in fields(cls)} - {"path"}
    bad = [k for k in d if k not in known]
    if bad:
        hints = []
        for b in bad:
            close = difflib.get_close_matches(str(b), known, n=1)
            hints.append(f"{b!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise LmstackError(f"{where}: unknown field {', '.join(hints)}; known fields: {', '.join(sorted(known))}")


def task_from_dict(d: dict, where: str = "task config") -> TaskConfig:
    if not isinstance(d, dict):
        raise LmstackError(f"{where}: a task config is a mapping of fields")
    _check_keys(d, TaskConfig, where)
    for req in ("task", "type", "source"):
        if req not in d:
            raise LmstackError(f"{where}: missing required field {req!r}")
    d = dict(d)
    for name, cls in _NESTED.items():
        sub = d.get(name)
        if sub is None:
            d.pop(name, None)
            continue
        if isinstance(sub, int) and name == "fewshot":
            sub = {"k": sub}
        if not isinstance(sub, dict):
            raise LmstackError(f"{where}: field {name!r} takes a mapping")
        _check_keys(sub, cls, f"{where}: {name}")
        d[name] = cls(**sub)
    cfg = TaskConfig(**d)
    if where.endswith((".yaml", ".yml", ".json")):
        cfg.path = where  # errors name the file; relative data paths resolve beside it
    validate(cfg, where)
    return cfg


def validate(cfg: TaskConfig, where: str) -> None:
    if cfg.type not in TYPES:
        raise LmstackError(f"{where}: type {cfg.type!r}: use one of {', '.join(TYPES)}")
    cfg.source = validate_source(cfg.source, f"{where}: source")
    if cfg.fewshot.source is not None:
        cfg.fewshot.source = validate_source(cfg.fewshot.source, f"{where}: fewshot.source")
    if not cfg.metrics:
        cfg.metrics = list(DEFAULT_METRICS[cfg.type])
    bad = [m for m in cfg.metrics if m not in METRICS[cfg.type]]
    if bad:
        raise LmstackError(f"{where}: metric {', '.join(map(repr, bad))} does not apply to {cfg.type} tasks "
                           f"(use {', '.join(METRICS[cfg.type])})")
    if cfg.type == "multiple_choice" and (cfg.choices is None or cfg.target is None):
        raise LmstackError(f"{where}: a multiple_choice task needs `choices` and `target`")
    if cfg.type == "generate" and cfg.target is None:
        raise LmstackError(f"{where}: a generate task needs `target`")
    if cfg.fewshot.k < 0:
        raise LmstackError(f"{where}: fewshot.k must be >= 0")
    if cfg.fewshot.select not in ("fixed", "random", "nearest"):
        raise LmstackError(f"{where}: fewshot.select {cfg.fewshot.select!r}: use fixed, random or nearest")
    if cfg.answer.match not in ("first", "last"):
        raise LmstackError(f"{where}: answer.match {cfg.answer.match!r}: use first or last")
    if isinstance(cfg.answer.regex, str):
        cfg.answer.regex = [cfg.answer.regex]
    as_sampling(cfg.generation)  # unknown or invalid sampling fields fail here, naming the field
    # Compile every template now, so syntax errors surface before any model call.
    for name in ("prompt", "description", "text"):
        if getattr(cfg, name):
            Template(getattr(cfg, name), f"{where}: {name}")
    for name in ("target", "rationale"):
        if getattr(cfg.fewshot, name):
            Template(getattr(cfg.fewshot, name), f"{where}: fewshot.{name}")
    if isinstance(cfg.choices, str):
        Template(cfg.choices, f"{where}: choices", expression=True)
    if isinstance(cfg.target, str):
        Template(cfg.target, f"{where}: target", expression=True)


def read_config_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LmstackError(f"{path}: cannot read task config ({e.strerror})") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, Exception) as e:  # yaml.YAMLError and JSON errors alike
        raise LmstackError(f"{path}: invalid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                           f"{str(e).splitlines()[0]}") from None


def registry() -> dict[str, Path]:
    """Ready task configs and groups shipped with lmstack: name -> file."""
    return {p.stem: p for p in sorted(TASK_DIR.glob("*.yaml"))}


def load_task(name_or_path, overrides: dict | None = None) -> TaskConfig:
    """A task by registry name or config file path; `overrides` replace top-level fields."""
    p = Path(str(name_or_path))
    if p.suffix in (".yaml", ".yml", ".json") and p.is_file():
        path = p
    else:
        reg = registry()
        if str(name_or_path) not in reg:
            close = difflib.get_close_matches(str(name_or_path), reg, n=3)
            raise LmstackError(f"unknown task {str(name_or_path)!r}" + (f" (did you mean {', '.join(close)}?)" if close
                               else "") + "; `lmstack eval tasks` lists the ready ones, or give a .yaml file")
        path = reg[str(name_or_path)]
    d = read_config_file(path)
    if isinstance(d, dict) and "group" in d:
        raise LmstackError(f"{path}: {name_or_path!r} is a group of tasks; use expand_tasks()")
    if overrides:
        d = {**d, **overrides}
    cfg = task_from_dict(d, str(path))
    cfg.path = str(path)
    return cfg


def expand_tasks(spec) -> list[str]:
    """'a,b', wildcards ('builtin_*') and groups (a YAML with `group:` and `tasks:`) -> task names/paths."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    reg = registry()
    out: list[str] = []
    for it in items:
        if any(c in it for c in "*?[") and not Path(it).exists():
            names = [n for n in fnmatch.filter(reg, it) if not _is_group(reg[n])]
            if not names:
                raise LmstackError(f"task pattern {it!r} matches no ready task")
            out += names
            continue
        path = reg.get(it) or (Path(it) if Path(it).is_file() else None)
        if path is not None and _is_group(path):
            out += expand_tasks(read_config_file(path)["tasks"])
        else:
            out.append(it)
    return list(dict.fromkeys(out))


def _is_group(path: Path) -> bool:
    if path.suffix not in (".yaml", ".yml", ".json"):
        return False
    d = read_config_file(path)
    return isinstance(d, dict) and "group" in d
