"""Crafted checks where the answer is known: acc vs acc_norm, MC2's closed form, bootstrap,
exact-match normalisation, regex extraction, majority vote, binomial intervals."""

import math

import pytest

from lmstack.evaluate.metrics import bootstrap_stderr, mc_scores, ppl_aggs, wilson_interval
from lmstack.infer.prompting import majority_vote
from lmstack.text import exact_match, extract_answer, match_choice
from lmstack.text import normalize as normalize_answer


def test_acc_and_acc_norm_differ_on_a_designed_item():
    # The short choice has the higher total log-likelihood, the long one the higher per character.
    s = mc_scores([-4.0, -6.0], ["ab", "abcdefgh"], gold=[1])
    assert s["pred"] == 0 and s["acc"] == 0.0
    assert s["pred_norm"] == 1 and s["acc_norm"] == 1.0
    assert s["logprobs_norm"] == [-2.0, -0.75]


def test_mc2_equals_the_closed_form():
    ll = [-1.0, -2.0, -1.5, -3.0]
    want = (math.exp(-1) + math.exp(-2)) / sum(math.exp(x) for x in ll)
    assert mc_scores(ll, ["a", "b", "c", "d"], gold=[0, 1])["mc2"] == pytest.approx(want, rel=1e-12)
    # no underflow for very unlikely answers
    assert mc_scores([-900.0, -901.0], ["a", "b"], gold=[0])["mc2"] == pytest.approx(1 / (1 + math.exp(-1)))


def test_bootstrap_stderr():
    assert bootstrap_stderr({"value": [0.7] * 37}) == 0.0
    assert bootstrap_stderr({"value": [1.0] * 50}) == 0.0
    # a 0/1 metric: close to the binomial standard error sqrt(p(1-p)/n)
    vals = [1.0] * 30 + [0.0] * 70
    assert bootstrap_stderr({"value": vals}, iters=2000) == pytest.approx(math.sqrt(0.3 * 0.7 / 100), rel=0.15)
    cols = {"nll": [10.0, 20.0], "tokens": [5, 10], "bytes": [20, 40], "words": [4, 8]}
    assert bootstrap_stderr(cols, ppl_aggs()["perplexity"]) < 1e-12  # every document has the same rate
    assert math.isnan(bootstrap_stderr({"value": []})) and math.isnan(bootstrap_stderr({"value": [1.0]}))


def test_exact_match_normalisation():
    assert normalize_answer("The Answer: 1,000.") == "answer 1000"
    assert normalize_answer("-3.5 kg!") == "-3.5 kg"
    assert exact_match("  Paris. ", ["paris"])
    assert exact_match("the Eiffel tower", ["Eiffel Tower"])
    assert not exact_match("Paris", ["Lyon", "Nice"])
    assert exact_match("1,000", ["1000"])
    assert not exact_match("Paris.", ["paris"], normalize=False)
    assert exact_match(None, ["x"]) == 0.0
    assert exact_match("고양이를 키운다.", ["고양이를 키운다"])


def test_regex_extraction():
    text = "3 + 4 = 7 apples.\n#### 7\nQuestion: and 12"
    assert extract_answer(text, [r"#### (-?[0-9.,]+)"]) == "7"
    assert extract_answer("x is 5 and the answer is 8. Then 9", [r"(?i)the answer is (\d+)"]) == "8"
    assert extract_answer("a 1 b 2 c 3", [r"\d"], match="last") == "3"
    assert extract_answer("nothing here", [r"#### (\d+)"], fallback="text") == "nothing here"
    assert extract_answer("nothing here", [r"#### (\d+)"], fallback=None) is None
    assert extract_answer("costs $1,250. then 3", None, fallback="first_number") == "1,250"
    assert extract_answer("costs 1 then 3.", None, fallback="last_number") == "3"
    with pytest.raises(Exception, match="answer regex"):
        extract_answer("x", ["(unclosed"])


def test_majority_vote():
    assert majority_vote(["7", "8", "7.", None, "8", "7"]) == ("7", {"7": 3, "8": 2})
    assert majority_vote(["8", "7", "7", "8"])[0] == "8"  # a tie goes to the answer seen first
    assert majority_vote([None, None]) == (None, {})


def test_match_choice():
    choices = ["shark", "whale", "trout"]
    assert match_choice("B", choices) == 1
    assert match_choice("(C)", choices) == 2
    assert match_choice("whale", choices) == 1
    assert match_choice("It is a whale.", choices) == 1
    assert match_choice("D", choices) is None
    assert match_choice(None, choices) is None


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.2 < hi < 0.35
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
