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

import numpy as np

from lmstack.backends import as_sampling
from lmstack.data.retrieval import rag_prompt
from lmstack.errors import LmstackError
from lmstack.infer.prompting import (
    TfIdf,
    build_prompt,
    select_examples,
    self_consistency,
    tool_loop,
    zero_shot_cot,
)
from lmstack.infer.tools import BUILTIN_TOOLS
from lmstack.text import exact_match, extract_answer, match_choice

from .config import TaskConfig, expand_tasks, load_task
from .metrics import bootstrap_stderr, mc_scores, ppl_aggs
from .sources import load_records, with_split
from .templating import Template

STRATEGIES = ("default", "zero_shot", "few_shot", "cot", "zero_shot_cot", "self_consistency", "rag", "tool")
TOOL_TOKENS = 96  # room for a tool call per round of the tool strategy


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
    # rag: the zero-shot prompt after the retrieved passages; tool: the zero-shot prompt with tools offered
    if s in ("zero_shot", "zero_shot_cot", "rag", "tool"):
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


# ---- stage 0: a task's items, prompts and fields ---------------------------------------------------------------

@dataclass
class Request:
    """One backend call for one item: `loglikelihood` (context, continuation), `loglikelihood_rolling`
    (text,) or `generate_until` (prompt, sampling); `result` is filled by `run_requests`."""
    type: str
    args: tuple
    item: int
    result: object = None


@dataclass
class TaskRun:
    """One task between the stages: its records, prompts, resolved strategy and requests."""
    cfg: TaskConfig
    where: str
    records: list
    n_available: int
    contexts: list
    strategy: str
    k: int
    use_rationale: bool
    zs_cot: bool
    chat: bool
    mc_generate: bool
    seed: int
    templates: dict
    sc_samples: int | None = None
    generation: dict | None = None
    log: object = None
    requests: list = field(default_factory=list)
    outputs: list | None = None  # multi-step strategies (self-consistency, zero-shot CoT): {output, pred, extra}
    seconds: float = 0.0
    tools: list = field(default_factory=list)  # the tool strategy's built-in tools (names)
    max_tool_calls: int = 2


def choices_of(run: TaskRun, rec, i):
    cfg, t = run.cfg, run.templates["choices"]
    if cfg.choices is None:
        return None
    c = t(rec, i) if t else list(cfg.choices)
    if not isinstance(c, (list, tuple)) or not c or not all(isinstance(x, (str, int, float)) for x in c):
        raise LmstackError(f"{run.where} (record {i}): choices must be a non-empty list of strings, got {c!r:.200}")
    return [str(x) for x in c]


def target_of(run: TaskRun, rec, i):
    t = run.templates["target"]
    return t(rec, i) if t else run.cfg.target


def targets_text(run: TaskRun, rec, i) -> list[str]:
    t = target_of(run, rec, i)
    ts = [str(x) for x in t] if isinstance(t, (list, tuple)) else [str(t)]
    if not ts:
        raise LmstackError(f"{run.where} (record {i}): empty target")
    return ts


def _templates(cfg: TaskConfig, where: str, first: dict) -> dict:
    prompt_t = Template(cfg.prompt, f"{where}: prompt")
    if cfg.type != "perplexity":  # perplexity scores `text` alone
        prompt_t.check(first)
    desc_t = Template(cfg.description, f"{where}: description") if cfg.description else None
    if desc_t:
        desc_t.check(first)
    choices_t = Template(cfg.choices, f"{where}: choices", expression=True) if isinstance(cfg.choices, str) else None
    target_t = Template(cfg.target, f"{where}: target", expression=True) if isinstance(cfg.target, str) else None
    for t in (choices_t, target_t):
        if t:
            t.check(first)
    return {"prompt": prompt_t, "description": desc_t, "choices": choices_t, "target": target_t}


def _fewshot_pool(cfg: TaskConfig, source: dict, all_records: list, data, where: str, base) -> tuple[list, bool]:
    """The records few-shot examples are drawn from, and whether that is the evaluated set itself."""
    fs = cfg.fewshot.source
    if fs is not None and set(fs) == {"split"}:
        fs = None if data or not ({"hf", "builtin"} & set(source)) else with_split(source, fs["split"])
    if fs is None:
        return all_records, True
    return load_records(fs, f"{where}: fewshot.source", base), False


def _contexts(run: TaskRun, pool: list, same_pool: bool, select: str) -> list[str]:
    """description + k solved examples + the query, per item (lm-evaluation-harness's layout)."""
    cfg, prompt_t, desc_t = run.cfg, run.templates["prompt"], run.templates["description"]
    k = run.k
    ans_t = None
    if k > 0:
        if pool:
            prompt_t.check(pool[0], "few-shot records")
        src = cfg.fewshot.rationale if run.use_rationale else cfg.fewshot.target
        ans_t = Template(src, f"{run.where}: fewshot.{'rationale' if run.use_rationale else 'target'}") if src else None

    def example_answer(ex, j):
        if ans_t:
            return ans_t(ex, j)
        if cfg.type == "multiple_choice":
            return choices_of(run, ex, j)[_gold(target_of(run, ex, j), choices_of(run, ex, j), run.where, j)[0]]
        return targets_text(run, ex, j)[0]

    index = TfIdf([prompt_t(ex, j) for j, ex in enumerate(pool)]) if k > 0 and select == "nearest" else None
    same = cfg.fewshot.same
    contexts = []
    for i, rec in enumerate(run.records if cfg.type != "perplexity" else []):
        query = prompt_t(rec, i)
        examples = []
        if k > 0:
            def exclude(ex, rec=rec):
                return (same_pool and ex is rec) or (same is not None and ex.get(same) != rec.get(same))

            chosen = select_examples(pool, k, select, seed=run.seed, query=query, exclude=exclude, query_index=i,
                                     index=index)
            examples = [(prompt_t(ex, j), example_answer(ex, j)) for j, ex in enumerate(chosen)]
        desc = desc_t(rec, i) if desc_t else ""
        contexts.append(build_prompt(query, examples, desc, cfg.fewshot.delimiter, cfg.target_delimiter))
    return contexts


def prepare_task(cfg: TaskConfig | str, strategy: str | None = None, num_fewshot: int | None = None,
                 fewshot_select: str | None = None, limit: int | None = None, chat: bool | None = None,
                 mc_mode: str | None = None, sc_samples: int | None = None, generation: dict | None = None,
                 seed: int | None = None, data: str | None = None, log=None, retriever=None,
                 rag_k: int = 3, tools: list[str] | None = None, max_tool_calls: int = 2) -> TaskRun:
    """Load a task's records and lay out each item's prompt (arguments as `run_task`'s; `retriever` and `rag_k`:
    the `rag` strategy's index (lmstack.data.retrieval.Retriever) and passages per item; `tools` and
    `max_tool_calls`: the `tool` strategy's built-in tools (default: the calculator) and rounds of calls)."""
    t0 = time.time()
    if isinstance(cfg, str):
        cfg = load_task(cfg)
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
    strategy = strategy or "default"
    k, use_rationale, zs_cot = _resolve_strategy(cfg, strategy, num_fewshot, where)
    templates = _templates(cfg, where, records[0])
    mc_generate = cfg.type == "multiple_choice" and (mc_mode == "generate" or strategy in (
        "cot", "zero_shot_cot", "self_consistency"))
    run = TaskRun(cfg, where, records, n_available, [], strategy, k, use_rationale, zs_cot,
                  cfg.chat if chat is None else chat, mc_generate, cfg.fewshot.seed if seed is None else seed,
                  templates, sc_samples, generation, log)
    pool, same_pool = _fewshot_pool(cfg, source, all_records, data, where, base) if k > 0 else ([], False)
    run.contexts = _contexts(run, pool, same_pool, fewshot_select or cfg.fewshot.select)
    if strategy == "rag":  # retrieval-augmented: each prompt is its own query; the passages go before it
        if retriever is None:
            raise LmstackError(f"{where}: the rag strategy needs an index (--index DIR, built by `lmstack eval index`)")
        run.contexts = [rag_prompt(c, found) for c, found in zip(run.contexts, retriever.search(run.contexts, rag_k))]
    if strategy == "tool":  # the model may call tools; the harness runs them and sends the results back
        if chat is False or cfg.type == "perplexity":
            raise LmstackError(f"{where}: the tool strategy needs chat prompts (tool results come back as messages)")
        unknown = [t for t in tools or () if t not in BUILTIN_TOOLS]
        if unknown:
            raise LmstackError(f"{where}: unknown tool(s) {', '.join(unknown)} (built in: {', '.join(BUILTIN_TOOLS)})")
        run.chat, run.tools, run.max_tool_calls = True, list(tools or ["calculator"]), max_tool_calls
        run.mc_generate = cfg.type == "multiple_choice"
    if mc_mode not in (None, "loglikelihood", "generate"):
        raise LmstackError(f"--mc-mode {mc_mode!r}: use loglikelihood or generate")
    run.seconds = time.time() - t0
    return run


# ---- stage 1: requests -----------------------------------------------------------------------------------------

def scored_by(run: TaskRun) -> str:
    if run.cfg.type == "perplexity":
        return "loglikelihood_rolling"
    return "loglikelihood" if run.cfg.type == "multiple_choice" and not run.mc_generate else "generation"


def _samplings(run: TaskRun):
    """(plain answers, reasoning) sampling settings: reasoning needs room (cot.max_new_tokens), unless the
    caller set the length explicitly."""
    sp = as_sampling(run.cfg.generation, **(run.generation or {}))
    cot_len = (run.generation or {}).get("max_new_tokens") or max(sp.max_new_tokens, run.cfg.cot.max_new_tokens)
    return sp, as_sampling(sp, max_new_tokens=cot_len)


def build_requests(run: TaskRun, backend) -> list[Request]:
    """The task's typed requests, one or more per item. Multi-step strategies (self-consistency,
    zero-shot CoT) issue their own calls in `run_strategies` and build none here."""
    cfg, reqs = run.cfg, []
    by = scored_by(run)
    if by == "loglikelihood":
        for i, (rec, ctx) in enumerate(zip(run.records, run.contexts)):
            if run.chat:
                c, delim = backend.chat_context([{"role": "user", "content": ctx}]), ""
            else:
                c, delim = ctx, cfg.target_delimiter
            choices = choices_of(run, rec, i)
            _gold(target_of(run, rec, i), choices, run.where, i)  # a bad target fails before any scoring
            reqs += [Request("loglikelihood", (c, delim + ch), i) for ch in choices]
    elif by == "loglikelihood_rolling":
        text_t = Template(cfg.text or cfg.prompt, f"{run.where}: {'text' if cfg.text else 'prompt'}")
        text_t.check(run.records[0])
        reqs = [Request("loglikelihood_rolling", (text_t(r, i),), i) for i, r in enumerate(run.records)]
    elif run.strategy not in ("self_consistency", "tool") and not run.zs_cot:
        sp, cot_sp = _samplings(run)
        sampling = cot_sp if run.use_rationale else sp
        reqs = [Request("generate_until", ([{"role": "user", "content": c}] if run.chat else c, sampling), i)
                for i, c in enumerate(run.contexts)]
    run.requests = reqs
    return reqs


# ---- stage 2: run them, batched by type across tasks -------------------------------------------------------------

def run_requests(requests: list[Request], backend) -> None:
    """One backend call per request type (and, for generation, per sampling setting) over all requests
    given, whichever tasks they come from; fills each request's `result`."""
    groups: list[tuple[tuple, list[Request]]] = []  # sampling settings are compared, not hashed
    for r in requests:
        key = (r.type, r.args[1]) if r.type == "generate_until" else (r.type,)
        for k, group in groups:
            if k == key:
                group.append(r)
                break
        else:
            groups.append((key, [r]))
    for key, group in groups:
        if key[0] == "loglikelihood":
            res = backend.loglikelihood([r.args for r in group])
        elif key[0] == "loglikelihood_rolling":
            res = backend.loglikelihood_rolling([r.args[0] for r in group])
        else:
            res = backend.generate([r.args[0] for r in group], key[1])
        if len(res) != len(group):
            verb = "answered" if key[0] == "generate_until" else "scored"
            raise LmstackError(f"the backend {verb} {len(res)} of {len(group)} {key[0]} requests")
        for r, x in zip(group, res):
            r.result = x


def _extractor(run: TaskRun, choices):
    ans = run.cfg.answer

    def extract(text):
        return extract_answer(text, ans.regex, ans.match, ans.fallback)

    if choices is None:
        return extract

    def pick(text):
        j = match_choice(extract(text), choices)
        return None if j is None else choices[j]
    return pick


def run_strategies(run: TaskRun, backend) -> None:
    """Self-consistency, zero-shot CoT and tool use: several dependent calls per item, through infer.prompting."""
    if scored_by(run) != "generation" or not (run.strategy in ("self_consistency", "tool") or run.zs_cot):
        return
    cfg = run.cfg
    mc = cfg.type == "multiple_choice"
    extractors = [_extractor(run, choices_of(run, r, i) if mc else None) for i, r in enumerate(run.records)]
    _, cot_sp = _samplings(run)
    if run.strategy == "tool":
        tools = [BUILTIN_TOOLS[t][0] for t in run.tools]

        def call(name, args):
            return BUILTIN_TOOLS[name][1](args) if name in run.tools else f"error: no tool named {name}"

        # A call is longer than a short answer (its JSON is ~60 tokens in a small model's vocabulary), so each
        # round may write TOOL_TOKENS unless the caller set a length; the final answer is cut at the task's stops.
        sp = as_sampling(run.cfg.generation, **(run.generation or {}))
        if not (run.generation or {}).get("max_new_tokens"):
            sp = as_sampling(sp, max_new_tokens=max(sp.max_new_tokens, TOOL_TOKENS))
        res = tool_loop(backend, [[{"role": "user", "content": c}] for c in run.contexts], tools, call, sp,
                        run.max_tool_calls)
        run.outputs = [{"output": r["answer"], "pred": extractors[i](r["answer"]),
                        "extra": {"calls": r["calls"], "called": bool(r["calls"])}} for i, r in enumerate(res)]
        return
    if run.strategy == "self_consistency":
        n = run.sc_samples or cfg.self_consistency.n
        sc_sp = as_sampling(cot_sp, temperature=cfg.self_consistency.temperature, top_p=cfg.self_consistency.top_p)
        res = self_consistency(backend, run.contexts, n, extractors, sc_sp, seed=run.seed, zero_shot=run.zs_cot,
                               chat=run.chat, answer_trigger=cfg.cot.answer_trigger)
        run.outputs = [{"output": r["paths"][0]["text"] if r["paths"] else "", "pred": r["answer"],
                        "extra": {"votes": r["votes"], "paths": r["paths"]}} for r in res]
    else:
        res = zero_shot_cot(backend, run.contexts, cot_sp, trigger=cfg.cot.trigger,
                            answer_trigger=cfg.cot.answer_trigger, chat=run.chat)
        run.outputs = [{"output": r["rationale"], "pred": extractors[i](r["answer_text"]),
                        "extra": {"answer_text": r["answer_text"]}} for i, r in enumerate(res)]


# ---- stage 3: per-item results -----------------------------------------------------------------------------------

def _mc_loglikelihood_sample(run: TaskRun, i: int, rec, reqs: list[Request]) -> dict:
    choices = choices_of(run, rec, i)
    gold = _gold(target_of(run, rec, i), choices, run.where, i)
    lls = [r.result.logprob for r in reqs]
    sc = mc_scores(lls, choices, gold)
    return {"idx": i, "prompt": run.contexts[i], "choices": choices, "target": gold,
            "logprobs": lls, "logprobs_norm": sc["logprobs_norm"], "is_greedy": [r.result.is_greedy for r in reqs],
            "pred": choices[sc["pred"]], "pred_norm": choices[sc["pred_norm"]],
            "acc": sc["acc"], "acc_norm": sc["acc_norm"], "mc2": sc["mc2"], "correct": bool(sc["acc"])}


def _generation_sample(run: TaskRun, i: int, rec, output: str, pred, extra: dict) -> dict:
    s = {"idx": i, "prompt": run.contexts[i], "output": output, "extracted": pred, "invalid": pred is None}
    if run.cfg.type == "multiple_choice":
        choices = choices_of(run, rec, i)
        gold = _gold(target_of(run, rec, i), choices, run.where, i)
        ok = pred is not None and choices.index(pred) in gold
        s.update(choices=choices, target=gold, pred=pred, acc=float(ok), correct=ok)
    else:
        refs = targets_text(run, rec, i)
        em = exact_match(pred, refs, run.cfg.answer.normalize)
        s.update(target=refs, pred=pred, exact_match=em, correct=bool(em))
    s.update(extra)
    return s


def _perplexity_sample(i: int, text: str, res) -> dict:
    return {"idx": i, "chars": len(text), "nll": -res.logprob, "tokens": res.n_tokens,
            "bytes": len(text.encode("utf-8")), "words": max(1, len(text.split()))}


def process_results(run: TaskRun) -> list[dict]:
    """One sample per item from the filled requests (or the strategies' outputs)."""
    by = scored_by(run)
    per_item: list[list[Request]] = [[] for _ in run.records]
    for r in run.requests:
        per_item[r.item].append(r)
    if by == "loglikelihood":
        return [_mc_loglikelihood_sample(run, i, rec, per_item[i]) for i, rec in enumerate(run.records)]
    if by == "loglikelihood_rolling":
        return [_perplexity_sample(i, per_item[i][0].args[0], per_item[i][0].result) for i in range(len(run.records))]
    mc = run.cfg.type == "multiple_choice"
    if run.outputs is None:
        run.outputs = [{"output": per_item[i][0].result,
                        "pred": _extractor(run, choices_of(run, rec, i) if mc else None)(per_item[i][0].result),
                        "extra": {}} for i, rec in enumerate(run.records)]
    samples = [_generation_sample(run, i, rec, o["output"], o["pred"], o["extra"])
               for i, (rec, o) in enumerate(zip(run.records, run.outputs))]
    unsupported = [m for m in run.cfg.metrics if m != "acc"] if mc else []
    if unsupported:
        print(f"note: {run.cfg.task}: scored by generation, so only acc is reported (not {', '.join(unsupported)})",
              file=run.log or sys.stderr)
    return samples


# ---- stage 4: aggregate ------------------------------------------------------------------------------------------

def aggregate(run: TaskRun, samples: list[dict], bootstrap_iters: int = 1000) -> dict:
    """Each metric over the items and its bootstrap standard error (`<metric>_stderr`)."""
    metrics = {}
    if run.cfg.type == "perplexity":
        cols = {c: [s[c] for s in samples] for c in ("nll", "tokens", "bytes", "words")}
        if sum(cols["tokens"]) == 0:
            raise LmstackError(f"{run.where}: no tokens were scored")
        aggs = ppl_aggs()
        for m in run.cfg.metrics:
            metrics[m] = float(aggs[m]({c: np.asarray(v, dtype=float)[None] for c, v in cols.items()})[0])
            metrics[f"{m}_stderr"] = bootstrap_stderr(cols, aggs[m], bootstrap_iters, run.seed)
    else:
        for m in (["acc"] if run.mc_generate else run.cfg.metrics):
            vals = [s[m] for s in samples]
            metrics[m] = sum(vals) / len(vals)
            metrics[f"{m}_stderr"] = bootstrap_stderr({"value": vals}, iters=bootstrap_iters, seed=run.seed)
    return metrics


def finish_task(run: TaskRun, bootstrap_iters: int = 1000) -> TaskResult:
    t0 = time.time()
    samples = process_results(run)
    assert len(samples) == len(run.records)  # every item asked for is scored
    metrics = aggregate(run, samples, bootstrap_iters)
    return TaskResult(run.cfg.task, run.cfg.type, metrics, len(samples), run.n_available, run.strategy, run.k,
                      sum(bool(s.get("invalid")) for s in samples), scored_by(run), samples, run.cfg.to_dict(),
                      run.seconds + time.time() - t0)


def run_tasks(runs: list[TaskRun], backend, bootstrap_iters: int = 1000, log=None) -> list[TaskResult]:
    """The stages over prepared tasks: build every task's requests, run them batched by type, then
    process and aggregate each task."""
    truncated_before = getattr(backend, "stats", {}).get("truncated_prompts", 0)
    t0 = time.time()
    requests = [r for run in runs for r in build_requests(run, backend)]
    run_requests(requests, backend)
    shared = (time.time() - t0) / max(1, len(runs))  # batched calls: each task gets an equal share of their time
    for run in runs:
        t1 = time.time()
        run_strategies(run, backend)
        run.seconds += shared + time.time() - t1
    results = [finish_task(run, bootstrap_iters) for run in runs]
    truncated = getattr(backend, "stats", {}).get("truncated_prompts", 0) - truncated_before
    if truncated:
        names = ", ".join(run.cfg.task for run in runs)
        print(f"note: {names}: {truncated} prompts were longer than the model's context and kept only their "
              "last tokens", file=log or sys.stderr)
    return results


def run_task(cfg: TaskConfig | str, backend, strategy: str | None = None, num_fewshot: int | None = None,
             fewshot_select: str | None = None, limit: int | None = None, chat: bool | None = None,
             mc_mode: str | None = None, sc_samples: int | None = None, generation: dict | None = None,
             seed: int | None = None, bootstrap_iters: int = 1000, data: str | None = None, log=None,
             retriever=None, rag_k: int = 3, tools: list[str] | None = None,
             max_tool_calls: int = 2) -> TaskResult:
    """Evaluate one task. `data` replaces the task's source with a JSONL/JSON file (and few-shot
    examples given as a split of the original source are then drawn from that file, minus the item).
    `seed` (default: the config's fewshot.seed) drives random few-shot selection, sampled paths and
    the bootstrap."""
    run = prepare_task(cfg, strategy, num_fewshot, fewshot_select, limit, chat, mc_mode, sc_samples, generation,
                       seed, data, log, retriever, rag_k, tools, max_tool_calls)
    return run_tasks([run], backend, bootstrap_iters, log)[0]


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


def evaluate(tasks, backend, out_dir=None, data: dict | None = None, bootstrap_iters: int = 1000, log=None,
             **kw) -> list[TaskResult]:
    """Run several tasks (names, paths, wildcards, groups); `data` maps task name -> JSONL file; the other
    keywords are `run_task`'s. All tasks' requests go to the backend together, batched by type."""
    runs = []
    for name in expand_tasks(tasks):
        cfg = load_task(name)
        runs.append(prepare_task(cfg, data=(data or {}).get(cfg.task) or (data or {}).get(name), log=log, **kw))
    results = run_tasks(runs, backend, bootstrap_iters, log)
    if out_dir:
        save_results(out_dir, results, backend.describe())
    return results
