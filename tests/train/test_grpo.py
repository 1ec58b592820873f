"""GRPO: group-normalised advantages, the clipped objective plus KL, the reward rising on a toy rule."""

import json

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.lm import load
from lmstack.train.grpo import GRPOConfig, group_advantages, grpo_loss, run
from lmstack.train.rewards import Rewards


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0])
    a = group_advantages(r, 4).view(2, 4)
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.all(a[1] == 0)  # a group with one reward teaches nothing


def test_loss_is_the_clipped_objective_plus_kl():
    lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, False]])
    loss, st = grpo_loss(lp, lp.detach(), lp.detach(), torch.tensor([2.0]), mask, 0.2, 0.1)
    assert loss.item() == -2.0 and st["kl"] == 0.0  # ratio 1, policy == reference, masked token ignored


def test_grpo_reward_rises(tiny_ckpt, tmp_path):
    stops = set(load(tiny_ckpt).tokenizer.stop_ids)
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat.", "Say something."]))
    rewards = Rewards(rule=lambda rec, text, ids: float(bool(ids) and ids[-1] in stops))  # optimum: stop at once
    res = run(GRPOConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "g"), steps=10, prompts_per_step=2,
                         group_size=8, micro_batch=16, inner_steps=2, max_new_tokens=8, lr=5e-4, seq_len=128,
                         quiet=True), rewards=rewards)
    s = res.summary
    assert res.artifacts == {"model": str(tmp_path / "g" / "model")}
    recs = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    r = [x["reward"] for x in recs]
    assert sum(r[-4:]) / 4 > sum(r[:4]) / 4 + 0.1, r
    assert s["kl_last"] > 0 and "reward_best_of_group" in recs[-1]


def test_temperature_zero_is_rejected(tiny_ckpt, tmp_path):
    """GRPO's ratios are of log-probs of logits / temperature: a greedy policy (0) has none."""
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    cfg = GRPOConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "g"), steps=1, prompts_per_step=1,
                     group_size=2, max_new_tokens=2, seq_len=128, temperature=0.0, quiet=True)
    with pytest.raises(LmstackError, match=r"^grpo: temperature must be > 0"):
        run(cfg, rewards=Rewards(rule=lambda rec, text, ids: 0.0))


def test_grpo_logs_gold_with_a_reward_model_on_the_suite(tiny_ckpt, tmp_path):
    """The unbiased simulated annotator's mean score of each iteration's answers, beside the reward model's."""
    from lmstack.train.prefdata import suite_judge
    from lmstack.train.rewards import RewardModel, RewardNet

    lm = load(tiny_ckpt)
    seen = []

    class Capturing(Rewards):
        def parts(self, records, texts, ids=None):
            seen.append((list(records), list(texts)))
            return super().parts(records, texts, ids)

    rewards = Capturing(helpful=RewardModel(RewardNet(lm.model, lm.config.d_model).eval(), lm.tokenizer))
    cfg = GRPOConfig(model=str(tiny_ckpt), clusters=["arithmetic", "safety"], out=str(tmp_path / "g"), steps=2,
                     prompts_per_step=2, group_size=2, micro_batch=4, inner_steps=1, max_new_tokens=16, seq_len=128,
                     kl_coef=0.0, quiet=True)
    run(cfg, rewards=rewards)
    recs = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    judge = suite_judge(tmp_path / "g" / "suite")[0]
    assert len(recs) == len(seen) == 2
    for rec, (records, texts) in zip(recs, seen):
        assert rec["gold"] == pytest.approx(sum(judge.score(r, t) for r, t in zip(records, texts)) / len(texts))


def test_rollouts_from_a_quantised_copy(tiny_ckpt, tmp_path, monkeypatch):
    """--rollout-quantize int8: each iteration's answers come from an int8 copy of the policy, the update from the
    dense policy's log-probs; the run trains as usual."""
    from lmstack.model.quant import is_quantized
    from lmstack.train import rl

    seen = []
    generate_rows = rl.generate_rows

    def spy(model, *a, **kw):
        seen.append(is_quantized(model))
        return generate_rows(model, *a, **kw)

    monkeypatch.setattr(rl, "generate_rows", spy)
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat."]))
    res = run(GRPOConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "g"), steps=2, prompts_per_step=2,
                         group_size=4, micro_batch=8, max_new_tokens=4, seq_len=128, rollout_quantize="int8",
                         quiet=True), rewards=Rewards(rule=lambda rec, text, ids: float(len(ids))))
    assert seen == [True, True]
    assert not is_quantized(load(res.artifacts["model"]).model)
    with pytest.raises(LmstackError, match=r"--rollout-quantize must be one of"):
        run(GRPOConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "h"), steps=1, rollout_quantize="q4",
                       quiet=True), rewards=Rewards(rule=lambda rec, text, ids: 0.0))
