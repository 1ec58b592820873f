"""Win rates: counts and intervals on scripted judgments, the LLM judge's order swap, unreadable
verdicts, the reward-model hook and the built-in annotators."""

import pytest

from lmstack.data.builtin import World
from lmstack.data.builtin.annotators import judge_panel
from lmstack.errors import LmstackError
from lmstack.evaluate.sources import read_records_file
from lmstack.evaluate.winrate import (
    AnnotatorJudge,
    LLMJudge,
    RewardJudge,
    count,
    format_table,
    parse_verdict,
    prompt_messages,
    win_rate,
)


def test_counts_and_intervals_on_scripted_judgments():
    r = count(["a"] * 359 + ["tie"] * 315 + ["b"] * 326, label="Llama-2-70b-chat vs ChatGPT-0301")
    d = r.rates()
    assert (r.win, r.tie, r.loss, r.n) == (359, 315, 326, 1000)
    assert (d["win"], d["tie"], d["loss"]) == (0.359, 0.315, 0.326)
    lo, hi = d["win_ci"]
    assert lo < 0.359 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.359 * 0.641 / 1000) ** 0.5, rel=0.02)
    assert d["win_rate"] == pytest.approx(0.359 + 0.315 / 2)
    table = format_table([r])
    assert "| Llama-2-70b-chat vs ChatGPT-0301 | 35.9 [" in table and "| 31.5 [" in table and "| 32.6 [" in table
    with pytest.raises(LmstackError, match="verdicts must be"):
        count(["a", "A"])


def test_parse_verdict():
    assert parse_verdict("Both are fine but A is clearer. [[A]]") == "a"
    assert parse_verdict("[[B]]") == "b" and parse_verdict("[[C]]") == "tie" and parse_verdict(" tie. ") == "tie"
    assert parse_verdict("first I thought [[A]] but finally [[B]]") == "b"
    assert parse_verdict("I cannot decide.") is None


def _judge_backend(scripted, rule):
    """A judge model that reads the two answers from its prompt and applies `rule(first, second)`."""
    def gen(p, s):
        text = p[-1]["content"]
        first = text.split("[The Start of Assistant A's Answer]\n")[1].split("\n[The End")[0]
        second = text.split("[The Start of Assistant B's Answer]\n")[1].split("\n[The End")[0]
        return rule(first, second)
    return scripted(gen=gen)


def test_llm_judge_both_orders(scripted):
    prompts = ["Q1", "Q2", "Q3"]
    a, b = ["good answer", "good answer", "meh"], ["bad", "good answer!", "meh"]
    # A position-biased judge always prefers the first answer: every pair disagrees across orders -> ties.
    biased = LLMJudge(_judge_backend(scripted, lambda x, y: "[[A]]"))
    r = win_rate(biased, prompts, a, b)
    assert (r.win, r.tie, r.loss) == (0, 3, 0)
    assert len(biased.backend.gen_calls) == 6  # both orders of every pair
    # A consistent judge (prefers answers starting with "good") keeps its verdicts.
    fair = LLMJudge(_judge_backend(scripted, lambda x, y: "[[A]]" if x.startswith("good") and not y.startswith("good")
                                   else "[[B]]" if y.startswith("good") and not x.startswith("good") else "[[C]]"))
    r = win_rate(fair, prompts, a, b)
    assert (r.win, r.tie, r.loss) == (1, 2, 0)
    assert r.items[0]["verdict_ab"] == "a" and r.items[0]["verdict_ba"] == "a"


def test_unparseable_judge_answers_are_counted(scripted):
    judge = LLMJudge(_judge_backend(scripted, lambda x, y: "[[A]]" if x == "x" else "I refuse to judge."))
    r = win_rate(judge, ["Q1", "Q2"], ["x", "z"], ["y", "w"])
    assert r.n == 2 and r.n_unparsed == 3 and (r.win, r.tie, r.loss) == (0, 2, 0)
    assert r.rates()["n_unparsed"] == 3
    with pytest.raises(LmstackError, match="missing \\{answer_b\\}"):
        LLMJudge(judge.backend, template="{question} {answer_a}")


def test_reward_judge_hook():
    seen = []

    def scorer(messages, answer):  # the later reward model plugs in with this signature
        seen.append(messages)
        return len(answer)

    r = win_rate(RewardJudge(scorer), [{"messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "ref"}]}, "yo"],
                 ["long answer", "a"], ["short", "a"])
    assert (r.win, r.tie, r.loss) == (1, 1, 0)
    assert seen[0] == [{"role": "user", "content": "hi"}]  # the reference answer is not part of the prompt
    assert r.items[0]["score_a"] == 11.0
    with pytest.raises(LmstackError, match="must match one to one"):
        win_rate(RewardJudge(scorer), ["x"], ["a", "b"], ["c"])


def test_annotator_panel_judges_builtin_prompts(suite_dir):
    world = World.from_json(suite_dir / "world.json")
    recs = [r for r in read_records_file(suite_dir / "tasks" / "test.jsonl", "jsonl")
            if r["style"] == "instruction" and r["cluster"] == "arithmetic"][:6]
    judge = AnnotatorJudge(judge_panel(world, n=3, flip_prob=0.0), records=recs)
    right = [r["target"] for r in recs]
    wrong = [str(int(r["target"]) + 1) for r in recs]
    r = win_rate(judge, [prompt_messages(x) for x in recs], right, wrong, label="right vs wrong")
    assert (r.win, r.tie, r.loss) == (6, 0, 0)
    r = win_rate(judge, recs, right, right)
    assert r.tie == 6


def test_load_scorer_takes_loaders_and_batches_a_reward_model():
    """A reward-model folder reaches evaluation through a loader the caller passes (evaluate never imports train);
    a scorer with `score(prompts, answers)` is called once per batch."""
    from lmstack.evaluate.winrate import load_scorer

    class BatchScorer:
        calls = 0

        def score(self, prompts, answers):
            BatchScorer.calls += 1
            assert prompts[0] == [{"role": "user", "content": "hi"}]
            return [float(len(a)) for a in answers]

        def __call__(self, prompt, answer):
            raise AssertionError("one at a time")

    scorer = load_scorer("some/rm", loaders=[lambda spec: BatchScorer() if spec == "some/rm" else None])
    r = win_rate(RewardJudge(scorer), ["hi", "hi", "hi"], ["long answer", "a", "b"], ["short", "a", "bb"])
    assert (r.win, r.tie, r.loss) == (1, 1, 1) and BatchScorer.calls == 2  # A's answers, then B's
    with pytest.raises(LmstackError, match="reward-model folder"):
        load_scorer("some/other", loaders=[lambda spec: None])
