"""GRPO: group-normalised advantages, the clipped objective plus KL, the reward rising on a toy rule."""

import json

import torch

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
