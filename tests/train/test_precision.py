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
