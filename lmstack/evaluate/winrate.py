"""Win rates: two systems answer the same prompts, a judge picks the better answer of each pair, and
the result is a win / tie / loss table in the shape Llama 2 reports (e.g. Llama-2-70b-chat vs
ChatGPT-0301: 35.9 / 31.5 / 32.5), with 95% Wilson intervals.

Judges (anything with `compare_many(prompts, answers_a, answers_b) -> ["a" | "b" | "tie"]`):
- `AnnotatorJudge`: the built-in suite's simulated annotators (one, or a panel deciding by majority);
- `RewardJudge`: any scorer `judge(prompt_messages, answer) -> float` (a reward model plugs in here: the
  command line loads one from a folder, `lmstack.train.rewards.reward_model_scorer`);
- `LLMJudge`: a judge model through the backend interface. It sees each pair in both orders (the
  order bias of LLM judges is large); verdicts that disagree across orders count as a tie, and
  answers that cannot be parsed are counted, reported, and scored as a tie.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.backends import as_sampling
from lmstack.data.builtin.annotators import majority, tally
from lmstack.errors import LmstackError

from .metrics import wilson_interval

JUDGE_TEMPLATE = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI \
assistants to the user question below. Choose the assistant that follows the user's instructions and answers \
the question better: consider helpfulness, correctness, harmlessness and level of detail. Do not let the order \
or the length of the responses influence you. After a short explanation, give your verdict strictly in this \
format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.

[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

_VERDICT = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_BARE = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)


def prompt_text(prompt) -> str:
    """The user's text of a prompt given as a string, a message list, or a record with messages."""
    if isinstance(prompt, str):
        return prompt
    msgs = prompt.get("messages", prompt.get("prompt")) if isinstance(prompt, dict) else prompt
    if isinstance(msgs, str):
        return msgs
    return "\n\n".join(m["content"] for m in msgs if m.get("role") in ("user", "system"))


def prompt_messages(prompt) -> list[dict]:
    """A chat prompt (the conversation up to the answer) from a string, a message list or a record."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    msgs = prompt.get("messages", prompt.get("prompt")) if isinstance(prompt, dict) else prompt
    if isinstance(msgs, str):
        return [{"role": "user", "content": msgs}]
    msgs = list(msgs)
    while msgs and msgs[-1].get("role") == "assistant":  # a record's reference answer is not part of the prompt
        msgs = msgs[:-1]
    if not msgs:
        raise LmstackError("a prompt has no user message")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def parse_verdict(text: str) -> str | None:
    """'a', 'b', 'tie' from a judge's answer ([[A]]/[[B]]/[[C]], or a bare A/B/tie); None if unreadable."""
    found = _VERDICT.findall(text or "")
    if found:
        v = found[-1].upper()  # the final verdict, after any explanation
    else:
        m = _BARE.match(text or "")
        if not m:
            return None
        v = m.group(1).upper()
    return {"A": "a", "B": "b", "C": "tie", "TIE": "tie"}[v]


class AnnotatorJudge:
    def __init__(self, annotators, records=None):
        self.panel = annotators if isinstance(annotators, list) else [annotators]
        if records:
            for a in self.panel:
                a.add_records(records)
        self.name = "annotators" if len(self.panel) > 1 else self.panel[0].name

    def compare_many(self, prompts, answers_a, answers_b) -> list[str]:
        return [majority(self.panel, p, a, b) for p, a, b in zip(prompts, answers_a, answers_b)]


def score_all(scorer, prompts, answers) -> list[float]:
    """scorer(prompt_messages, answer) of each pair; one batched call where the scorer has
    `score(prompts, answers)` (a reward model)."""
    msgs = [prompt_messages(p) for p in prompts]
    batched = getattr(scorer, "score", None)
    if callable(batched):
        return [float(x) for x in batched(msgs, list(answers))]
    return [float(scorer(m, a)) for m, a in zip(msgs, answers)]


class RewardJudge:
    """Compare by a scalar scorer: `scorer(prompt_messages, answer) -> float` (larger is better)."""

    def __init__(self, scorer: Callable[[list, str], float], tie_margin: float = 0.0, name: str = "reward"):
        self.scorer, self.tie_margin, self.name = scorer, tie_margin, name

    def scores(self, prompts, answers) -> list[float]:
        return score_all(self.scorer, prompts, answers)

    def compare_many(self, prompts, answers_a, answers_b) -> list[str]:
        sa, sb = self.scores(prompts, answers_a), self.scores(prompts, answers_b)
        self.last_details = [{"score_a": x, "score_b": y} for x, y in zip(sa, sb)]
        return ["a" if x - y > self.tie_margin else "b" if y - x > self.tie_margin else "tie" for x, y in zip(sa, sb)]


class LLMJudge:
    """LLM-as-judge with both orders; order-inconsistent verdicts are ties, unreadable ones counted."""

    def __init__(self, backend, template: str = JUDGE_TEMPLATE, sampling=None, name: str | None = None):
        for key in ("{question}", "{answer_a}", "{answer_b}"):
            if key not in template:
                raise LmstackError(f"judge template: missing {key}")
        self.backend, self.template = backend, template
        self.sampling = as_sampling(sampling) if sampling is not None else as_sampling(None, max_new_tokens=512)
        self.name = name or f"judge:{backend.name}"
        self.n_unparsed = 0

    def compare_many(self, prompts, answers_a, answers_b) -> list[str]:
        reqs = []
        for p, a, b in zip(prompts, answers_a, answers_b):
            q = prompt_text(p)
            reqs.append([{"role": "user", "content": self.template.format(question=q, answer_a=a, answer_b=b)}])
            reqs.append([{"role": "user", "content": self.template.format(question=q, answer_a=b, answer_b=a)}])
        outs = self.backend.generate(reqs, self.sampling)
        verdicts, self.last_details = [], []
        swap = {"a": "b", "b": "a", "tie": "tie", None: None}
        for i in range(0, len(outs), 2):
            first, second = parse_verdict(outs[i]), swap[parse_verdict(outs[i + 1])]
            unparsed = (first is None) + (second is None)
            self.n_unparsed += unparsed
            v = first if (first == second and first is not None) else "tie"
            verdicts.append(v)
            self.last_details.append({"judge_ab": outs[i], "judge_ba": outs[i + 1], "verdict_ab": first,
                                      "verdict_ba": second, "unparsed": unparsed})
        return verdicts


@dataclass
class WinRate:
    win: int
    tie: int
    loss: int
    n_unparsed: int = 0
    label: str = "A vs B"
    items: list = field(default_factory=list, repr=False)

    @property
    def n(self) -> int:
        return self.win + self.tie + self.loss

    def rates(self) -> dict:
        out = {"n": self.n, "n_unparsed": self.n_unparsed, "label": self.label}
        for k in ("win", "tie", "loss"):
            c = getattr(self, k)
            lo, hi = wilson_interval(c, self.n)
            out[k] = c / self.n if self.n else float("nan")
            out[f"{k}_ci"] = [lo, hi]
            out[f"{k}_count"] = c
        # One number for A against B: ties count half (as AlpacaEval and Chatbot Arena do).
        out["win_rate"] = (self.win + 0.5 * self.tie) / self.n if self.n else float("nan")
        return out


def count(verdicts: Sequence[str], n_unparsed: int = 0, label: str = "A vs B") -> WinRate:
    bad = [v for v in verdicts if v not in ("a", "b", "tie")]
    if bad:
        raise LmstackError(f"win rate: verdicts must be 'a', 'b' or 'tie', got {bad[0]!r}")
    return WinRate(*tally(verdicts), n_unparsed, label)


def win_rate(judge, prompts, answers_a, answers_b, label: str = "A vs B") -> WinRate:
    if not (len(prompts) == len(answers_a) == len(answers_b)):
        raise LmstackError(f"win rate: {len(prompts)} prompts, {len(answers_a)} answers from A, "
                           f"{len(answers_b)} from B: they must match one to one")
    if not prompts:
        raise LmstackError("win rate: no prompts")
    verdicts = judge.compare_many(list(prompts), list(answers_a), list(answers_b))
    res = count(verdicts, getattr(judge, "n_unparsed", 0), label)
    details = getattr(judge, "last_details", None) or [{} for _ in verdicts]
    res.items = [{"prompt": prompt_text(p), "answer_a": a, "answer_b": b, "verdict": v, **d}
                 for p, a, b, v, d in zip(prompts, answers_a, answers_b, verdicts, details)]
    return res


def format_table(results: Sequence[WinRate], pct: bool = True) -> str:
    """| A vs B | win | tie | loss | n |, percentages with [95% CI], as in Llama 2's figures."""
    lines = ["| comparison | win % | tie % | loss % | win rate (ties half) | n | unparsed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        d = r.rates()
        cells = []
        for k in ("win", "tie", "loss"):
            lo, hi = d[f"{k}_ci"]
            cells.append(f"{100 * d[k]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {100 * d['win_rate']:.1f} | {d['n']} | "
                     f"{d['n_unparsed']} |")
    return "\n".join(lines)


def load_scorer(spec: str, loaders: Sequence[Callable[[str], Callable | None]] = ()) -> Callable[[list, str], float]:
    """A scorer from 'package.module:function' (called as fn(prompt_messages, answer) -> float), or from whatever
    one of `loaders` recognises: a loader returns a scorer for a spec it knows, None
    otherwise. Reward-model folders come in this way: evaluation never imports train, so the command line
    (lmstack.cli.eval) passes `lmstack.train.rewards.reward_model_scorer`."""
    for loader in loaders:
        got = loader(spec)
        if got is not None:
            return got
    if ":" in spec and not Path(spec).exists():
        mod, _, fn = spec.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise LmstackError(f"scorer {spec!r}: {e}") from None
        if not callable(obj):
            raise LmstackError(f"scorer {spec!r} is not callable")
        return obj
    raise LmstackError(f"scorer {spec!r}: give 'module:function' (fn(prompt_messages, answer) -> float) or a "
                       "reward-model folder")
