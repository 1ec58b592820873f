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


def test_rollout_model_is_a_quantised_copy_with_lora_merged(tiny_ckpt, tmp_path):
    """--rollout-quantize: the engine samples from an int8 copy of the current weights (adapters merged in);
    the policy being trained stays dense and trainable, and the copy computes the same function within int8's
    rounding."""
    import pytest

    from lmstack.errors import LmstackError
    from lmstack.model.quant import Int8Linear, is_quantized
    from lmstack.train.lora import adapters_off
    from lmstack.train.policy import generation_model, rollout_model

    cfg = PrefConfig(model=str(tiny_ckpt), out=str(tmp_path), lora=True, lora_r=4, lora_dropout=0.0, seq_len=128)
    torch.manual_seed(0)  # LoRA's A is drawn from torch's global generator: the same adapters whatever ran before
    _, model, params, _ = load_policy(cfg, "cpu")
    with torch.no_grad():
        for p in params:
            p.add_(0.05)  # the adapters moved: the copy must carry them
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        dense = generation_model(model)(x).float()
        q = rollout_model(model, "int8")
        quant = q(x).float()
    assert is_quantized(q) and any(isinstance(m, Int8Linear) for m in q.modules())
    assert not is_quantized(model) and all(p.requires_grad for p in params)
    with torch.no_grad(), adapters_off(model) as base:
        without = generation_model(base)(x).float()
    # int8 weights with bf16 activations on this high-variance random model: 5-15% of the logits' norm (seeds
    # 0-5); the adapters move them by 75-125%, so a copy without them would be far off.
    err = (quant - dense).norm()
    assert err < 0.25 * dense.norm() and err < 0.3 * (quant - without).norm(), err
    assert rollout_model(model, "none") is generation_model(model)
    with pytest.raises(LmstackError, match=r"--rollout-quantize must be one of none, int8, int4"):
        rollout_model(model, "int3")
