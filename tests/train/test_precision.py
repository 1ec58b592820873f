"""--precision auto: bf16 autocast where the hardware multiplies bf16 natively (a GPU, or a CPU with
AVX-512 BF16 or AMX), fp32 elsewhere; RoPE's frequencies stay fp32 in a bf16 model."""

from __future__ import annotations

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.train import common


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    except OSError:
        return None


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_auto_follows_the_cpus_bf16_units(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert common.uses_bf16("auto", "cpu") is expected
    assert common.uses_bf16("auto", "cuda") is True
    assert common.uses_bf16("fp32", "cuda") is False and common.uses_bf16("bf16", "cpu") is True


def test_auto_is_taken_on_this_machine_when_its_cpu_has_the_units(tmp_path):
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert common.cpu_runs_bf16() is native
    # ... and a training run takes it: its autocast is bf16 exactly there.
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.train.pretrain import PretrainConfig

    run = common.start_run(PretrainConfig(out=str(tmp_path), quiet=True, bars=False),
                           Transformer(preset("llama-tiny")), common.dist.DistInfo(), "pretrain")
    assert run.use_bf16 is native
    with run.autocast():
        dtype = torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype
    run.log.close()
    assert dtype == (torch.bfloat16 if native else torch.float32)


def test_an_unknown_precision_is_an_error():
    with pytest.raises(LmstackError, match="--precision 'fp8'"):
        common.uses_bf16("fp8", "cpu")


def test_rope_frequencies_stay_fp32_in_a_bf16_model():
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer, rope_inv_freq

    m = Transformer(preset("llama-tiny")).to(torch.bfloat16)
    assert m.inv_freq.dtype == torch.float32 and torch.equal(m.inv_freq, rope_inv_freq(m.cfg))


@pytest.mark.parametrize("T,grad,autocast,expected", [
    (64, True, True, torch.float32), (300, True, True, torch.bfloat16), (64, False, True, torch.float32),
    (64, False, False, torch.bfloat16)])
def test_bf16_autocast_attends_in_fp32_over_short_sequences_on_a_cpu(monkeypatch, T, grad, autocast, expected):
    """Under bf16 autocast on a CPU, attention runs in fp32 up to 256 keys (PyTorch's CPU flash kernel's bf16
    backward is slower there), in bf16 beyond; with or without a backward (a reference pass must round as the
    training pass it is compared with); a model with bf16 weights outside autocast keeps the bf16 kernel; the
    step still trains."""
    import torch.nn.functional as F

    from lmstack.model.config import preset
    from lmstack.model.transformer import FP32_ATTENTION_MAX_KEYS, Transformer

    assert FP32_ATTENTION_MAX_KEYS == 256
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    m = Transformer(preset("llama-tiny", max_seq_len=512)).train()
    if not autocast:
        m = m.eval().to(torch.bfloat16)
    x = torch.randint(0, m.cfg.vocab_size, (2, T))
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = m(x)
    # The dtype the kernel computes in: autocast casts its inputs to bf16 (RoPE leaves q and k in fp32 before it),
    # so the fp32 kernel must run outside autocast, on fp32 inputs.
    assert len(seen) == m.cfg.n_layer, seen
    for q, k, v, in_autocast in seen:
        if expected == torch.float32:
            assert (q, k, v, in_autocast) == (torch.float32, torch.float32, torch.float32, False), seen
        else:
            assert in_autocast or (q, k, v) == (torch.bfloat16,) * 3, seen
    assert logits.dtype == torch.bfloat16
    if grad:
        logits.float().logsumexp(-1).mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
        # The same step in fp32 throughout gives the same gradients up to bf16 rounding.
        g16 = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        m(x).logsumexp(-1).mean().backward()
        for a, p in zip(g16, m.parameters()):
            assert torch.allclose(a, p.grad, atol=2e-2 * p.grad.abs().max().item() + 1e-6), p.shape
