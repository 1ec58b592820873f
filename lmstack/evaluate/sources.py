"""Where a task's records come from: a JSONL/JSON file, a Hugging Face dataset (when online or
cached), or the built-in suite (built into a cache folder on first use).

    {jsonl: data/arc.jsonl}                              # relative to the config file
    {hf: allenai/ai2_arc, name: ARC-Easy, split: test}
    {builtin: {split: test, cluster: nli, style: instruction, choices: true, seed: 0, size: tiny}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmstack.data.builtin import build_suite, read_documents
from lmstack.data.records import unsafe_tag
from lmstack.errors import LmstackError

SOURCE_KINDS = ("jsonl", "json", "hf", "builtin")
SOURCE_KEYS = {"jsonl", "json", "hf", "name", "split", "revision", "builtin", "split_of"}
BUILTIN_KEYS = {"split", "cluster", "task", "style", "choices", "open", "seed", "size", "dir", "kind", "unsafe", "lang"}
_OPTION_LIST = ("OPTIONS:", "선택지:")


def validate_source(src, where: str) -> dict:
    if isinstance(src, str):
        src = {"jsonl": src}
    if not isinstance(src, dict):
        raise LmstackError(f"{where}: a source is a mapping like {{jsonl: FILE}}, {{hf: NAME}} or {{builtin: {{...}}}}")
    bad = sorted(set(src) - SOURCE_KEYS)
    if bad:
        raise LmstackError(f"{where}: unknown source field {', '.join(map(repr, bad))} "
                           f"(known: {', '.join(sorted(SOURCE_KEYS))})")
    kinds = [k for k in SOURCE_KINDS if k in src]
    if len(kinds) != 1 and not (not kinds and "split" in src):
        raise LmstackError(f"{where}: give exactly one of {', '.join(SOURCE_KINDS)} (got {kinds or 'none'})")
    if "builtin" in src:
        b = src["builtin"] or {}
        if not isinstance(b, dict):
            raise LmstackError(f"{where}: builtin takes a mapping, e.g. {{split: test, cluster: nli}}")
        bad = sorted(set(b) - BUILTIN_KEYS)
        if bad:
            raise LmstackError(f"{where}: unknown builtin field {', '.join(map(repr, bad))} "
                               f"(known: {', '.join(sorted(BUILTIN_KEYS))})")
    return src


def with_split(src: dict, split: str) -> dict:
    """The same source with another split (for few-shot examples drawn from a train/dev split)."""
    if "hf" in src:
        return {**src, "split": split}
    if "builtin" in src:
        return {**src, "builtin": {**(src["builtin"] or {}), "split": split}}
    raise LmstackError(f"few-shot split {split!r}: a file source has no splits; give fewshot.source a file")


def read_records_file(path: Path, kind: str) -> list[dict]:
    """The records (JSON objects) of a JSONL file, or of a JSON list (or {"data": [...]}). A record's
    `unsafe` flag, when present, must be a JSON boolean (`unsafe_tag`): errors name the file and line."""
    if not path.is_file():
        raise LmstackError(f"{path}: data file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LmstackError(f"{path}: not UTF-8 ({e})") from None
    if kind == "json" or (kind != "jsonl" and text.lstrip().startswith("[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LmstackError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise LmstackError(f"{path}: expected a JSON list of records")
        recs = data
        wheres = [f"{path}: record {i}" for i in range(len(recs))]
    else:
        recs, wheres = [], []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LmstackError(f"{path}:{i}: invalid JSON: {e.msg}") from None
            wheres.append(f"{path}:{i}")
    for i, (r, where) in enumerate(zip(recs, wheres)):
        if not isinstance(r, dict):
            raise LmstackError(f"{path}: record {i} is not a JSON object")
        unsafe_tag(r, where)
    return recs


def hf_records(src: dict, where: str) -> list[dict]:
    name, config, split = src["hf"], src.get("name"), src.get("split", "test")
    try:  # optional: datasets
        import datasets
    except ImportError:
        raise LmstackError(f"{where}: Hugging Face dataset {name!r} needs the `datasets` package "
                           "(pip install datasets), or give the records as a JSONL file with --data") from None
    try:
        ds = datasets.load_dataset(name, config, split=split, revision=src.get("revision"))
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise LmstackError(
            f"{where}: Hugging Face dataset {name!r} (config {config!r}, split {split!r}) is not available"
            f"{' offline' if offline else ''}: {e.__class__.__name__}: {msg[:200]}. Download it once online, "
            "or give the records as a JSONL file (--data TASK=FILE)") from None
    return [dict(r) for r in ds]


def cache_root() -> Path:
    return Path(os.environ.get("LMSTACK_CACHE", Path.home() / ".cache" / "lmstack"))


def spread(records: list, limit: int | None) -> list:
    """`limit` records spread evenly over the list (so every task of a mixed file is represented)."""
    if not limit or limit >= len(records):
        return records
    step = len(records) / limit
    return [records[int(i * step)] for i in range(limit)]


def builtin_dir(seed: int = 0, size: str = "tiny", folder=None) -> Path:
    """The built-in suite's folder, built on first use (about a second for `tiny`)."""
    d = Path(folder) if folder else cache_root() / "builtin" / f"seed{seed}-{size}"
    if not (d / "manifest.json").is_file():
        build_suite(d, seed=seed, size=size)
    return d


def builtin_records(spec: dict, where: str) -> list[dict]:
    spec = dict(spec or {})
    d = builtin_dir(spec.get("seed", 0), spec.get("size", "tiny"), spec.get("dir"))
    split = spec.get("split", "test")
    kind = spec.get("kind", "tasks")
    if kind not in ("tasks", "safety", "corpus"):
        raise LmstackError(f"{where}: builtin kind {kind!r}: use tasks, safety or corpus")
    if kind == "corpus":  # documents of corpus/val.txt (heldout facts) or train.txt, for perplexity
        name = {"test": "val", "validation": "val"}.get(split, split)
        path = d / "corpus" / f"{name}.txt"
        if not path.is_file():
            raise LmstackError(f"{where}: built-in corpus {name!r} not found ({path}); use train or val")
        return [{"text": t} for t in read_documents(path)]
    path = d / "tasks" / (f"safety_{split}.jsonl" if kind == "safety" else f"{split}.jsonl")
    if not path.is_file():
        raise LmstackError(f"{where}: built-in split {split!r} not found ({path}); use train, validation or test")
    recs = read_records_file(path, "jsonl")  # checks every record's `unsafe` flag is a boolean
    want_unsafe = spec.get("unsafe")
    if want_unsafe is not None and not isinstance(want_unsafe, bool):
        raise LmstackError(f"{where}: builtin unsafe: true or false, got {want_unsafe!r}")
    style = spec.get("style", "instruction" if kind == "tasks" else None)
    out = []
    for r in recs:
        if spec.get("cluster") and r.get("cluster") != spec["cluster"]:
            continue
        if spec.get("task") and r.get("task") not in _as_list(spec["task"]):
            continue
        if style and r.get("style") != style:
            continue
        if spec.get("lang") and r.get("lang") != spec["lang"]:
            continue
        if "choices" in spec and spec["choices"] is not None and bool(r.get("choices")) != bool(spec["choices"]):
            continue
        if want_unsafe is not None and (r.get("unsafe") is True) != want_unsafe:
            continue
        # Convenience field for templates: the user's text.
        user = "\n".join(m["content"] for m in r["messages"] if m["role"] == "user")
        # open: only prompts that show no option list (free answers, e.g. for hallucination).
        if spec.get("open") is not None and bool(spec["open"]) == any(o in user for o in _OPTION_LIST):
            continue
        out.append({**r, "input": user, "_world": str(d / "world.json")})
    if not out:
        raise LmstackError(f"{where}: the built-in suite has no records for {spec}")
    return out


def _as_list(x):
    return x if isinstance(x, list) else [x]


def load_records(src: dict, where: str, base: Path | None = None) -> list[dict]:
    src = validate_source(src, where)
    if "jsonl" in src or "json" in src:
        kind = "jsonl" if "jsonl" in src else "json"
        p = Path(os.path.expanduser(str(src[kind])))
        if not p.is_absolute() and base is not None and not p.exists():
            p = base / p
        return read_records_file(p, kind)
    if "hf" in src:
        return hf_records(src, where)
    if "builtin" in src:
        return builtin_records(src["builtin"], where)
    raise LmstackError(f"{where}: source {src} has no data (a split alone is only valid for few-shot)")
