"""GRPO: group-normalised advantages, the reward rising on a toy rule, and LoRA's reference = adapters off."""

import json

import torch

from lmstack.train.grpo import GRPOConfig, group_advantages, grpo, grpo_loss
from lmstack.train.prefs import PrefConfig, load_policy, reference
from lmstack.train.reward import Rewards


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
    import lmstack

    stops = set(lmstack.load(tiny_ckpt).tokenizer.stop_ids)
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat.", "Say something."]))
    rewards = Rewards(rule=lambda rec, text, ids: float(bool(ids) and ids[-1] in stops))  # optimum: stop at once
    s = grpo(GRPOConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "g"), steps=10, prompts_per_step=2,
                        group_size=8, micro_batch=16, inner_steps=2, max_new_tokens=8, lr=5e-4, seq_len=128, quiet=True),
             rewards=rewards)
    recs = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    r = [x["reward"] for x in recs]
    assert sum(r[-4:]) / 4 > sum(r[:4]) / 4 + 0.1, r
    assert s["kl_last"] > 0 and "reward_best_of_group" in recs[-1]


def test_lora_reference_is_the_adapters_off(tiny_ckpt, tmp_path):
    cfg = PrefConfig(model=str(tiny_ckpt), out=str(tmp_path), lora=True, lora_r=4, seq_len=128)
    lm, model, params, ref = load_policy(cfg, "cpu")
    assert ref is None and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    base = lmstack_base_logits(tiny_ckpt)
    with torch.no_grad():
        for p in params:
            p.add_(0.1)  # move the adapters: the policy changes, the reference must not
        with reference(model, ref) as m:
            assert torch.allclose(m(torch.tensor([[5, 6, 7]])), base, atol=1e-5)
        assert not torch.allclose(model(torch.tensor([[5, 6, 7]])), base, atol=1e-3)


def lmstack_base_logits(path):
    import lmstack

    with torch.no_grad():
        return lmstack.load(path).model(torch.tensor([[5, 6, 7]]))
