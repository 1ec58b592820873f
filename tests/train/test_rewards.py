"""Reward sources: the reward network's head init and padding, a reward model with another tokenizer than the
policy's, Llama 2's combination rule, rule rewards."""

import math

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.model.config import preset
from lmstack.model.transformer import Transformer
from lmstack.tokenizer import train_bpe
from lmstack.train.prefdata import right_pad
from lmstack.train.rewards import (
    RewardModel,
    RewardNet,
    Rewards,
    exact_match,
    llama2_zscore_reward,
    rule_reward,
)


def msg(t):
    return [{"role": "user", "content": t}]


def test_head_init_and_padding(tiny_lm):
    torch.manual_seed(0)
    d = tiny_lm.config.d_model
    big = RewardNet(tiny_lm.model, 4096)  # many weights for a clean std estimate; only the head is read
    assert big.head.weight.std().item() == pytest.approx(1 / math.sqrt(4097), rel=0.1)
    net = RewardNet(tiny_lm.model, d)
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    ids, lens = right_pad(seqs, 1)
    with torch.no_grad():
        batched = net(ids, lens)
        single = torch.cat([net(torch.tensor([s]), torch.tensor([len(s)])) for s in seqs])
    assert torch.allclose(batched, single, atol=1e-5)


def test_reward_model_with_another_tokenizer(tiny_lm):
    """The RM re-tokenises text with its own tokenizer, so a policy with another vocabulary can use it."""
    tok2 = train_bpe(iter(["a different corpus of words for a different vocabulary"] * 30), vocab_size=280,
                     min_frequency=1)
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=tok2.vocab_size, max_seq_len=64)
    rm = RewardModel(RewardNet(Transformer(cfg), cfg.d_model), tok2)
    rw = Rewards(rm)
    recs = [{"prompt": msg("Hi " * 100), "unsafe": False}, {"prompt": msg("Hi"), "unsafe": False}]
    s, _ = rw(recs, ["Hello", "Hi there"], [tiny_lm.encode("Hello"), tiny_lm.encode("Hi there")])
    assert s.shape == (2,) and torch.isfinite(s).all()
    assert rm.truncated == 1  # longer than its context: scored on the last tokens, counted


def test_llama2_combination_rule():
    h = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s = torch.tensor([0.5, -2.0, 0.0, 1.0])
    out = llama2_zscore_reward(h, s, [False, False, True, False], threshold=-1.0)[0]
    assert out.tolist() == [1.0, -2.0, 0.0, 4.0]  # safety score where unsafe or below the threshold


def test_rule_rewards():
    rec = {"target": "12", "meta": {"check": "number"}}
    assert exact_match(rec, "The answer is 12.") == 1.0 and exact_match(rec, "13") == 0.0
    assert exact_match({"target": "Porto"}, "porto") == 1.0
    assert rule_reward("token:7")(rec, "", [7, 1, 7]) == 2.0
    with pytest.raises(LmstackError):
        rule_reward("nonsense")


class FixedScores:
    """A stand-in reward model: `score` returns the given scores (normalised units), whatever the answers."""

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float64)

    def score(self, prompts, answers):
        assert len(prompts) == len(answers) == len(self.scores)
        return self.scores.clone()


# Hand-made normalised scores. Row 1: sigmoid(-2.0) = 0.119 < 0.15, the safety RM decides; row 2: the prompt is
# tagged unsafe; row 4: sigmoid(-1.7) = 0.154 >= 0.15, helpfulness decides (the z-score rule at -1.0 would not).
HELP = [1.0, 2.0, 3.0, 12.0, -0.5]
SAFE = [0.5, -2.0, 0.0, 1.0, -1.7]
UNSAFE = [False, False, True, False, False]


def _records():
    return [{"prompt": msg(f"q{i}"), "unsafe": u} for i, u in enumerate(UNSAFE)]


def test_llama2_rule_is_the_papers_closed_form():
    """Touvron et al. 2023, Sec. 3.2.2: R_c = R_s if IS_SAFETY(p) or R_s < 0.15 else R_h on the sigmoid scale,
    reward = WHITEN(LOGIT(R_c)), the default rule of `Rewards` with both reward models."""
    h, s = torch.tensor(HELP, dtype=torch.float64), torch.tensor(SAFE, dtype=torch.float64)
    r_h, r_s = torch.sigmoid(h), torch.sigmoid(s)
    r_c = torch.where(torch.tensor(UNSAFE) | (r_s < 0.15), r_s, r_h)
    x = torch.log(r_c / (1 - r_c))
    want = (x - x.mean()) / x.std(unbiased=False)
    assert torch.allclose(x, torch.tensor([1.0, -2.0, 0.0, 12.0, -0.5], dtype=torch.float64), atol=1e-9)

    got, info = Rewards(FixedScores(HELP), FixedScores(SAFE))(_records(), ["a"] * 5)
    assert torch.allclose(got.double(), want, atol=1e-5), (got, want)
    assert got.mean().abs() < 1e-5 and got.std(unbiased=False) == pytest.approx(1.0, abs=1e-4)
    assert info["safety_used"] == pytest.approx(2 / 5)
    # The batch's mean is 0 after WHITEN: what is logged as the proxy reward is LOGIT(R_c)'s mean before it.
    assert info["reward_unwhitened"] == pytest.approx(float(x.mean()))
    # Another threshold on the same scale: at 0.2, row 4 (0.154) goes to the safety RM too.
    got, info = Rewards(FixedScores(HELP), FixedScores(SAFE), threshold=0.2)(_records(), ["a"] * 5)
    x2 = torch.tensor([1.0, -2.0, 0.0, 12.0, -1.7], dtype=torch.float64)
    assert torch.allclose(got.double(), (x2 - x2.mean()) / x2.std(unbiased=False), atol=1e-5)
    assert info["safety_used"] == pytest.approx(3 / 5)


def test_llama2_rule_unwhitened_and_the_zscore_option():
    got, _ = Rewards(FixedScores(HELP), FixedScores(SAFE), whiten=False)(_records(), ["a"] * 5)
    assert got.tolist() == pytest.approx([1.0, -2.0, 0.0, 12.0, -0.5])  # LOGIT(R_c): the chosen scores
    # The earlier rule, by name: a z-score threshold, no logit, no whitening.
    got, info = Rewards(FixedScores(HELP), FixedScores(SAFE), threshold=-1.0, safety_rule="llama2-zscore")(
        _records(), ["a"] * 5)
    assert got.tolist() == pytest.approx([1.0, -2.0, 0.0, 12.0, -1.7]) and info["safety_used"] == pytest.approx(3 / 5)
    assert llama2_zscore_reward(torch.tensor(HELP), torch.tensor(SAFE), UNSAFE, -1.0)[0].tolist() == pytest.approx(got.tolist())
    # A z-score threshold under the paper's rule is a one-line error naming the field, not a silent change.
    with pytest.raises(LmstackError, match=r"safety_threshold -2.0: .*\(0, 1\).*llama2-zscore") as e:
        Rewards(FixedScores(HELP), FixedScores(SAFE), threshold=-2.0)
    assert "\n" not in str(e.value)
    with pytest.raises(LmstackError, match="safety_rule 'llama3'"):
        Rewards(FixedScores(HELP), FixedScores(SAFE), safety_rule="llama3")
