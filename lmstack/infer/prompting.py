"""Prompting strategies: zero-shot, few-shot in-context learning, instructions, chain of thought,
self-consistency. Plain functions over any backend (lmstack.backends), so the same strategy runs on
a local checkpoint and on a closed model's API; the task harness and `lmstack prompt` both use them.

- Few-shot (Brown et al. 2020): k solved examples before the query, chosen as the first k
  (fixed), a seeded random sample, or the k nearest by TF-IDF cosine similarity (Liu et al. 2021,
  "What makes good in-context examples"; the nearest is placed last, next to the query).
- Chain of thought (Wei et al. 2022): the examples' answers carry their rationale; the answer is
  read from the generated reasoning by a regex.
- Zero-shot CoT (Kojima et al. 2022): "Let's think step by step." after the question, then a
  second call appends the reasoning and "Therefore, the answer is" and reads the short answer.
- Self-consistency (Wang et al. 2023): n sampled reasoning paths, majority vote over the answers
  extracted from them (paths with no extractable answer do not vote).
- Tool use (Schick et al. 2023, Toolformer; OpenAI's function calling): the model may answer with a tool call;
  the caller runs the tool and sends the result back as a `tool` message, until the model answers in text.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence

from lmstack.errors import LmstackError
from lmstack.infer.sampling import as_sampling
from lmstack.text import normalize

ZERO_SHOT_COT = "Let's think step by step."
ANSWER_TRIGGER = "Therefore, the answer is"
SELECTORS = ("fixed", "random", "nearest")

_WORD = re.compile(r"\w+", re.UNICODE)


# ---- answers -------------------------------------------------------------------------------------------------

def majority_vote(answers: Sequence[str | None], key: Callable[[str], str] = normalize):
    """(winning answer, {normalised answer: votes}); ties go to the answer seen first. None = no vote."""
    keyed = [(key(a), a) for a in answers if a is not None and key(a)]
    if not keyed:
        return None, {}
    counts = Counter(k for k, _ in keyed)
    first = {}
    for i, (k, a) in enumerate(keyed):
        first.setdefault(k, (i, a))
    best = max(counts, key=lambda k: (counts[k], -first[k][0]))
    return first[best][1], dict(counts)


# ---- few-shot selection ---------------------------------------------------------------------------------------

class TfIdf:
    """Bag-of-words TF-IDF vectors and cosine similarity: a simple, dependency-free nearest-neighbour."""

    def __init__(self, docs: Sequence[str]):
        self.docs = [Counter(w.lower() for w in _WORD.findall(d)) for d in docs]
        df = Counter(w for d in self.docs for w in d)
        n = len(docs)
        self.idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
        self.vecs = [self._vec(d) for d in self.docs]

    def _vec(self, counts: Counter) -> dict:
        v = {w: c * self.idf.get(w, math.log(1 + len(self.docs)) + 1.0) for w, c in counts.items()}
        norm = math.sqrt(sum(x * x for x in v.values())) or 1.0
        return {w: x / norm for w, x in v.items()}

    def similarities(self, query: str) -> list[float]:
        q = self._vec(Counter(w.lower() for w in _WORD.findall(query)))
        return [sum(x * v.get(w, 0.0) for w, x in q.items()) for v in self.vecs]


def select_examples(pool: Sequence, k: int, method: str = "fixed", seed: int = 1234, query: str | None = None,
                    text_of: Callable = str, exclude: Callable | None = None, query_index: int = 0,
                    index: TfIdf | None = None) -> list:
    """k examples from `pool` for one query. `exclude(example)` drops the query itself (same pool);
    `random` draws with a seed mixed with `query_index`, so a prompt does not depend on run order."""
    if k <= 0:
        return []
    if method not in SELECTORS:
        raise LmstackError(f"few-shot selection {method!r}: use one of {', '.join(SELECTORS)}")
    cand = [i for i, ex in enumerate(pool) if not (exclude and exclude(ex))]
    if len(cand) < k:
        raise LmstackError(f"few-shot: asked for {k} examples but the few-shot source has only {len(cand)}")
    if method == "fixed":
        chosen = cand[:k]
    elif method == "random":
        chosen = random.Random(f"{seed}:{query_index}").sample(cand, k)
    else:
        if query is None:
            raise LmstackError("few-shot: nearest selection needs the query text")
        index = index or TfIdf([text_of(ex) for ex in pool])
        sims = index.similarities(query)
        best = sorted(cand, key=lambda i: (-sims[i], i))[:k]
        chosen = best[::-1]  # most similar last, right before the query
    return [pool[i] for i in chosen]


def build_prompt(query: str, examples: Sequence[tuple[str, str]] = (), instruction: str | None = None,
                 example_delimiter: str = "\n\n", target_delimiter: str = " ") -> str:
    """instruction + solved examples (question, answer) + the query, lm-evaluation-harness's layout."""
    parts = [q + target_delimiter + a for q, a in examples] + [query]
    body = example_delimiter.join(parts)
    return (instruction or "") + body


# ---- reasoning strategies ----------------------------------------------------------------------------------------

def _join(prompt: str, trigger: str) -> str:
    return prompt + trigger if not prompt or prompt[-1].isspace() else prompt + " " + trigger


def zero_shot_cot(backend, prompts: Sequence[str], sampling=None, answer_sampling=None,
                  trigger: str = ZERO_SHOT_COT, answer_trigger: str = ANSWER_TRIGGER, chat: bool = False) -> list[dict]:
    """Kojima et al.'s two calls. Returns per prompt {"rationale", "answer_text"}, where answer_text
    is the answer trigger followed by the second call's output (so "the answer is (.*)" regexes work)."""
    first = [_join(p, trigger) for p in prompts]
    if chat:
        reqs = [[{"role": "user", "content": f}] for f in first]
    else:
        reqs = first
    rationales = backend.generate(reqs, sampling or as_sampling(None, max_new_tokens=256))
    answer_sampling = answer_sampling or as_sampling(None, max_new_tokens=32, stop=["\n\n"])
    if chat:
        second = [[{"role": "user", "content": f}, {"role": "assistant", "content": r},
                   {"role": "user", "content": f"{answer_trigger} (give only the final answer)"}]
                  for f, r in zip(first, rationales)]
    else:
        second = [f + r.rstrip() + "\n" + answer_trigger for f, r in zip(first, rationales)]
    answers = backend.generate(second, answer_sampling)
    out = []
    for r, a in zip(rationales, answers):
        text = a if chat else answer_trigger + a
        out.append({"rationale": r, "answer_text": text})
    return out


def self_consistency(backend, prompts: Sequence, n: int, extract, sampling=None,
                     seed: int = 0, zero_shot: bool = False, chat: bool = False,
                     answer_trigger: str = ANSWER_TRIGGER) -> list[dict]:
    """n sampled paths per prompt (seeds seed*1000+i), extracted answers, majority vote.
    `extract(text) -> answer | None`, or one such function per prompt.
    Returns per prompt {"answer", "votes", "paths": [{"text", "answer"}]}."""
    if n < 1:
        raise LmstackError(f"self-consistency: n must be >= 1, got {n}")
    base = as_sampling(sampling) if sampling is not None else as_sampling(None, temperature=0.7, max_new_tokens=256)
    if base.temperature == 0 and n > 1:
        raise LmstackError("self-consistency: sampling temperature is 0, so every path would be the same")
    jobs = [p for p in prompts for _ in range(n)]
    params = [as_sampling(base, seed=seed * 1000 + i) for _ in prompts for i in range(n)]
    if zero_shot:
        res = zero_shot_cot(backend, jobs, params, chat=chat, answer_trigger=answer_trigger)
        texts = [r["rationale"] + "\n" + r["answer_text"] for r in res]
        answer_texts = [r["answer_text"] for r in res]
    else:
        reqs = [[{"role": "user", "content": p}] for p in jobs] if chat else list(jobs)
        texts = backend.generate(reqs, params)
        answer_texts = texts
    extracts = list(extract) if isinstance(extract, (list, tuple)) else [extract] * len(prompts)
    out = []
    for j in range(len(prompts)):
        paths = [{"text": texts[j * n + i], "answer": extracts[j](answer_texts[j * n + i])} for i in range(n)]
        answer, votes = majority_vote([p["answer"] for p in paths])
        out.append({"answer": answer, "votes": votes, "paths": paths})
    return out


# ---- tool use ----------------------------------------------------------------------------------------------------

def tool_loop(backend, conversations: Sequence[list], tools: list[dict], run_tool: Callable[[str, dict], str],
              sampling=None, max_calls: int = 2) -> list[dict]:
    """Each conversation answered with `tools` offered: while the answer is a call (and fewer than `max_calls`
    rounds have run), the call is run (`run_tool(name, arguments)` -> text) and its result goes back as a `tool`
    message, and the model is asked again; all conversations of a round go to the backend in one batch
    (`backend.chat`, OpenAI's chat with tools on any backend). Per conversation: `answer` (the final text),
    `calls` [{name, arguments, result}], `messages` (the whole exchange).

    A call spans lines, so the backend generates without the sampling's stop strings; the final text is cut at
    the first of them afterwards (for greedy decoding the same text as stopping there)."""
    sp = as_sampling(sampling)
    stops, sp = list(sp.stop or []), as_sampling(sp, stop=[])
    convs = [list(c) for c in conversations]
    out: list[dict] = [{"answer": "", "calls": [], "messages": c} for c in convs]
    active = list(range(len(convs)))
    for rnd in range(max_calls + 1):
        if not active:
            break
        msgs = backend.chat([convs[i] for i in active], sp, tools if rnd < max_calls else None)
        nxt = []
        for i, m in zip(active, msgs):
            calls = m.get("tool_calls") or []
            convs[i].append({"role": "assistant", "content": m.get("content") or "",
                             **({"tool_calls": calls} if calls else {})})
            if not calls:
                text = m.get("content") or ""
                cut = [text.index(x) for x in stops if x and x in text]
                out[i]["answer"] = text[:min(cut)] if cut else text
                continue
            for c in calls:
                f = c["function"]
                try:
                    args = json.loads(f["arguments"]) if isinstance(f["arguments"], str) else f["arguments"]
                except json.JSONDecodeError:
                    args = None
                result = run_tool(f["name"], args) if isinstance(args, dict) else "error: arguments are not JSON"
                out[i]["calls"].append({"name": f["name"], "arguments": args, "result": result})
                convs[i].append({"role": "tool", "content": result, "tool_call_id": c.get("id", "")})
            nxt.append(i)
        active = nxt
    return out
