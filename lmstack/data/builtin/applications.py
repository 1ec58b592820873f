"""The suite's material for the course's applications: tool-use and retrieval demonstrations for instruction
tuning, and closed-book questions about the held-out people and towns (facts only corpus/val.txt states, so
retrieval over the corpus is the only way to answer them).

- `tool_demonstrations`: each arithmetic record answered through the calculator (Toolformer's and OpenAI's
  pattern): the assistant calls `calculator` with the problem's expression, the result comes back as a `tool`
  message, and the assistant answers; the record carries `tools` so the chat template shows the tool.
- `rag_demonstrations`: each closed-book question with the passages a BM25 index finds for it put before it
  (the harness's `rag` prompt), answered with the reference, so the model learns to read an answer from a passage
  (RAG fine-tuning, as in Lewis et al. 2020 and RA-DIT's instruction-tuning half).
- `heldout_qa_records`: closed-book QA records (the `closed_book_qa` cluster's templates) about heldout entities.
"""

from __future__ import annotations

import random
from pathlib import Path

from lmstack.data.retrieval import Retriever, build_index, rag_prompt
from lmstack.infer.tools import CALCULATOR, calculate

from .tasks import TASKS, _Gen, render
from .templates import TEMPLATES
from .world import World

_EXPR = {"add": "{a} + {b}", "sub": "{a} - {b}", "mul": "{a} * {b}", "two_step": "{a} + {b} - {c}",
         "gcd": "gcd({a}, {b})", "lcm": "lcm({a}, {b})"}


def tool_expression(meta: dict) -> str | None:
    """The calculator expression of an arithmetic record's problem (None for other records)."""
    form = _EXPR.get((meta or {}).get("op"))
    return form.format(**meta) if form and all(k in meta for k in "ab") else None


def tool_demonstrations(records: list[dict]) -> list[dict]:
    """The arithmetic records (those with an expression) as calculator conversations: user, a call, its result,
    the answer. The result is computed by the tool itself, and must equal the record's answer."""
    out = []
    for r in records:
        expr = tool_expression(r.get("meta") or {})
        if expr is None:
            continue
        result = calculate(expr)
        assert result == str(r["meta"]["answer"]), (expr, result, r["meta"])
        user = [m for m in r["messages"] if m["role"] != "assistant"]
        call = {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": {"expression": expr}}}
        out.append({**r, "id": f"{r['id']}-tool", "tools": [CALCULATOR],
                    "messages": [*user, {"role": "assistant", "content": "", "tool_calls": [call]},
                                 {"role": "tool", "content": result, "tool_call_id": "call_0"},
                                 {"role": "assistant", "content": r["target"]}]})
    return out


def rag_demonstrations(records: list[dict], retriever: Retriever, k: int = 2) -> list[dict]:
    """The closed-book QA records with the `k` passages the index finds for each question before it."""
    qa = [r for r in records if r.get("cluster") == "closed_book_qa"]
    if not qa:
        return []
    questions = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in qa]
    found = retriever.search(questions, k)
    return [{**r, "id": f"{r['id']}-rag", "messages": [{"role": "user", "content": rag_prompt(q, f)},
                                                       {"role": "assistant", "content": r["target"]}]}
            for r, q, f in zip(qa, questions, found)]


def heldout_qa_records(world: World, n_per_task: int = 40, seed: int = 0, lang: str | None = "en") -> list[dict]:
    """Closed-book questions about heldout people and towns (instruction style, templates dealt round-robin as
    `make_task_records` deals them, open questions only; `lang` keeps one language, None both), answer types in
    `meta` for the hallucination judge. Their facts are in corpus/val.txt only: no model trained on train.txt has seen them."""
    out = []
    for task in ("qa_people", "qa_places"):
        spec = TASKS[task]
        g = _Gen(world, seed, "heldout", random.Random(f"task:{task}:heldout:{seed}"), world.pool("heldout"),
                 world.town_pool("heldout"), [p for p in world.people if p.split != "heldout"],
                 [t for t in world.towns if t.split != "heldout"])
        tmpls = [t for t in TEMPLATES[task] if (lang is None or t.lang == lang) and not t.has_options]
        random.Random(f"tmpl:{task}:heldout:{seed}").shuffle(tmpls)
        items, seen = [], set()
        for _ in range(n_per_task * 60):
            if len(items) >= n_per_task:
                break
            it = spec.make(g)
            if it is not None and it.key not in seen:
                seen.add(it.key)
                items.append(it)
        out += [render(spec, it, "instruction", tmpls[i % len(tmpls)], "heldout", f"{task}-heldout-{i:05d}-i")
                for i, it in enumerate(items)]
    return out


def corpus_index(suite, out=None) -> Path:
    """The suite's retrieval index over corpus/train.txt and corpus/val.txt (the held-out facts included), one
    paragraph per passage (the suite's documents are short paragraphs), built once into `out` (<suite>/index)."""
    suite = Path(suite)
    out = Path(out) if out else suite / "index"
    if not (out / "lmstack_index.json").exists():
        build_index([str(suite / "corpus" / "train.txt"), str(suite / "corpus" / "val.txt")], out, max_words=60)
    return out
