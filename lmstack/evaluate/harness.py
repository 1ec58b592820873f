"""The task harness: run task configs against a backend, score every item, save per-item outputs
beside the aggregate (with bootstrap standard errors).

    from lmstack.evaluate import load_task, run_task
    res = run_task(load_task("arc_easy"), backend, num_fewshot=5)
    res.metrics  # {"acc": 0.61, "acc_stderr": 0.01, "acc_norm": ...}

Prompt layout is lm-evaluation-harness's: description + k solved examples (joined by the few-shot
delimiter, question + target_delimiter + answer) + the query; a multiple-choice item scores
`target_delimiter + choice` after that context for each choice. Every item asked for is scored: a
generation with no extractable answer counts as wrong and is reported as `invalid`, never dropped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.errors import LmstackError
from lmstack.infer.prompting import (
    build_prompt,
    select_examples,
    self_consistency,
    zero_shot_cot,
)
from lmstack.text import exact_match, extract_answer, match_choice

from .config import TaskConfig, load_task
from .metrics import bootstrap_stderr, mc_scores, ppl_aggs
from .sources import load_records, with_split
from .templating import Template

STRATEGIES = ("default", "zero_shot", "few_shot", "cot", "zero_shot_cot", "self_consistency")


@dataclass
class TaskResult:
    task: str
    type: str
    metrics: dict
    n: int
    n_available: int
    strategy: str = "default"
    num_fewshot: int = 0
    n_invalid: int = 0
    scored_by: str = "loglikelihood"
    samples: list = field(default_factory=list, repr=False)
    config: dict = field(default_factory=dict, repr=False)
    seconds: float = 0.0

    @property
    def main_metric(self) -> str:
        return next(k for k in self.metrics if not k.endswith("_stderr"))

    def summary(self) -> dict:
        return {"task": self.task, "type": self.type, "metrics": self.metrics, "n": self.n,
                "n_available": self.n_available, "n_invalid": self.n_invalid, "strategy": self.strategy,
                "num_fewshot": self.num_fewshot, "scored_by": self.scored_by, "seconds": round(self.seconds, 2),
                "config": self.config}


def _gold(value, choices, where: str, i: int) -> list[int]:
    vals = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in vals:
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, str):
            if v in choices:
                v = choices.index(v)
            elif v.strip().lstrip("-").isdigit():
                v = int(v.strip())
            else:
                raise LmstackError(f"{where} (record {i}): target {v!r} is neither a choice nor an index "
                                   f"(choices: {choices})")
        if not isinstance(v, int) or not (0 <= v < len(choices)):
            raise LmstackError(f"{where} (record {i}): target {v!r} is not an index into {len(choices)} choices")
        out.append(v)
    if not out:
        raise LmstackError(f"{where} (record {i}): empty target")
    return out


def _resolve_strategy(cfg: TaskConfig, strategy: str | None, num_fewshot: int | None, where: str):
    """(k, use_rationale, zero_shot_cot) for a strategy, with errors where the config cannot support it."""
    s = strategy or "default"
    if s not in STRATEGIES:
        raise LmstackError(f"strategy {s!r}: use one of {', '.join(STRATEGIES)}")
    k = cfg.fewshot.k if num_fewshot is None else num_fewshot
    if cfg.type == "perplexity" and s != "default":
        raise LmstackError(f"{where}: prompting strategies do not apply to perplexity tasks")
    if s in ("zero_shot", "zero_shot_cot"):
        return 0, False, s == "zero_shot_cot"
    if s == "few_shot" and k <= 0:
        raise LmstackError(f"{where}: few_shot needs a number of examples (--num-fewshot K or fewshot.k)")
    if s == "cot":
        if not cfg.fewshot.rationale:
            raise LmstackError(f"{where}: cot needs solved examples with reasoning (fewshot.rationale in the config)")
        if k <= 0:
            raise LmstackError(f"{where}: cot needs a number of examples (--num-fewshot K or fewshot.k)")
        return k, True, False
    if s == "self_consistency":
        if cfg.fewshot.rationale and k > 0:
            return k, True, False
        return 0, False, True
    return k, False, False


def run_task(cfg: TaskConfig | str, backend, strategy: str | None = None, num_fewshot: int | None = None,
             fewshot_select: str | None = None, limit: int | None = None, chat: bool | None = None,
             mc_mode: str | None = None, sc_samples: int | None = None, generation: dict | None = None,
             seed: int | None = None, bootstrap_iters: int = 1000, data: str | None = None, log=None) -> TaskResult:
    """Evaluate one task. `data` replaces the task's source with a JSONL/JSON file (and few-shot
    examples given as a split of the original source are then drawn from that file, minus the item).
    `seed` (default: the config's fewshot.seed) drives random few-shot selection, sampled paths and
    the bootstrap."""
    from lmstack.backends import as_sampling

    t0 = time.time()
    if isinstance(cfg, str):
        cfg = load_task(cfg)
    rng_seed = cfg.fewshot.seed if seed is None else seed
    where = f"task {cfg.task}" + (f" ({cfg.path})" if cfg.path else "")
    base = Path(cfg.path).parent if cfg.path else None
    source = {"jsonl": data} if data else cfg.source
    all_records = load_records(source, f"{where}: source", base)
    n_available = len(all_records)
    limit = limit if limit is not None else cfg.limit
    records = all_records[:limit] if limit else all_records
    if not records:
        raise LmstackError(f"{where}: no records to evaluate")
    if limit and limit > n_available:
        print(f"note: {cfg.task}: --limit {limit} but the task has {n_available} items; all {n_available} are scored",
              file=log or sys.stderr)
    chat = cfg.chat if chat is None else chat
    strategy = strategy or "default"
    k, use_rationale, zs_cot = _resolve_strategy(cfg, strategy, num_fewshot, where)
    select = fewshot_select or cfg.fewshot.select

    prompt_t = Template(cfg.prompt, f"{where}: prompt")
    if cfg.type != "perplexity":  # perplexity scores `text` alone
        prompt_t.check(records[0])
    desc_t = Template(cfg.description, f"{where}: description") if cfg.description else None
    if desc_t:
        desc_t.check(records[0])
    choices_t = Template(cfg.choices, f"{where}: choices", expression=True) if isinstance(cfg.choices, str) else None
    target_t = Template(cfg.target, f"{where}: target", expression=True) if isinstance(cfg.target, str) else None
    for t in (choices_t, target_t):
        if t:
            t.check(records[0])

    def choices_of(rec, i):
        if cfg.choices is None:
            return None
        c = choices_t(rec, i) if choices_t else list(cfg.choices)
        if not isinstance(c, (list, tuple)) or not c or not all(isinstance(x, (str, int, float)) for x in c):
            raise LmstackError(f"{where} (record {i}): choices must be a non-empty list of strings, got {c!r:.200}")
        return [str(x) for x in c]

    def target_of(rec, i):
        return target_t(rec, i) if target_t else cfg.target

    def targets_text(rec, i) -> list[str]:
        t = target_of(rec, i)
        ts = [str(x) for x in t] if isinstance(t, (list, tuple)) else [str(t)]
        if not ts:
            raise LmstackError(f"{where} (record {i}): empty target")
        return ts

    # ---- few-shot examples -----------------------------------------------------------------------------
    pool, same_pool = [], False
    if k > 0:
        fs = cfg.fewshot.source
        if fs is not None and set(fs) == {"split"}:
            fs = None if data or not ({"hf", "builtin"} & set(source)) else with_split(source, fs["split"])
        if fs is None:
            pool, same_pool = all_records, True
        else:
            pool = load_records(fs, f"{where}: fewshot.source", base)
        if pool:
            prompt_t.check(pool[0], "few-shot records")
    ans_t = None
    if k > 0:
        src = cfg.fewshot.rationale if use_rationale else cfg.fewshot.target
        ans_t = Template(src, f"{where}: fewshot.{'rationale' if use_rationale else 'target'}") if src else None

    def example_answer(ex, j):
        if ans_t:
            return ans_t(ex, j)
        if cfg.type == "multiple_choice":
            return choices_of(ex, j)[_gold(target_of(ex, j), choices_of(ex, j), where, j)[0]]
        return targets_text(ex, j)[0]

    index = None
    if k > 0 and select == "nearest":
        from lmstack.infer.prompting import TfIdf
        index = TfIdf([prompt_t(ex, j) for j, ex in enumerate(pool)])

    same = cfg.fewshot.same
    contexts, queries = [], []
    for i, rec in enumerate(records if cfg.type != "perplexity" else []):
        query = prompt_t(rec, i)
        examples = []
        if k > 0:
            def exclude(ex, rec=rec):
                return (same_pool and ex is rec) or (same is not None and ex.get(same) != rec.get(same))

            chosen = select_examples(pool, k, select, seed=cfg.fewshot.seed if seed is None else seed,
                                     query=query, exclude=exclude, query_index=i, index=index)
            examples = [(prompt_t(ex, j), example_answer(ex, j)) for j, ex in enumerate(chosen)]
        desc = desc_t(rec, i) if desc_t else ""
        contexts.append(build_prompt(query, examples, desc, cfg.fewshot.delimiter, cfg.target_delimiter))
        queries.append(query)

    def wrap(text):
        return [{"role": "user", "content": text}] if chat else text

    samples: list[dict] = []
    n_invalid = 0
    truncated_before = getattr(backend, "stats", {}).get("truncated_prompts", 0)
    scored_by = "loglikelihood"
    mc_generate = cfg.type == "multiple_choice" and (mc_mode == "generate" or strategy in (
        "cot", "zero_shot_cot", "self_consistency"))
    if mc_mode not in (None, "loglikelihood", "generate"):
        raise LmstackError(f"--mc-mode {mc_mode!r}: use loglikelihood or generate")

    # ---- multiple choice by log-likelihood ---------------------------------------------------------------
    if cfg.type == "multiple_choice" and not mc_generate:
        reqs, items = [], []
        for i, (rec, ctx) in enumerate(zip(records, contexts)):
            choices = choices_of(rec, i)
            gold = _gold(target_of(rec, i), choices, where, i)
            if chat:
                c, delim = backend.chat_context([{"role": "user", "content": ctx}]), ""
            else:
                c, delim = ctx, cfg.target_delimiter
            items.append((choices, gold, len(reqs)))
            reqs += [(c, delim + ch) for ch in choices]
        res = backend.loglikelihood(reqs)
        if len(res) != len(reqs):
            raise LmstackError(f"{where}: the backend scored {len(res)} of {len(reqs)} requests")
        for i, (choices, gold, s) in enumerate(items):
            lls = [r.logprob for r in res[s:s + len(choices)]]
            sc = mc_scores(lls, choices, gold)
            samples.append({"idx": i, "prompt": contexts[i], "choices": choices, "target": gold,
                            "logprobs": lls, "logprobs_norm": sc["logprobs_norm"],
                            "is_greedy": [r.is_greedy for r in res[s:s + len(choices)]],
                            "pred": choices[sc["pred"]], "pred_norm": choices[sc["pred_norm"]],
                            "acc": sc["acc"], "acc_norm": sc["acc_norm"], "mc2": sc["mc2"],
                            "correct": bool(sc["acc"])})

    # ---- generation (and multiple choice read from generated text) --------------------------------------
    elif cfg.type in ("generate", "multiple_choice"):
        scored_by = "generation"
        sp = as_sampling(cfg.generation, **(generation or {}))
        # Reasoning needs room (cot.max_new_tokens), unless the caller set the length explicitly.
        cot_len = (generation or {}).get("max_new_tokens") or max(sp.max_new_tokens, cfg.cot.max_new_tokens)
        cot_sp = as_sampling(sp, max_new_tokens=cot_len)
        ans = cfg.answer

        def extract(text):
            return extract_answer(text, ans.regex, ans.match, ans.fallback)

        per_item_choices = [choices_of(r, i) for i, r in enumerate(records)] if cfg.type == "multiple_choice" else None

        def extractor(i):
            if per_item_choices is None:
                return extract

            def pick(text, choices=per_item_choices[i]):
                j = match_choice(extract(text), choices)
                return None if j is None else choices[j]
            return pick

        extra = [{} for _ in records]
        if strategy == "self_consistency":
            n = sc_samples or cfg.self_consistency.n
            sc_sp = as_sampling(cot_sp, temperature=cfg.self_consistency.temperature, top_p=cfg.self_consistency.top_p)
            res = self_consistency(backend, contexts, n, [extractor(i) for i in range(len(records))], sc_sp,
                                   seed=rng_seed, zero_shot=zs_cot, chat=chat, answer_trigger=cfg.cot.answer_trigger)
            preds = [r["answer"] for r in res]
            outputs = [r["paths"][0]["text"] if r["paths"] else "" for r in res]
            extra = [{"votes": r["votes"], "paths": r["paths"]} for r in res]
        elif zs_cot:
            res = zero_shot_cot(backend, contexts, cot_sp, trigger=cfg.cot.trigger,
                                answer_trigger=cfg.cot.answer_trigger, chat=chat)
            outputs = [r["rationale"] for r in res]
            preds = [extractor(i)(r["answer_text"]) for i, r in enumerate(res)]
            extra = [{"answer_text": r["answer_text"]} for r in res]
        else:
            outputs = backend.generate([wrap(c) for c in contexts], cot_sp if use_rationale else sp)
            if len(outputs) != len(contexts):
                raise LmstackError(f"{where}: the backend answered {len(outputs)} of {len(contexts)} prompts")
            preds = [extractor(i)(o) for i, o in enumerate(outputs)]
        for i, (rec, pred) in enumerate(zip(records, preds)):
            invalid = pred is None
            n_invalid += invalid
            s = {"idx": i, "prompt": contexts[i], "output": outputs[i], "extracted": pred, "invalid": invalid}
            if cfg.type == "multiple_choice":
                choices = per_item_choices[i]
                gold = _gold(target_of(rec, i), choices, where, i)
                ok = pred is not None and choices.index(pred) in gold
                s.update(choices=choices, target=gold, pred=pred, acc=float(ok), correct=ok)
            else:
                refs = targets_text(rec, i)
                em = exact_match(pred, refs, ans.normalize)
                s.update(target=refs, pred=pred, exact_match=em, correct=bool(em))
            s.update(extra[i])
            samples.append(s)
        if cfg.type == "multiple_choice":
            unsupported = [m for m in cfg.metrics if m != "acc"]
            if unsupported:
                print(f"note: {cfg.task}: scored by generation, so only acc is reported (not {', '.join(unsupported)})",
                      file=log or sys.stderr)

    # ---- perplexity ------------------------------------------------------------------------------------
    else:
        text_t = Template(cfg.text or cfg.prompt, f"{where}: {'text' if cfg.text else 'prompt'}")
        text_t.check(records[0])
        texts = [text_t(r, i) for i, r in enumerate(records)]
        res = backend.loglikelihood_rolling(texts)
        for i, (t, r) in enumerate(zip(texts, res)):
            samples.append({"idx": i, "chars": len(t), "nll": -r.logprob, "tokens": r.n_tokens,
                            "bytes": len(t.encode("utf-8")), "words": max(1, len(t.split()))})
        scored_by = "loglikelihood_rolling"

    # ---- aggregate ---------------------------------------------------------------------------------------
    metrics = {}
    if cfg.type == "perplexity":
        cols = {c: [s[c] for s in samples] for c in ("nll", "tokens", "bytes", "words")}
        if sum(cols["tokens"]) == 0:
            raise LmstackError(f"{where}: no tokens were scored")
        aggs = ppl_aggs()
        for m in cfg.metrics:
            import numpy as np
            metrics[m] = float(aggs[m]({c: np.asarray(v, dtype=float)[None] for c, v in cols.items()})[0])
            metrics[f"{m}_stderr"] = bootstrap_stderr(cols, aggs[m], bootstrap_iters, rng_seed)
    else:
        names = ["acc"] if (cfg.type == "multiple_choice" and mc_generate) else cfg.metrics
        for m in names:
            vals = [s[m] for s in samples]
            metrics[m] = sum(vals) / len(vals)
            metrics[f"{m}_stderr"] = bootstrap_stderr({"value": vals}, iters=bootstrap_iters, seed=rng_seed)
    assert len(samples) == len(records)  # every item asked for is scored
    truncated = getattr(backend, "stats", {}).get("truncated_prompts", 0) - truncated_before
    if truncated:
        print(f"note: {cfg.task}: {truncated} prompts were longer than the model's context and kept only their "
              "last tokens", file=log or sys.stderr)
    return TaskResult(cfg.task, cfg.type, metrics, len(samples), n_available, strategy, k, n_invalid, scored_by,
                      samples, cfg.to_dict(), time.time() - t0)


# ---- many tasks, files ----------------------------------------------------------------------------------------

def format_table(results: list[TaskResult]) -> str:
    lines = ["| task | strategy | k | metric | value | ± stderr | n | invalid |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for m, v in r.metrics.items():
            if m.endswith("_stderr"):
                continue
            se = r.metrics.get(f"{m}_stderr", float("nan"))
            lines.append(f"| {r.task} | {r.strategy} | {r.num_fewshot} | {m} | {_fmt(v)} | {_fmt(se)} | {r.n} | "
                         f"{r.n_invalid} |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"


def _no_nan(x):
    """NaN (e.g. the stderr of one item) as null, so results.json is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_no_nan(v) for v in x]
    return x


def save_results(out_dir, results: list[TaskResult], model: dict | None = None, extra: dict | None = None) -> Path:
    """results.json (aggregate), samples_<task>.jsonl (per item), results.md (a table)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"kind": "lmstack-eval", "created": time.strftime("%Y-%m-%d %H:%M:%S"), "model": model or {},
               "results": {r.task if r.strategy == "default" else f"{r.task}:{r.strategy}": r.summary()
                           for r in results}, **(extra or {})}
    for r in results:
        name = r.task if r.strategy == "default" else f"{r.task}__{r.strategy}"
        with open(out / f"samples_{name}.jsonl", "w", encoding="utf-8") as f:
            for s in r.samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    (out / "results.json").write_text(json.dumps(_no_nan(summary), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (out / "results.md").write_text(f"# Evaluation of {(model or {}).get('name', 'a model')}\n\n"
                                    + format_table(results) + "\n", encoding="utf-8")
    return out / "results.json"


def evaluate(tasks, backend, out_dir=None, data: dict | None = None, **kw) -> list[TaskResult]:
    """Run several tasks (names, paths, wildcards, groups); `data` maps task name -> JSONL file."""
    from .config import expand_tasks

    results = []
    for name in expand_tasks(tasks):
        cfg = load_task(name)
        results.append(run_task(cfg, backend, data=(data or {}).get(cfg.task) or (data or {}).get(name), **kw))
    if out_dir:
        save_results(out_dir, results, backend.describe())
    return results
