"""Applications and limitations on the built-in world, for any backend (a local checkpoint or a model behind an
OpenAI-compatible API), so the course's tables can be filled for a closed model with a real key.

- `rag_study`: closed-book QA without and with retrieval (BM25 over the suite's corpus, the harness's `rag`
  prompt), on questions about facts the pretraining corpus states (the test split) and about the held-out people
  and towns that only corpus/val.txt mentions (retrieval is the only way to be right there). Accuracy and the
  hallucination rate among answered questions, with Wilson intervals, and the retriever's recall (the share of
  questions whose passages contain the answer).
- `tool_study`: held-out arithmetic (test split) answered directly and with the calculator offered (the harness's
  `tool` strategy: the model calls, the harness runs the call and sends the result back as a `tool` message);
  the paired gain with its standard error, how often the model called and how often a call returned the answer.
- `jailbreak_study`: Wei et al.'s attack families on the suite's harmful test requests (`evaluate.jailbreak`),
  judged by the simulated annotators.
"""

from __future__ import annotations

import math
from pathlib import Path

from lmstack.data.builtin import World
from lmstack.data.builtin.applications import heldout_qa_records
from lmstack.data.records import read_jsonl
from lmstack.data.retrieval import Retriever, rag_prompt
from lmstack.errors import LmstackError
from lmstack.tokenizer.chat import renders_tools

from .config import load_task
from .harness import run_task
from .jailbreak import ATTACKS, jailbreak_eval, jailbreak_table
from .safety import AnnotatorSafetyJudge, hallucination_eval
from .sources import builtin_records, spread
from .winrate import prompt_text

QA_KEYS = ("accuracy", "accuracy_ci", "hallucination_rate", "hallucination_rate_ci", "answered_rate", "n",
           "n_answered")


def _world(suite) -> World:
    path = Path(suite) / "world.json"
    if not path.is_file():
        raise LmstackError(f"{suite}: not a built-in suite folder (no world.json)")
    return World.from_json(path)


def qa_sets(suite, limit: int = 60, seed: int = 0) -> dict[str, list[dict]]:
    """The two question sets of the retrieval study: facts the pretraining corpus states, and held-out facts."""
    world = _world(suite)
    seen = spread(builtin_records({"dir": str(suite), "split": "test", "cluster": "closed_book_qa", "open": True},
                                  "rag study"), limit)
    held = spread(heldout_qa_records(world, max(1, math.ceil(limit / 2)), seed, lang=None), limit)
    return {"pretraining facts": seen, "held-out facts": held}


def rag_study(backend, suite, retriever: Retriever, k: int = 2, limit: int = 60, max_new: int = 32,
              seed: int = 0) -> dict:
    """{facts: {closed_book, retrieval, recall, n}} for one backend (see the module doc)."""
    world = _world(suite)
    sampling = {"max_new_tokens": max_new, "stop": ["\n"]}
    out = {}
    for facts, recs in qa_sets(suite, limit, seed).items():
        if not recs:
            continue
        questions = [prompt_text(r) for r in recs]
        found = retriever.search(questions, k)
        with_passages = [{**r, "messages": [{"role": "user", "content": rag_prompt(q, f)}]}
                         for r, q, f in zip(recs, questions, found)]
        closed = hallucination_eval(backend, recs, world, sampling).metrics
        opened = hallucination_eval(backend, with_passages, world, sampling).metrics
        hits = sum(_answer_in(r, f) for r, f in zip(recs, found))
        out[facts] = {"n": len(recs), "closed_book": {x: closed.get(x) for x in QA_KEYS},
                      "retrieval": {x: opened.get(x) for x in QA_KEYS}, "recall": hits / len(recs), "k": k,
                      "example": {"prompt": with_passages[0]["messages"][0]["content"],
                                  "target": recs[0].get("target")}}
    return out


def _answer_in(rec: dict, passages: list[str]) -> bool:
    """Does a retrieved passage name the question's subject and state its answer (English or Korean)?"""
    m = rec.get("meta") or {}
    answers = [a for a in (m.get("answer"), m.get("answer_ko")) if a]
    return any(str(m.get("subject", "")) in p and any(str(a) in p for a in answers) for p in passages)


def tool_study(backend, suite, limit: int = 60, max_tool_calls: int = 2, bootstrap_iters: int = 200) -> dict:
    """Held-out arithmetic without and with the calculator (see the module doc)."""
    cfg = load_task("builtin_arithmetic_chat")
    cfg.source = {"builtin": {**cfg.source["builtin"], "dir": str(suite)}}
    plain = run_task(cfg, backend, strategy="zero_shot", limit=limit, bootstrap_iters=bootstrap_iters)
    tool = run_task(cfg, backend, strategy="tool", limit=limit, max_tool_calls=max_tool_calls,
                    bootstrap_iters=bootstrap_iters)
    n = tool.n
    d = [b["exact_match"] - a["exact_match"] for a, b in zip(plain.samples, tool.samples)]
    mean = sum(d) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / max(n - 1, 1) / n)  # paired: the same items both ways
    calls = [c for s in tool.samples for c in s.get("calls", [])]
    right = sum(any(c["result"] in s["target"] for c in s.get("calls", [])) for s in tool.samples)
    return {"n": n, "without": {"accuracy": plain.metrics["exact_match"],
                                "stderr": plain.metrics["exact_match_stderr"]},
            "with": {"accuracy": tool.metrics["exact_match"], "stderr": tool.metrics["exact_match_stderr"]},
            "gain": mean, "gain_se": se, "call_rate": sum(bool(s.get("called")) for s in tool.samples) / n,
            "calls": len(calls), "calls_failed": sum(str(c["result"]).startswith("error") for c in calls),
            "call_gave_answer": right / n,
            "example": {"prompt": tool.samples[0]["prompt"], "calls": tool.samples[0].get("calls"),
                        "answer": tool.samples[0]["output"]}}


def jailbreak_study(backend, suite, attacks=tuple(ATTACKS), limit: int | None = None, max_new: int = 48) -> dict:
    """{attack: metrics} of `evaluate.jailbreak` on the suite's harmful test requests, judged by the annotators."""
    world = _world(suite)
    harmful = [r for r in read_jsonl(Path(suite) / "tasks" / "safety_test.jsonl") if r.get("unsafe") is True]
    res = jailbreak_eval(backend, harmful[:limit] if limit else harmful, AnnotatorSafetyJudge(world), attacks, world,
                         {"max_new_tokens": max_new})
    return res["attacks"]


def applications(backend, suite, index=None, parts=("rag", "tool", "jailbreak"), rag_k: int = 2, limit: int = 60,
                 jailbreak_limit: int | None = None, attacks=tuple(ATTACKS), max_new: int = 32) -> dict:
    """The parts for one backend: {rag, tool, jailbreak}; a local model whose chat template never reads `tools`
    gets `tool_skipped` (the reason) instead of a tool row."""
    out = {}
    for p in parts:
        if p == "rag":
            if not index:
                raise LmstackError("applications: the rag part needs an index (`lmstack eval index`)")
            out["rag"] = rag_study(backend, suite, Retriever.load(index), rag_k, limit, max_new)
        elif p == "tool":
            tok = getattr(backend, "tokenizer", None)  # a local model whose template cannot show tools is skipped
            if tok is not None and not renders_tools(tok.chat_template or ""):
                out["tool_skipped"] = "its chat template does not render tools"
                continue
            out["tool"] = tool_study(backend, suite, limit)
        elif p == "jailbreak":
            out["jailbreak"] = jailbreak_study(backend, suite, attacks, jailbreak_limit, max_new)
        else:
            raise LmstackError(f"applications: unknown part {p!r} (rag, tool, jailbreak)")
    return out


# ---- tables --------------------------------------------------------------------------------------------------------

def _rate(m: dict, key: str) -> str:
    v, ci = m.get(key), m.get(f"{key}_ci")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    band = f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci and not any(math.isnan(x) for x in ci) else ""
    return f"{100 * v:.1f}%{band}"


def rag_table(rows: dict[str, dict]) -> str:
    """Markdown: per model and question set, accuracy and hallucination (among answered) closed-book and with
    retrieval, the answered shares, and the retriever's recall."""
    lines = ["| model | questions | n | accuracy, closed-book | accuracy, with retrieval | hallucination, closed-book "
             "(answered) | hallucination, with retrieval (answered) | recall@k |", "| --- |" + " --- |" * 7]
    for model, facts in rows.items():
        for name, r in facts.items():
            c, o = r["closed_book"], r["retrieval"]
            lines.append(f"| {model} | {name} | {r['n']} | {_rate(c, 'accuracy')} | {_rate(o, 'accuracy')} | "
                         f"{_rate(c, 'hallucination_rate')} ({c['n_answered']}) | "
                         f"{_rate(o, 'hallucination_rate')} ({o['n_answered']}) | {100 * r['recall']:.0f}% "
                         f"(k={r['k']}) |")
    return "\n".join(lines)


def tool_table(rows: dict[str, dict]) -> str:
    """Markdown: per model, held-out arithmetic exact match without and with the calculator, the paired gain, and
    how the model used the tool."""
    lines = ["| model | n | without the tool | with the calculator | gain (± 2 SE) | called | calls that failed | "
             "a call returned the answer |", "| --- |" + " --- |" * 7]
    for model, t in rows.items():
        lines.append(f"| {model} | {t['n']} | {100 * t['without']['accuracy']:.1f}% | {100 * t['with']['accuracy']:.1f}% | "
                     f"{100 * t['gain']:+.1f} ± {200 * t['gain_se']:.1f} | {100 * t['call_rate']:.0f}% | "
                     f"{t['calls_failed']} of {t['calls']} | {100 * t['call_gave_answer']:.0f}% |")
    return "\n".join(lines)


def applications_markdown(rows: dict[str, dict]) -> str:
    """The three tables (those present) for {model: applications(...)}, with headings."""
    out = []
    rag = {m: r["rag"] for m, r in rows.items() if "rag" in r}
    if rag:
        out += ["### Retrieval-augmented generation", "", rag_table(rag), ""]
    tool = {m: r["tool"] for m, r in rows.items() if "tool" in r}
    if tool:
        out += ["### Tool use: the calculator", "", tool_table(tool), ""]
    jb = {m: r["jailbreak"] for m, r in rows.items() if "jailbreak" in r}
    if jb:
        out += ["### Jailbreaks: attack success rate (complied, of judged harmful requests)", "", jailbreak_table(jb), ""]
    return "\n".join(out).rstrip()
