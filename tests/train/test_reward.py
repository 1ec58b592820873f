"""Reward model: head init and padding, the InstructGPT comparison loss with margins, bad input reported,
training beats chance, checkpoint round trip with normalisation, another tokenizer, Llama 2's rule."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.train.prefs import load_comparisons, right_pad
from lmstack.train.reward import (
    EncodedComparison,
    RewardConfig,
    RewardModel,
    RewardNet,
    Rewards,
    combine_rewards,
    comparison_loss,
    exact_match,
    load_reward_model,
    reward,
    rule_reward,
)


def write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return str(path)


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


def test_comparison_loss_keeps_a_prompts_pairs_together():
    """K answers scored once; loss = mean over the prompt's C(K,2) pairs of -log sigma(r_w - r_l - m)."""

    class Fixed(torch.nn.Module):
        def forward(self, ids, lens):
            return ids[:, 0].float()  # reward = first token id

    batch = [EncodedComparison([[3], [1], [2]], [(0, 1, 0.5), (0, 2, 0.0), (2, 1, 0.0)]),
             EncodedComparison([[0], [5]], [(0, 1, 0.0)])]
    loss, correct, n, gap = comparison_loss(Fixed(), batch, 0, "cpu")
    p1 = (-F.logsigmoid(torch.tensor([3 - 1 - 0.5, 3 - 2, 2 - 1]))).mean()
    p2 = -F.logsigmoid(torch.tensor(-5.0))
    assert loss.item() == pytest.approx(((p1 + p2) / 2).item(), rel=1e-6)
    assert (correct, n) == (3, 4) and gap == pytest.approx(2 + 1 + 1 - 5)


def test_bad_input_is_counted_or_named(tmp_path):
    recs = [
        {"id": "a", "prompt": msg("Q1"), "chosen": "x", "rejected": "x"},  # identical
        {"id": "b", "prompt": msg("Q1"), "chosen": "x", "rejected": "y", "margin": 2.0},
        {"id": "c", "prompt": msg("Q2"), "answers": ["p", "q", "r"], "ranking": [[0, 1], 2]},  # a tie
    ]
    comps, st = load_comparisons([write(tmp_path / "ok.jsonl", recs)], margin_scale=0.5)
    assert st["identical_pairs"] == 1 and st["tied_pairs"] == 1 and st["pairs"] == 3
    assert comps[0].pairs == [(0, 1, 1.0)]  # margin 2.0 x 0.5
    bad = write(tmp_path / "bad.jsonl", recs + [{"id": "d", "prompt": msg("Q3"), "answers": ["p", "q", "r"],
                                                 "ranking": [0, 2]}])
    with pytest.raises(LmstackError, match=r"bad.jsonl:4: 'ranking' must rank each of the 3 answers once \(missing \[1\]"):
        load_comparisons([bad])
    _, st = load_comparisons([bad], skip_bad=True)
    assert st["bad_records"] == 1 and "missing [1]" in st["bad"][0]
    with pytest.raises(LmstackError, match="no usable comparisons"):
        load_comparisons([write(tmp_path / "same.jsonl", recs[:1])])


def _prefs(n):
    # The chosen answer always says "yes", the rejected one "no": learnable from the answer alone.
    return [{"id": f"p{i}", "prompt": msg(f"Is {i} a number?"), "answers": ["yes it is", "no", "cat"],
             "ranking": [0, 2, 1] if i % 2 else [0, 1, 2]} for i in range(n)]


def test_reward_model_trains_and_round_trips(tiny_ckpt, tmp_path):
    train = write(tmp_path / "train.jsonl", _prefs(12))
    val = write(tmp_path / "val.jsonl", [{"id": f"v{i}", "prompt": msg(f"Is {i + 50} a number?"), "chosen": "yes it is",
                                          "rejected": "no"} for i in range(6)])
    long = write(tmp_path / "long.jsonl", [{"id": "L", "prompt": msg("word " * 200), "chosen": "a", "rejected": "b"}])
    cfg = RewardConfig(model=str(tiny_ckpt), data=[train, long], val_data=[val], out=str(tmp_path / "rm"), epochs=0,
                       steps=12, micro_batch=4, lr=3e-3, seq_len=128, norm_prompts=6, norm_max_new_tokens=6, quiet=True)
    s = reward(cfg)
    assert s["val_accuracy"] > 0.5 and s["val_margin"] > 0
    assert s["data"]["pairs_lost_overlong"] == 1  # the long prompt: counted, not silently lost
    rm = load_reward_model(tmp_path / "rm" / "model")
    assert rm.meta["reward_model"] is True and rm.gain == pytest.approx(s["normalization"]["gain"])
    raw = rm.score([msg("Is 7 a number?")] * 2, ["yes it is", "no"], normalized=False)
    norm = rm.score([msg("Is 7 a number?")] * 2, ["yes it is", "no"])
    assert torch.allclose(norm, raw * rm.gain + rm.bias)
    assert rm(msg("Is 7 a number?"), "yes it is") == pytest.approx(float(norm[0]), abs=1e-5)  # a judge callable
    assert norm[0] > norm[1]


def test_reward_model_with_another_tokenizer(tiny_lm):
    """The RM re-tokenises text with its own tokenizer, so a policy with another vocabulary can use it."""
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.tokenizer import train_bpe

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


def test_policy_samples_ranked_by_annotators(tiny_ckpt, tmp_path):
    """InstructGPT's labelling step: K sampled answers per prompt, ranked by a simulated annotator, ties grouped."""
    from lmstack.data.builtin import build_suite
    from lmstack.train.prefs import PrefConfig, load_prompts, suite_judge
    from lmstack.train.reward import sample_rankings

    build_suite(tmp_path / "suite", seed=0, size="tiny")
    recs, _ = load_prompts(PrefConfig(suite=str(tmp_path / "suite"), out=str(tmp_path)))
    short = [r for r in recs if len(r["prompt"][0]["content"]) < 40][:4]
    ranks, st = sample_rankings(str(tiny_ckpt), short, 3, suite_judge(tmp_path / "suite"), 6, 0, "cpu")
    assert st["prompts"] + st["dropped_overlong"] == 4
    for r in ranks:
        flat = [i for g in r["ranking"] for i in (g if isinstance(g, list) else [g])]
        assert sorted(flat) == list(range(len(r["answers"]))) and len(set(r["answers"])) == len(r["answers"])
    path = write(tmp_path / "s.jsonl", ranks + [{"id": "x", "prompt": msg("Q"), "chosen": "a", "rejected": "b"}])
    comps, _ = load_comparisons([path])  # the rankings read back as training data
    assert comps
