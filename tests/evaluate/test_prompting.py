"""Prompting strategies on scripted backends: few-shot layouts, chain of thought, zero-shot CoT's
two calls, self-consistency's majority vote, and the comparison table."""

import pytest

from lmstack.cli.eval import compare_table
from lmstack.errors import LmstackError
from lmstack.evaluate import load_task, run_task
from lmstack.infer.prompting import (
    ANSWER_TRIGGER,
    ZERO_SHOT_COT,
    build_prompt,
    select_examples,
    self_consistency,
    zero_shot_cot,
)
from lmstack.text import extract_answer


def test_build_prompt_and_selection():
    assert build_prompt("Q: c?\nA:", [("Q: a?\nA:", "1"), ("Q: b?\nA:", "2")], "Solve.\n\n") == \
        "Solve.\n\nQ: a?\nA: 1\n\nQ: b?\nA: 2\n\nQ: c?\nA:"
    pool = ["the cat sat", "a dog ran fast", "the cat sat on a mat", "birds fly"]
    assert select_examples(pool, 2, "fixed") == ["the cat sat", "a dog ran fast"]
    near = select_examples(pool, 2, "nearest", query="where the cat sat")
    assert set(near) == {"the cat sat", "the cat sat on a mat"} and near[-1] == "the cat sat"  # nearest last
    r1 = select_examples(pool, 2, "random", seed=1, query_index=0)
    assert r1 == select_examples(pool, 2, "random", seed=1, query_index=0)
    assert select_examples(pool, 2, "fixed", exclude=lambda e: e.startswith("the")) == ["a dog ran fast", "birds fly"]
    with pytest.raises(LmstackError, match="only 4"):
        select_examples(pool, 5, "fixed")


def test_self_consistency_majority_vote(scripted):
    # Five scripted reasoning paths per question, told apart by their seeds.
    paths = {0: "3+4=7. The answer is 7.", 1: "The answer is 8.", 2: "so 7", 3: "hmm, no idea",
             4: "4+3 is 7, the answer is 7."}
    be = scripted(gen=lambda p, s: paths[s.seed % 1000])
    extract = lambda t: extract_answer(t, [r"(?i)the answer is (\d+)"], fallback=None)
    (r,) = self_consistency(be, ["Q: 3+4?\nA:"], 5, extract, {"temperature": 0.7, "max_new_tokens": 50}, seed=0)
    assert r["answer"] == "7" and r["votes"] == {"7": 2, "8": 1}  # unparseable paths do not vote
    assert [p["answer"] for p in r["paths"]] == ["7", "8", None, None, "7"]
    assert {s.seed for _, s in be.gen_calls} == {0, 1, 2, 3, 4} and all(s.temperature == 0.7 for _, s in be.gen_calls)
    with pytest.raises(LmstackError, match="temperature is 0"):
        self_consistency(be, ["x"], 3, extract, {"temperature": 0})


def test_zero_shot_cot_makes_two_calls(scripted):
    def gen(p, s):
        if p.endswith(ZERO_SHOT_COT):
            return " Tom had 3 and bought 4, so 7."
        assert p.endswith(ANSWER_TRIGGER) and "so 7." in p
        return " 7."
    be = scripted(gen=gen)
    (r,) = zero_shot_cot(be, ["Q: Tom has 3 apples and buys 4. How many?\nA:"])
    assert r["rationale"] == " Tom had 3 and bought 4, so 7." and r["answer_text"] == ANSWER_TRIGGER + " 7."
    assert len(be.gen_calls) == 2
    assert be.gen_calls[0][0] == "Q: Tom has 3 apples and buys 4. How many?\nA: Let's think step by step."


def _math_backend(scripted):
    def gen(p, s):
        q = p.rsplit("Question: ", 1)[1]
        n = {"Tom": 7, "A box": 12, "Sara": 6}[next(k for k in ("Tom", "A box", "Sara") if q.startswith(k))]
        if p.endswith("Let's think step by step."):
            return " I add the numbers up."
        if p.endswith("(arabic numerals) is"):
            return f" {n}."
        if s.temperature > 0:  # self-consistency paths: right 3 times in 5
            return f" Some reasoning. The answer is {n if s.seed % 1000 in (0, 2, 4) else n + 1}."
        if "The answer is" in p:  # chain-of-thought examples in the prompt
            return f" Reasoning.\nThe answer is {n}."
        return f" {n - 1}"  # direct answers are wrong
    return scripted(gen=gen)


def test_strategies_through_the_harness(fixture_file, scripted):
    cfg, data = load_task("gsm8k"), fixture_file("gsm8k")
    be = _math_backend(scripted)
    res = {s: run_task(cfg, be, strategy=s, num_fewshot=1, data=data, bootstrap_iters=20)
           for s in ("zero_shot", "few_shot", "cot", "zero_shot_cot", "self_consistency")}
    assert res["zero_shot"].metrics["exact_match"] == 0.0 and res["zero_shot"].num_fewshot == 0
    assert res["few_shot"].metrics["exact_match"] == 0.0
    assert "Answer: 12\n\nQuestion: Tom" in res["few_shot"].samples[0]["prompt"]  # bare answers as examples
    assert res["cot"].metrics["exact_match"] == 1.0
    # CoT examples carry the worked solution, calculator annotations removed, and "The answer is N."
    assert "2 boxes hold 2 * 6 = 12 eggs.\nThe answer is 12.\n\nQuestion: Tom" in res["cot"].samples[0]["prompt"]
    assert res["zero_shot_cot"].metrics["exact_match"] == 1.0
    sc = res["self_consistency"]
    assert sc.metrics["exact_match"] == 1.0 and sc.samples[0]["votes"] == {"7": 3, "8": 2}
    table = compare_table(list(res.values()))
    assert table.splitlines()[0] == "| strategy | k | gsm8k exact_match | ± stderr | invalid | n |"
    assert "| cot | 1 | 100.0 |" in table and "| zero_shot | 0 | 0.0 |" in table


def test_strategy_errors(fixture_file, scripted):
    be = scripted(gen=lambda p, s: "x", ll=lambda c, x: 0.0)
    with pytest.raises(LmstackError, match="few_shot needs a number of examples"):
        run_task(load_task("gsm8k"), be, strategy="few_shot", data=fixture_file("gsm8k"))
    with pytest.raises(LmstackError, match="cot needs solved examples with reasoning"):
        run_task(load_task("arc_easy"), be, strategy="cot", num_fewshot=1, data=fixture_file("arc"))
    with pytest.raises(LmstackError, match="strategy 'tree'"):
        run_task(load_task("gsm8k"), be, strategy="tree", data=fixture_file("gsm8k"))
    with pytest.raises(LmstackError, match="do not apply to perplexity"):
        run_task(load_task("wikitext"), be, strategy="zero_shot", data=fixture_file("wikitext"))


def test_multiple_choice_zero_shot_cot_reads_the_option(fixture_file, scripted):
    be = scripted(gen=lambda p, s: " A whale breathes air." if p.endswith("step.") else " B.")
    res = run_task(load_task("arc_easy"), be, strategy="zero_shot_cot", data=fixture_file("arc"), limit=1)
    assert res.samples[0]["pred"] == "whale" and res.metrics["acc"] == 1.0
