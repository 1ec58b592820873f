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
from lmstack.train.rewards import RewardModel, RewardNet, Rewards, combine_rewards, exact_match, rule_reward


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
    out = combine_rewards(h, s, [False, False, True, False], threshold=-1.0)
    assert out.tolist() == [1.0, -2.0, 0.0, 4.0]  # safety score where unsafe or below the threshold


def test_rule_rewards():
    rec = {"target": "12", "meta": {"check": "number"}}
    assert exact_match(rec, "The answer is 12.") == 1.0 and exact_match(rec, "13") == 0.0
    assert exact_match({"target": "Porto"}, "porto") == 1.0
    assert rule_reward("token:7")(rec, "", [7, 1, 7]) == 2.0
    with pytest.raises(LmstackError):
        rule_reward("nonsense")
