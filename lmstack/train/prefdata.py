"""Preference data: the shared config of the preference recipes, the built-in suite as default data,
comparisons and prompts read with every bad record reported, their token ids and right-padded batches.

Every preference recipe (reward, ppo, dpo, grpo, rejection-sampling) runs on the built-in suite when no
--data is given: it is built into `<out>/suite` (seeded, so every stage sees the same bytes).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmstack.data.builtin import World, build_suite, judge_panel
from lmstack.data.records import iter_jsonl_numbered, read_jsonl, unsafe_tag
from lmstack.errors import LmstackError
from lmstack.train.common import TrainConfig
from lmstack.train.lora import LoraOptions


@dataclass
class PrefConfig(LoraOptions, TrainConfig):
    """Fields every preference recipe has (on top of TrainConfig and the LoRA options)."""

    model: str = ""  #: checkpoint to start from (the SFT policy; folder, .gguf or hub name)
    data: list[str] = field(default_factory=list)  #: JSONL files (default: the built-in suite, built into <out>/suite)
    suite: str = ""  #: an existing built-in suite folder to use instead of building <out>/suite
    suite_size: str = "tiny"  #: size of the suite built when --suite is not given: tiny, small, medium, large or e.g. 2MB
    seq_len: int = 256  #: longest prompt + answer, in tokens
    skip_bad: bool = False  #: count and skip malformed records instead of stopping
    overlong: str = "drop"  #: drop (counted) or error: prompt + answer longer than --seq-len
    lr: float = 1e-4
    warmup: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    log_interval: int = 1
    ckpt_interval: int = 0
    eval_interval: int = 0
    lora_dropout: float = 0.0  #: dropout on the adapters' input (off: PPO's ratios must compare the same function)


# ---- the built-in suite as default data ------------------------------------------------------------------------

def suite_dir(cfg: PrefConfig) -> Path:
    """The suite folder: --suite, or <out>/suite (built from --seed and --suite-size when missing)."""
    d = Path(cfg.suite) if cfg.suite else Path(cfg.out) / "suite"
    if not (d / "manifest.json").exists():
        if cfg.suite:
            raise LmstackError(f"{d}: not a built-in suite folder (no manifest.json); build one with "
                               f"`lmstack data builtin --out {d}`")
        build_suite(d, seed=cfg.seed, size=cfg.suite_size)
    return d


def preference_files(cfg: PrefConfig, suite_file: str) -> tuple[list[str], list[str]]:
    """(--data, --val-data), or the built-in suite's `preferences/<suite_file>` and its held-out pairs."""
    data, val_data = list(cfg.data), list(getattr(cfg, "val_data", []))
    if not data:
        suite = suite_dir(cfg)
        data = [str(suite / "preferences" / suite_file)]
        val_data = val_data or [str(suite / "preferences" / "pairs_test.jsonl")]
    return data, val_data


def suite_judge(suite: Path, splits=("train", "validation", "test")):
    """The suite's panel of simulated annotators with every task and safety record registered, so that
    a prompt given as plain messages is judged against its ground truth."""
    world = World.from_json(suite / "world.json")
    recs = []
    for s in splits:
        for name in (f"{s}.jsonl", f"safety_{s}.jsonl"):
            if (suite / "tasks" / name).exists():
                recs += read_jsonl(suite / "tasks" / name)
    manifest = json.loads((suite / "manifest.json").read_text())
    ann = manifest.get("annotators") or [{}]
    return judge_panel(world, len(ann), ann[0].get("flip_prob", 0.1), manifest.get("seed", 0), records=recs)


# ---- comparisons (reward model, DPO) ------------------------------------------------------------------------------

@dataclass
class Comparison:
    """One prompt, its answers and the preferences among them. InstructGPT keeps all C(K,2) comparisons of a
    prompt in one batch element: split across batches, the same answers would be fitted over and over."""

    id: str
    prompt: list[dict]
    answers: list[str]
    pairs: list[tuple[int, int, float]]  # (better, worse, margin)
    unsafe: bool = False
    cluster: str = ""


def prompt_messages(prompt, where: str = "prompt") -> list[dict]:
    """The messages before the answer, from a string or a message list (checked; `where` names the record)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        raise LmstackError(f"{where}: 'prompt' must be a string or a non-empty list of {{role, content}} messages")
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    while msgs and msgs[-1]["role"] == "assistant":  # a record with its answer: the prompt is what precedes it
        msgs.pop()
    if not msgs:
        raise LmstackError(f"{where}: the prompt has no user turn")
    return msgs


def ranking_pairs(rec: dict, where: str, stats: dict) -> list[tuple[int, int, float]]:
    """All C(K,2) pairs of a ranking best -> worst. A ranking entry may be a list of tied answers: no pair is
    formed inside a tie (counted). Every answer must be ranked exactly once, else the record is bad."""
    answers = rec["answers"]
    groups = [g if isinstance(g, list) else [g] for g in rec["ranking"]]
    flat = [i for g in groups for i in g]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in flat):
        raise LmstackError(f"{where}: 'ranking' must hold answer indices (ints, or lists of ints for ties)")
    if sorted(flat) != list(range(len(answers))):
        missing = sorted(set(range(len(answers))) - set(flat))
        extra = sorted(set(flat) - set(range(len(answers))))
        dup = sorted({i for i in flat if flat.count(i) > 1})
        raise LmstackError(f"{where}: 'ranking' must rank each of the {len(answers)} answers once "
                           f"(missing {missing}, out of range {extra}, repeated {dup})")
    scores = rec.get("scores")
    pairs = []
    for gi, gj in itertools.combinations(range(len(groups)), 2):
        for a in groups[gi]:
            for b in groups[gj]:
                if answers[a] == answers[b]:
                    stats["identical_pairs"] += 1
                    continue
                m = abs(scores[a] - scores[b]) if isinstance(scores, list) and len(scores) == len(answers) else 0.0
                pairs.append((a, b, float(m)))
    stats["tied_pairs"] += sum(len(g) * (len(g) - 1) // 2 for g in groups)
    return pairs


def load_comparisons(paths: list[str], skip_bad: bool = False, subset: str = "all",
                     margin_scale: float = 0.0) -> tuple[list[Comparison], dict]:
    """Rankings ({prompt, answers, ranking}) and pairs ({prompt, chosen, rejected, margin?}) from JSONL files,
    grouped by prompt. Returns the comparisons and counts of everything not used (identical pairs, ties,
    bad records, other subset), so nothing is dropped silently.

    subset: all | helpful (cluster != safety) | safety (cluster == safety), for Llama 2's two reward models.
    margin_scale: Llama 2's margin = scale x the rating gap (the `margin` of a pair, the score gap of a ranking).
    """
    if subset not in ("all", "helpful", "safety"):
        raise LmstackError(f"--subset must be all, helpful or safety, not {subset!r}")
    stats = {"records": 0, "bad_records": 0, "identical_pairs": 0, "tied_pairs": 0, "other_subset": 0,
             "comparisons": 0, "pairs": 0, "bad": []}
    groups: dict[str, Comparison] = {}
    for path in paths:
        for lineno, rec in iter_jsonl_numbered(path):
            where = f"{path}:{lineno}"
            stats["records"] += 1
            try:
                prompt = prompt_messages(rec.get("prompt", rec.get("messages")), where)
                unsafe = unsafe_tag(rec, where)
                if "answers" in rec:
                    answers = rec["answers"]
                    if not isinstance(answers, list) or len(answers) < 2 or not all(
                            isinstance(a, str) and a.strip() for a in answers):
                        raise LmstackError(f"{where}: 'answers' must be a list of two or more non-empty strings")
                    if "ranking" not in rec:
                        raise LmstackError(f"{where}: a record with 'answers' needs a 'ranking'")
                    pairs = ranking_pairs(rec, where, stats)
                elif "chosen" in rec and "rejected" in rec:
                    c, r = rec["chosen"], rec["rejected"]
                    if not (isinstance(c, str) and isinstance(r, str) and c.strip() and r.strip()):
                        raise LmstackError(f"{where}: 'chosen' and 'rejected' must be non-empty strings")
                    if c == r:
                        stats["identical_pairs"] += 1
                        continue
                    answers, pairs = [c, r], [(0, 1, float(rec.get("margin") or 0.0))]
                else:
                    raise LmstackError(f"{where}: expected a ranking (prompt, answers, ranking) or a pair "
                                       f"(prompt, chosen, rejected)")
            except LmstackError as e:
                if not skip_bad:
                    raise
                stats["bad_records"] += 1
                stats["bad"].append(str(e))
                continue
            cluster = rec.get("cluster", "")
            if (subset == "helpful" and cluster == "safety") or (subset == "safety" and cluster != "safety"):
                stats["other_subset"] += 1
                continue
            key = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
            g = groups.get(key)
            if g is None:
                g = groups[key] = Comparison(str(rec.get("id", len(groups))), prompt, [], [], unsafe, cluster)
            idx = []
            for a in answers:
                if a not in g.answers:
                    g.answers.append(a)
                idx.append(g.answers.index(a))
            g.pairs += [(idx[a], idx[b], margin_scale * m) for a, b, m in pairs]
    comps = [g for g in groups.values() if g.pairs]
    stats["comparisons"], stats["pairs"] = len(comps), sum(len(c.pairs) for c in comps)
    stats["bad"] = stats["bad"][:20]
    if not comps:
        raise LmstackError(f"no usable comparisons in {', '.join(map(str, paths))} ({fmt_stats(stats)})")
    return comps, stats


def fmt_stats(stats: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in stats.items() if k != "bad" and not isinstance(v, (list, dict)))


def encode_answer(tok, prompt: list[dict], answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + assistant answer through the chat template, cut after the assistant turn's last
    token (its end-of-turn), and where the answer starts. The reward is read at that last token, the token at
    which a sampled response stops."""
    ids, mask = tok.encode_chat(prompt + [{"role": "assistant", "content": answer}], add_generation_prompt=False)
    on = [i for i, m in enumerate(mask) if m]
    if not on:
        raise LmstackError("chat template marks no assistant tokens; cannot locate the answer")
    return ids[: on[-1] + 1], on[0]


def prompt_ids(tok, prompt: list[dict]) -> list[int]:
    return tok.encode_chat(prompt, add_generation_prompt=True)[0]


# ---- prompts (PPO, GRPO, rejection sampling) ----------------------------------------------------------------------

def load_prompts(cfg: PrefConfig, clusters: list[str] | None = None, split: str = "train") -> tuple[list[dict], dict]:
    """Prompt records: each keeps its fields (target, meta, unsafe, cluster: what judges and verifiers need) and
    gets 'prompt' (the messages before the answer). From --data files, or the suite's instruction-style task
    records plus its safety requests. Returns records and counts."""
    stats = {"records": 0, "bad_records": 0, "other_cluster": 0, "bad": []}
    if cfg.data:
        sources = list(cfg.data)
    else:
        d = suite_dir(cfg)
        sources = [str(d / "tasks" / f"{split}.jsonl"), str(d / "tasks" / f"safety_{split}.jsonl")]
    out = []
    for path in sources:
        for lineno, rec in iter_jsonl_numbered(path):
            stats["records"] += 1
            if not cfg.data and rec.get("style", "instruction") != "instruction":
                continue
            if clusters and rec.get("cluster") not in clusters:
                stats["other_cluster"] += 1
                continue
            try:
                msgs = prompt_messages(rec.get("prompt", rec.get("messages")), f"{path}:{lineno}")
                unsafe = unsafe_tag(rec, f"{path}:{lineno}")
            except LmstackError as e:
                if not cfg.skip_bad:
                    raise
                stats["bad_records"] += 1
                stats["bad"].append(str(e))
                continue
            out.append({**rec, "prompt": msgs, "unsafe": unsafe})
    if not out:
        raise LmstackError(f"no prompts in {', '.join(sources)} ({fmt_stats(stats)})")
    stats["prompts"] = len(out)
    return out, stats


def encode_prompts(tok, records: list[dict], max_prompt: int, overlong: str = "drop") -> tuple[list, list, int]:
    """(records, token ids) of the prompts that leave room for an answer; the rest are counted (or an error)."""
    keep, ids, dropped = [], [], 0
    for r in records:
        p = prompt_ids(tok, r["prompt"])
        if len(p) > max_prompt:
            if overlong == "error":
                raise LmstackError(f"prompt {r.get('id', '?')} has {len(p)} tokens; at most {max_prompt} leave room "
                                   f"for the answer (raise --seq-len, lower --max-new-tokens, or --overlong drop)")
            dropped += 1
            continue
        keep.append(r)
        ids.append(p)
    if not keep:
        raise LmstackError(f"every prompt is longer than {max_prompt} tokens")
    return keep, ids, dropped


# ---- batches -----------------------------------------------------------------------------------------------------

def right_pad(seqs: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids right-padded, and lengths. Right padding needs no mask: causal attention never lets a real
    token see the padding after it, and every row starts at position 0."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids.to(device), torch.tensor([len(s) for s in seqs], device=device)
