"""The policy and its reference: with LoRA the reference is the adapters switched off (no second copy)."""

import torch

from lmstack.lm import load
from lmstack.train.policy import load_policy, reference
from lmstack.train.prefdata import PrefConfig


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
    with torch.no_grad():
        return load(path).model(torch.tensor([[5, 6, 7]]))
