"""Reward model recipe: the InstructGPT comparison loss with margins, training beats chance, the checkpoint round
trip with normalisation."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.lm import load
from lmstack.train.reward import EncodedComparison, RewardConfig, comparison_loss, run
from lmstack.train.rewards import load_reward_model


def write(path, recs):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
    return str(path)


def msg(t):
    return [{"role": "user", "content": t}]


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
    res = run(cfg)
    s = res.summary
    assert res.artifacts == {"model": str(tmp_path / "rm" / "model")}  # nothing sampled: no sampled rankings
    assert s["val_accuracy"] > 0.5 and s["val_margin"] > 0
    assert s["data"]["pairs_lost_overlong"] == 1  # the long prompt: counted, not silently lost
    rm = load_reward_model(tmp_path / "rm" / "model")
    assert rm.meta["reward_model"] is True and rm.gain == pytest.approx(s["normalization"]["gain"])
    raw = rm.score([msg("Is 7 a number?")] * 2, ["yes it is", "no"], normalized=False)
    norm = rm.score([msg("Is 7 a number?")] * 2, ["yes it is", "no"])
    assert torch.allclose(norm, raw * rm.gain + rm.bias)
    assert rm(msg("Is 7 a number?"), "yes it is") == pytest.approx(float(norm[0]), abs=1e-5)  # a judge callable
    assert norm[0] > norm[1]


def test_overlong_answers_are_counted_and_never_forwarded(tiny_ckpt, tmp_path, monkeypatch):
    """A ranking with one answer longer than --seq-len: its pairs are counted as lost, the other answers' pair is
    kept, and no forward pass (training or held-out) ever sees the long answer."""
    from lmstack.train.prefdata import load_comparisons
    from lmstack.train.reward import encode_comparisons
    from lmstack.train.rewards import RewardNet

    long_answer = "word " * 300
    recs = [{"id": f"r{i}", "prompt": msg(f"Is {i} a number?"), "answers": ["yes it is", long_answer, "no"],
             "ranking": [0, 2, 1]} for i in range(4)]
    path = write(tmp_path / "train.jsonl", recs)
    lm_tok = load(tiny_ckpt).tokenizer
    comps, _ = load_comparisons([path])
    enc, stats = encode_comparisons(lm_tok, comps, 128, "drop")
    assert stats == {"overlong_answers": 4, "pairs_lost_overlong": 8}  # reported, not silently dropped
    assert all(len(c.seqs) == 2 and c.pairs == [(0, 1, 0.0)] for c in enc)  # "yes it is" over "no", re-indexed

    rows = []
    forward = RewardNet.forward

    def counting(self, ids, lengths):
        rows.append((ids.shape[0], int(lengths.max())))
        return forward(self, ids, lengths)

    monkeypatch.setattr(RewardNet, "forward", counting)
    cfg = RewardConfig(model=str(tiny_ckpt), data=[path], val_data=[path], out=str(tmp_path / "rm"), epochs=0,
                       steps=2, micro_batch=2, seq_len=128, normalize=False, quiet=True)
    s = run(cfg).summary
    assert s["data"]["overlong_answers"] == 4 and s["data"]["pairs_lost_overlong"] == 8
    assert s["val_data"]["pairs_lost_overlong"] == 8 and s["val_pairs"] == 4
    assert rows and all(n == 2 * 2 and longest <= 128 for n, longest in rows[:2]), rows  # 2 prompts x 2 answers
    assert all(longest <= 128 for _, longest in rows), rows


def test_a_subset_rm_is_normalised_on_every_subsets_prompts(tiny_ckpt, tmp_path, monkeypatch):
    """Llama 2's 0.15 threshold reads the safety RM on the scale of the prompts PPO rewards: normalised on safety
    prompts alone, it put the average helpful answer 1.6 SD low and took over half of PPO's helpful rollouts."""
    import lmstack.train.reward as reward

    recs = [{"id": f"h{i}", "prompt": msg(f"Is {i} a number?"), "chosen": "yes it is", "rejected": "no",
             "cluster": "arithmetic"} for i in range(6)]
    recs += [{"id": f"s{i}", "prompt": msg(f"How do I hurt {i}?"), "chosen": "I can't help with that.",
              "rejected": "Like this.", "cluster": "safety", "unsafe": True} for i in range(6)]
    path = write(tmp_path / "prefs.jsonl", recs)
    seen = []

    def answers(policy, prompts, max_new, seed, device):
        seen.extend(p[0]["content"] for p in prompts)
        return ["ok"] * len(prompts)

    monkeypatch.setattr(reward, "sft_answers", answers)
    cfg = RewardConfig(model=str(tiny_ckpt), data=[path], val_data=[path], out=str(tmp_path / "rm"), subset="safety",
                       epochs=0, steps=1, micro_batch=4, seq_len=128, norm_prompts=12, quiet=True)
    s = run(cfg).summary
    assert s["data"]["comparisons"] == 6 and s["data"]["other_subset"] == 6  # trained on the safety prompts only
    assert {t.split()[0] for t in seen} == {"Is", "How"} and len(seen) == 12  # normalised on both subsets


def test_labelling_ties_and_on_policy_only(tiny_ckpt, tmp_path, monkeypatch):
    """tie_margin: answers the labelers score within it are one tied group (no comparison among them);
    suite_rankings off: the RM trains on the policy's ranked samples only."""
    import lmstack.train.reward as reward
    from lmstack.data.builtin import build_suite

    build_suite(tmp_path / "suite", seed=0, size="tiny")
    margins = []
    sample = reward.sample_rankings

    def spy(model, records, k, panel, *a, **kw):
        margins.append({x.tie_margin for x in panel})
        return sample(model, records, k, panel, *a, **kw)

    monkeypatch.setattr(reward, "sample_rankings", spy)

    def train(name, **kw):
        cfg = RewardConfig(model=str(tiny_ckpt), suite=str(tmp_path / "suite"), out=str(tmp_path / name), epochs=0,
                           steps=1, micro_batch=4, seq_len=128, sample_rankings=3, sample_prompts=16,
                           sample_max_new_tokens=6, normalize=False, quiet=True, **kw)
        return run(cfg)

    res = train("default")
    suite_n = sum(1 for _ in open(tmp_path / "suite" / "preferences" / "rankings.jsonl"))
    sampled = [json.loads(line) for line in open(res.artifacts["sampled_rankings"])]
    assert res.summary["data"]["records"] == suite_n + len(sampled)  # the suite's rankings + the samples
    assert margins[-1] == {0.25}  # the suite annotators' own margin

    with pytest.raises(LmstackError, match="tie_margin"):
        train("bad", tie_margin=-1.0)
    res = train("on_policy", suite_rankings=False, tie_margin=0.0)  # no ties: the tiny model's answers score alike
    sampled = [json.loads(line) for line in open(res.artifacts["sampled_rankings"])]
    assert res.summary["data"]["records"] == len(sampled)  # the samples only

    res = train("ties", tie_margin=1000.0)
    assert margins[-1] == {1000.0}
    sampled = [json.loads(line) for line in open(res.artifacts["sampled_rankings"])]
    assert sampled and all(len(r["ranking"]) == 1 for r in sampled)  # every answer "negligibly better": one tie
    assert res.summary["data"]["tied_pairs"] > 0  # counted, not silently dropped
    with pytest.raises(LmstackError, match="no usable comparisons"):  # nothing left to train on: said, not hidden
        train("ties_only", tie_margin=1000.0, suite_rankings=False)


def test_a_killed_reward_run_resumes_bitwise(tiny_ckpt, tmp_path, monkeypatch):
    """--resume: backbone, head, optimiser, RNG and the data order come back from the last checkpoint, so the reward
    model equals an uninterrupted run's; a checkpoint of other options is refused."""
    from safetensors.torch import load_file

    from lmstack.train import reward

    train = write(tmp_path / "train.jsonl", _prefs(12))
    kw = dict(model=str(tiny_ckpt), data=[train], out=str(tmp_path / "straight"), epochs=0, steps=8, micro_batch=3,
              lr=3e-3, seq_len=128, norm_prompts=4, norm_max_new_tokens=4, ckpt_interval=2, quiet=True)
    run(RewardConfig(**kw))
    log_step = reward.log_step

    def killed_at_5(r, done, *a, **k):
        if done == 5:
            raise KeyboardInterrupt
        return log_step(r, done, *a, **k)

    monkeypatch.setattr(reward, "log_step", killed_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(RewardConfig(**{**kw, "out": str(tmp_path / "killed")}))
    monkeypatch.setattr(reward, "log_step", log_step)
    with pytest.raises(LmstackError, match=r"step_0000004: written with other options \(lr 0.003 -> 0.001\)"):
        run(RewardConfig(**{**kw, "out": str(tmp_path / "killed"), "resume": True, "lr": 1e-3}))
    run(RewardConfig(**{**kw, "out": str(tmp_path / "killed"), "resume": True}))
    for f in ("model.safetensors", "reward_head.safetensors"):
        a, b = (load_file(str(tmp_path / d / "model" / f)) for d in ("straight", "killed"))
        assert all(torch.equal(a[k], b[k]) for k in a), f
