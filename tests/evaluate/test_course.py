"""The course's evaluation pieces: distinct-n, the arithmetic chain-of-thought examples, the card's checks."""

import re

import pytest

from lmstack.course.card import _checks
from lmstack.evaluate.config import load_task
from lmstack.evaluate.harness import run_task
from lmstack.evaluate.metrics import distinct_n
from lmstack.evaluate.sources import builtin_records, spread
from lmstack.evaluate.templating import Template


def test_distinct_n_closed_form():
    texts = ["the cat sat", "the cat ran", ""]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, sat, ran of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat sat), (cat ran)
    assert distinct_n(["a"], 2) == 0.0
    assert distinct_n(["a b", "c d"], 2) == 1.0


def test_spread_keeps_every_part_of_a_list():
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread([1, 2], 5) == [1, 2] and spread([1, 2], None) == [1, 2]


@pytest.fixture
def suite(suite_dir):
    return suite_dir


def test_arithmetic_rationales_are_correct_worked_solutions(suite):
    cfg = load_task("builtin_arithmetic_gen")
    t = Template(cfg.fewshot.rationale, "rationale")
    recs = builtin_records({"dir": str(suite), "split": "train", "cluster": "arithmetic"}, "test")
    assert len(recs) > 20
    ops = set()
    for r in recs:
        text = t(r)
        assert "\n" not in text  # the task stops generation at a newline
        assert text.endswith(f"The answer is {r['target']}.")
        ops.add(r["meta"]["op"])
        for a, op, b, c in re.findall(r"(\d+) ([-+x]) (\d+) = (\d+)", text):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "x": a * b}[op] == c, text
    assert ops >= {"add", "sub", "mul", "two_step", "gcd", "lcm"}


def test_cot_prompt_shows_worked_examples_and_extracts_the_final_answer(suite, scripted):
    cfg = load_task("builtin_arithmetic_gen")
    cfg.source = {"builtin": {**cfg.source["builtin"], "dir": str(suite)}}
    be = scripted(gen=lambda p, s: "2 + 2 = 4, then 4 - 1 = 3. The answer is 3.")
    r = run_task(cfg, be, strategy="cot", num_fewshot=2, limit=5, bootstrap_iters=10)
    prompt = be.gen_calls[0][0]
    assert prompt.count("The answer is") == 2 and "=" in prompt
    assert all(s["extracted"] == "3" for s in r.samples)
    assert r.metrics["exact_match"] == pytest.approx(sum("3" in s["target"] for s in r.samples) / 5)


def test_card_checks_say_which_claims_hold():
    wr = {"win": 0.3, "tie": 0.5, "loss": 0.2, "n": 100}
    s = {"flan": {"held_out": "nli", "base": {"rank_acc": 0.4, "em_acc": 0.0}, "base_few": {"rank_acc": 0.4},
                  "sft": {"rank_acc": 0.35, "em_acc": 0.2}},
         "rm": {"accuracy": 0.8, "pairs": 300, "agreement": 0.8},
         "win": {"ppo": {"sampled": wr, "greedy": wr, "kl_from_reference": 4.0},
                 "dpo": {"sampled": {**wr, "win": 0.1}, "greedy": wr, "kl_from_reference": 1.0}},
         "alignment": {"base": {"refusal_rate": 0.0}, "ppo": {"refusal_rate": 0.5, "n_unsafe": 20}}}
    got = {c["claim"]: c["ok"] for c in _checks(s, kl_bound=3.0)}
    assert got == {"SFT beats base on the held-out cluster 'nli'": False,
                   "the reward model beats chance clearly on held-out pairs": True,
                   "PPO wins more than it loses against SFT (annotators, sampled answers)": True,
                   "PPO's KL to the SFT policy stays bounded (<= 3 nats/answer)": False,
                   "DPO wins more than it loses against SFT (annotators, sampled answers)": False,
                   "PPO refuses more harmful prompts than base": True}


def test_reward_model_check_needs_a_lower_bound_above_chance():
    few = _checks({"rm": {"accuracy": 0.7, "pairs": 10, "agreement": 0.8}}, kl_bound=3.0)
    many = _checks({"rm": {"accuracy": 0.7, "pairs": 400, "agreement": 0.8}}, kl_bound=3.0)
    assert not few[0]["ok"] and many[0]["ok"]  # 7 of 10 is not clearly above chance; 280 of 400 is
