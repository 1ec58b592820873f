"""Weight-only int8/int4 layers: GGUF Q4 codes recovered exactly, logits and perplexity of a quantised
model close to the dense one, quantised GGUF loading, and the paths that must refuse a quantised model."""

from __future__ import annotations

import copy

import gguf
import numpy as np
import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.infer.logprobs import perplexity
from lmstack.lm import LM, load
from lmstack.model.checkpoint import quantize_checkpoint
from lmstack.model.quant import (
    ACT_DTYPE,
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    is_quantized,
    quantize_int4,
    quantize_model,
    quantized_linear,
    weight_bytes,
)
from tests.model.test_gguf import _write_tiny

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_int4_recovers_a_gguf_files_codes(qtype):
    """Weights read from a Q4_0/Q4_1 block lie on one of the two grids quantize_int4 tries: the codes come
    back exactly, and the only loss is the block scale's fp16 -> bf16 rounding."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 96)).astype(np.float32) * rng.uniform(0.01, 3, (48, 1)).astype(np.float32)
    deq = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
    codes, scale, zero = quantize_int4(torch.from_numpy(deq))
    g = torch.from_numpy(deq).reshape(48, 3, 32)
    back = (codes.reshape(48, 3, 32).float() - 8) * scale[..., None] + zero[..., None]
    step, err = scale.abs()[..., None], (back - g).abs()
    assert (err < step / 4).all()  # no code is off: a wrong one is a whole step away
    # ... and what is left is bf16's rounding of the scale and the zero (a relative 2^-9 each).
    assert (err <= (8 * step + zero.abs()[..., None]) * 2**-8 + 1e-6).all()
    layer = Int4Linear(codes, scale, zero, None)
    assert torch.allclose(layer.dequantized(), back.reshape(48, 96), rtol=2**-7, atol=1e-3)


def test_int4_and_int8_layers_match_their_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    x = torch.randn(5, 3, 64)
    ref = lin(x)
    for bits, tol in ((8, 0.02), (4, 0.15)):
        m = quantized_linear(lin, bits)
        y = m(x.to(ACT_DTYPE)).float()
        assert y.shape == ref.shape
        rel = (y - ref).abs().max() / ref.abs().max()
        assert rel < tol, (bits, rel)


def test_int4_falls_back_to_int8_where_the_kernel_cannot_run():
    assert isinstance(quantized_linear(torch.nn.Linear(64, 40), 4), Int8Linear)  # 40 rows: not a multiple of 16
    assert isinstance(quantized_linear(torch.nn.Linear(48, 32), 4), Int8Linear)  # 48 inputs: not whole groups
    assert isinstance(quantized_linear(torch.nn.Linear(64, 32), 4), Int4Linear)
    assert type(quantized_linear(torch.nn.Linear(172, 32), 8)) is torch.nn.Linear  # the int8 kernel crashes there


@pytest.fixture(scope="module")
def trained_tiny(tiny_tokenizer):
    """A small Llama (widths the int4 kernel takes) fitted a little to text, so that perplexity means something."""
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from tests.conftest import _TEXT

    torch.manual_seed(0)
    tok = tiny_tokenizer
    cfg = preset("llama-tiny", vocab_size=tok.vocab_size, d_ff=192, max_seq_len=128, bos_token_id=tok.bos_id,
                 eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    lm = LM(Transformer(cfg), tok, {})
    ids = torch.tensor([lm.encode(" ".join(_TEXT[:5]))[:128]])
    opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(lm.model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    lm.model.eval()
    return lm, " ".join(_TEXT[5:10])


@pytest.mark.parametrize("bits,logit_tol,ppl_tol", [(8, 0.03, 0.01), (4, 0.08, 0.03)])
def test_quantized_tiny_model_logits_and_perplexity(trained_tiny, bits, logit_tol, ppl_tol):
    """Logits against the dense model in bf16 (the same activations: the quantisation's own error; relative L2
    measured 1.6% for int8, 4.7% for int4), perplexity against the dense fp32 model."""
    lm, text = trained_tiny
    q = LM(quantize_model(copy.deepcopy(lm.model), bits), lm.tokenizer, {})
    assert is_quantized(q.model) and isinstance(q.model.tok_emb, Int8Embedding)
    kind = Int4Linear if bits == 4 else Int8Linear
    assert all(isinstance(m, kind) for b in q.model.blocks for m in (b.attn.qkv, b.attn.o_proj, b.mlp.up, b.mlp.down))
    ids = torch.tensor([lm.encode(text)[:64]])
    with torch.inference_mode():
        ref, got = copy.deepcopy(lm.model).to(ACT_DTYPE)(ids).float(), q.model(ids).float()
    assert (got - ref).norm() / ref.norm() < logit_tol
    p_ref = perplexity(lm.model, [lm.encode(text)], max_length=64)["perplexity"]
    p_q = perplexity(q.model, [lm.encode(text)], max_length=64)["perplexity"]
    assert abs(p_q / p_ref - 1) < ppl_tol, (p_q, p_ref)
    assert weight_bytes(q.model) < weight_bytes(lm.model) / (3 if bits == 8 else 3.5)


def test_quantized_model_decodes_with_the_engine(tiny_lm):
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    q = quantize_model(copy.deepcopy(tiny_lm.model), 8)
    ids = [tiny_lm.encode("The small cat"), tiny_lm.encode("def add(a, b):")]
    sp = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    outs = generate(q, ids, sp, tiny_lm.tokenizer)
    assert [len(o.ids) for o in outs] == [6, 6]
    # Batched decoding (left padding, KV cache) equals one prompt at a time.
    assert [o.ids for o in outs] == [generate(q, [i], sp, tiny_lm.tokenizer)[0].ids for i in ids]


def test_gguf_auto_keeps_the_files_quantisation(tmp_path):
    path = tmp_path / "q.gguf"
    _write_tiny(path, quant=Q.Q4_0, tied=False)
    dense, q = load(path), load(path, quantize="auto")
    assert not is_quantized(dense.model)
    blk = q.model.blocks[0]
    assert all(isinstance(m, Int4Linear) for m in (blk.attn.qkv, blk.attn.o_proj, blk.mlp.up, blk.mlp.down))
    assert isinstance(q.model.lm_head, Int8Linear)  # 266 vocabulary rows: not a multiple of 16
    # The file's Q4_0 codes come back: each layer equals the dequantised weights up to bf16 scales.
    for name in ("attn.qkv", "attn.o_proj", "mlp.up", "mlp.down"):
        w = dense.model.blocks[1].get_submodule(name).weight
        got = q.model.blocks[1].get_submodule(name).dequantized()
        assert (got - w).abs().max() <= w.abs().max() * 2**-6
    # Logits of this toy (unit-variance random weights amplify any rounding: the dense model in bf16 is 5% off
    # its fp32 self) against the dense fp32 model: 2.8% relative error measured.
    ids = torch.tensor([dense.encode("hello world")])
    with torch.inference_mode():
        a, b = dense.model(ids), q.model(ids).float()
    assert (a - b).norm() / a.norm() < 0.05
    # A float file has nothing to keep quantised; int8 quantises it anyway.
    f32 = tmp_path / "f.gguf"
    _write_tiny(f32)
    assert not is_quantized(load(f32, quantize="auto").model)
    assert isinstance(load(f32, quantize="int8").model.blocks[0].mlp.up, Int8Linear)


def _k_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Random but well-formed K-quant blocks (256 weights each) with small fp16 super-block scales: gguf-py reads
    K-quants but cannot write them, and llama.cpp is not a test dependency."""
    size, fp16_at = {Q.Q4_K: (144, (0, 2)), Q.Q6_K: (210, (208,)), Q.Q5_K: (176, (0, 2))}[qtype]
    b = rng.integers(0, 256, (rows, cols // 256, size), dtype=np.uint8)
    for at in fp16_at:  # d (and dmin): values of about 0.01-0.1, as a trained matrix has
        d = rng.uniform(2e-5, 1e-4, (rows, cols // 256)).astype(np.float16)
        b[:, :, at:at + 2] = d.view(np.uint8).reshape(rows, cols // 256, 2)
    return b.reshape(rows, -1)


def test_k_quant_files_load_quantised(tmp_path):
    """llama.cpp's Q4_K_M mix (Q4_K matrices, Q6_K for attn_v and ffn_down; Q5_K here for ffn_up): `auto` keeps
    Q4_K as int4 groups of 32 and Q5_K/Q6_K as int8 rows; logits stay close to the dequantised model's."""
    rng = np.random.default_rng(1)

    def mix(name, value):
        if name == "token_embd.weight":
            return None  # float embeddings (the file may keep any type there)
        qtype = Q.Q6_K if ("attn_v" in name or "ffn_down" in name) else Q.Q5_K if "ffn_up" in name else Q.Q4_K
        return _k_blocks(*value.shape, qtype, rng), qtype

    path = tmp_path / "k.gguf"
    _write_tiny(path, quant=mix, hidden=256, ff=256)
    from lmstack.model.gguf import read_gguf

    types = read_gguf(str(path)).metadata["tensor_types"]
    assert types["Q4_K"] == 2 * 4 and types["Q5_K"] == 2 and types["Q6_K"] == 2 * 2  # per layer: q k o gate / up / v down
    dense, q = load(path), load(path, quantize="auto")
    blk = q.model.blocks[0]
    # A layer with a Q5_K or Q6_K part keeps 8 bits (int8 rows); Q4_K alone becomes int4 groups of 32.
    assert all(isinstance(m, Int8Linear) for m in (blk.attn.qkv, blk.mlp.up, blk.mlp.down))
    assert isinstance(blk.attn.o_proj, Int4Linear)
    for name in ("attn.qkv", "attn.o_proj", "mlp.up", "mlp.down"):
        w = dense.model.blocks[1].get_submodule(name).weight
        got = q.model.blocks[1].get_submodule(name).dequantized()
        assert (got - w).abs().max() <= w.abs().max() * 2**-7, name  # Q4_K's codes recovered, bf16 scales
    ids = torch.tensor([dense.encode("hello world")])
    with torch.inference_mode():
        a, b = dense.model(ids), q.model(ids).float()
    assert (a - b).norm() / a.norm() < 0.02  # 0.7% measured


def test_a_tied_int8_head_shares_the_embeddings_codes(tiny_lm):
    q = quantize_model(copy.deepcopy(tiny_lm.model), 8)
    assert q.lm_head.codes.data_ptr() == q.tok_emb.codes.data_ptr()


def test_training_and_saving_refuse_a_quantized_model(tiny_lm, tmp_path):
    from lmstack.train import common
    from lmstack.train.pretrain import PretrainConfig

    q = quantize_model(copy.deepcopy(tiny_lm.model), 8)
    with pytest.raises(LmstackError, match="quantised"):
        common.start_run(PretrainConfig(out=str(tmp_path / "run")), q, common.dist.DistInfo(), "pretrain")
    with pytest.raises(LmstackError, match="quantised"):
        LM(q, tiny_lm.tokenizer, {}).save(tmp_path / "m")
    with pytest.raises(LmstackError, match="--quantize 'int3'"):
        quantize_checkpoint(tiny_lm.model, "int3")


def test_cli_generate_quantized(tiny_ckpt, capsys, monkeypatch):
    import lmstack.cli.infer as infer
    from lmstack.cli import main

    loaded = []
    monkeypatch.setattr(infer, "load", lambda *a, **kw: loaded.append(load(*a, **kw)) or loaded[-1])
    assert main(["generate", "--model", str(tiny_ckpt), "--prompt", "The small cat", "--max-new-tokens", "4",
                 "--temperature", "0", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.startswith("The small cat")
    assert isinstance(loaded[0].model.blocks[0].attn.qkv, Int8Linear)  # --quantize reached the loader
