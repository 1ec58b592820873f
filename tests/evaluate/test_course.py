"""The course's evaluation pieces: distinct-n, the arithmetic chain-of-thought examples, the card's checks."""

import re

import pytest

from lmstack.course.claims import Claims, check
from lmstack.errors import LmstackError
from lmstack.evaluate.config import load_task
from lmstack.evaluate.harness import run_task
from lmstack.evaluate.metrics import distinct_n
from lmstack.evaluate.sources import builtin_records, spread
from lmstack.evaluate.templating import Template
from lmstack.options import from_dict


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
    refusals = {"n_unsafe": 40, "n_benign": 40}
    s = {"flan": {"held_out": "nli", "base": 0.4, "base_few": 0.42, "sft": 0.35, "n": 80},
         "rm": {"accuracy": 0.8, "pairs": 300, "agreement": 0.8},
         "rm_policy": {"accuracy": 0.62, "pairs": 500},
         "win": {"ppo": {"sampled": {**wr, "win": 0.45}, "greedy": wr, "kl_from_reference": 4.0},
                 "dpo": {"sampled": wr, "greedy": wr, "kl_from_reference": 1.0}},
         "alignment": {"sft": {"refusal_rate": 0.9, "over_refusal_rate": 0.1, **refusals},
                       "ppo": {"refusal_rate": 0.85, "over_refusal_rate": 0.1, **refusals},
                       "dpo": {"refusal_rate": 0.5, "over_refusal_rate": 0.1, **refusals}},
         "scaling": {"points": [{"val_loss": 3.0, "non_embedding_params": 10}, {"val_loss": 2.5, "non_embedding_params": 40}],
                     "alpha": 0.2},
         "cot": {"base": (0.1, 0.1, 60)}}
    got = {c["claim"]: (c["ok"], c["kind"]) for c in check(s, Claims(), kl_target=1.5)}
    assert got == {
        "validation loss falls with model size (power law in N)": (True, "claim"),
        "instruction tuning beats base zero-shot on the held-out nli": (False, "claim"),
        "few-shot beats zero-shot for the base model (in-context learning)": (False, "at scale"),
        "the reward model beats chance on held-out suite pairs (95% lower bound > 55.0%)": (True, "claim"),
        "the reward model ranks the policy's own held-out samples (95% lower bound > 60.0%)": (False, "claim"),
        # 0.45 - 0.2 = 0.25 is beyond 2 SE at n = 100; 0.3 - 0.2 = 0.1 is not (2 SE = 0.14): within noise fails.
        "PPO beats SFT under the annotators (win - loss > 2 SE, sampled answers)": (True, "claim"),
        "DPO beats SFT under the annotators (win - loss > 2 SE, sampled answers)": (False, "claim"),
        "PPO's KL to the SFT policy stays bounded (<= 3 nats/answer)": (False, "claim"),
        "PPO refuses as many harmful and no more harmless requests as SFT (within 2 SE)": (True, "claim"),
        "DPO refuses as many harmful and no more harmless requests as SFT (within 2 SE)": (False, "claim"),
        "chain of thought beats plain few-shot on arithmetic (base)": (False, "at scale")}


def test_claims_are_what_the_config_registers():
    s = {"win": {"ppo": {"sampled": {"win": 0.5, "tie": 0.3, "loss": 0.2, "n": 100}, "greedy": {"win": 0, "loss": 0},
                         "kl_from_reference": 1.0}}, "rm_policy": {"accuracy": 0.7, "pairs": 400}}
    assert [c["key"] for c in check(s, Claims(win=[], rm_policy_lower=0), kl_target=1.5)] == ["kl"]
    strict = check(s, Claims(se=20.0), kl_target=1.5)  # a threshold fixed in advance decides, not the outcome
    assert [c["ok"] for c in strict if c["key"] == "win"] == [False]
    # Several draws per prompt: the SE measured over prompts decides (here larger than the trinomial formula's).
    s["win"]["ppo"]["sampled"].update(se=0.2, prompts=50, draws=2)
    drawn = [c for c in check(s, Claims(), kl_target=1.5) if c["key"] == "win"]
    assert not drawn[0]["ok"] and "± 40.0 (2 SE)" in drawn[0]["numbers"] and "50 prompts x 2 draws" in drawn[0]["numbers"]
    with pytest.raises(LmstackError, match="claims: unknown field 'typo'"):
        from_dict(Claims, {"typo": 1}, "cfg.yaml: claims")


def test_reward_model_check_needs_a_lower_bound_above_chance():
    few = check({"rm": {"accuracy": 0.7, "pairs": 10, "agreement": 0.8}}, Claims())
    many = check({"rm": {"accuracy": 0.7, "pairs": 400, "agreement": 0.8}}, Claims())
    assert not few[0]["ok"] and many[0]["ok"]  # 7 of 10 is not clearly above chance; 280 of 400 is


def test_card_plots_the_helpfulness_reward_model_not_the_second_reward_stage(tmp_path, monkeypatch):
    """Two `reward` stages (Llama 2's helpfulness and safety RMs): the card's reward section is the first's."""
    import json

    from lmstack.course import card

    run = tmp_path / "run"
    for name, loss in (("reward", 0.5), ("reward_safety", 0.3)):
        (run / name).mkdir(parents=True)
        (run / name / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": loss}) + "\n")
    (run / "evaluate").mkdir()
    ev = {"reward_models": {"suite pairs_test": {"models": {"reward model": {"accuracy": 0.7, "pairs": 10}},
                                                 "annotator_agreement": 0.8, "annotator_vs_label": {"a": 0.8}}}}
    (run / "evaluate" / "evaluation.json").write_text(json.dumps(ev))
    stages = [{"stage": "reward"}, {"stage": "reward", "name": "reward_safety"}, {"stage": "evaluate"}]
    (run / "pipeline.json").write_text(json.dumps({"config": {"stages": stages}, "results": {}}))
    drawn = {}
    monkeypatch.setattr(card, "_curve", lambda png, panels, title: drawn.setdefault(png.name, panels))
    card.write_card(run)
    assert drawn["reward_training.png"][0][1][0][2] == [0.5]  # the loss panel's train series: the helpfulness RM's
