"""`lmstack export gguf`: a checkpoint written as GGUF (llama.cpp's names, Q/K permutation, tokenizer and chat
template in the metadata) reads back with the checkpoint's logits and tokenizer. llama.cpp running the file is a
benchmark-side check (bench/gguf_export.py)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGUFReader

import lmstack
from lmstack.errors import LmstackError
from lmstack.model.gguf import field_value, write_gguf

TEXTS = ["The small cat sat on the mat.", "고양이는 작다.", "def add(a, b):\n    return a + b", "<|im_start|>user\nhi"]
# Relative error of the read-back logits against the original checkpoint's (max |difference| / max |logit|), for
# a model at a trained model's weight scale (init_std 0.02). Measured: f16 1.7e-4, q8_0 3.9e-3, q4_0 7.9e-2.
TOLERANCE = {"f16": 1e-3, "q8_0": 1e-2, "q4_0": 0.15}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _rounded(lm, quantize: str):
    """The checkpoint with each 2-D weight rounded as the export stores it (f16, or GGUF's Q8_0/Q4_0 blocks along
    each row, which the q/k row permutation does not cut): what the file must read back as, exactly."""
    import copy

    from gguf import GGMLQuantizationType, quants

    qtype = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}.get(quantize)
    out = copy.deepcopy(lm)
    with torch.no_grad():
        for name, p in out.model.named_parameters():
            if p.dim() == 2:
                x = p.numpy()
                if qtype is not None and x.shape[-1] % 32 == 0 and name != "pos_emb.weight":
                    p.copy_(torch.from_numpy(quants.dequantize(quants.quantize(x, qtype), qtype)))
                else:
                    p.copy_(p.half().float())
    return out


def _model(tok, family: str, init_std: float):
    from lmstack.lm import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = preset(f"{family}-tiny", vocab_size=tok.vocab_size, max_seq_len=128, bos_token_id=tok.bos_id,
                 eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, init_std=init_std)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # norms and biases away from 1 and 0, so the test sees them
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return LM(model, tok, {})


@pytest.fixture(scope="module")
def gpt2_ckpt(tiny_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    _model(tiny_tokenizer, "gpt2", 0.3).save(path)
    return path


@pytest.mark.parametrize("family,quantize", [("llama", "f16"), ("llama", "q8_0"), ("llama", "q4_0"),
                                             ("gpt2", "f16"), ("gpt2", "q8_0")])
def test_exported_gguf_reads_back_with_the_checkpoints_logits(tiny_ckpt, gpt2_ckpt, tmp_path, family, quantize):
    ckpt = tiny_ckpt if family == "llama" else gpt2_ckpt
    out = tmp_path / f"tiny-{quantize}.gguf"
    p = subprocess.run([sys.executable, "-m", "lmstack", "export", "gguf", str(ckpt), str(out),
                        "--quantize", quantize], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "llama-cli -m" in p.stdout
    src, back = lmstack.load(ckpt), lmstack.load(out, quantize="none")
    assert back.config.arch == src.config.arch
    ids = [src.tokenizer.encode(t) for t in TEXTS]
    # Exactly the checkpoint with its weights rounded as stored: names, layouts and the permutation are right.
    want = _rounded(src, quantize)
    for x in ids:
        assert _rel(back(x), want(x)) < 1e-5, quantize
    # Within the stated tolerance of the unrounded checkpoint, at a trained model's weight scale.
    scaled = _model(src.tokenizer, family, 0.02)
    again = lmstack.load(write_gguf(scaled, tmp_path / "scaled.gguf", quantize), quantize="none")
    assert max(_rel(again(x), scaled(x)) for x in ids) < TOLERANCE[quantize]
    # The tokenizer: same ids for the same text, same specials and chat template.
    assert [back.tokenizer.encode(t) for t in TEXTS] == ids
    assert (back.tokenizer.bos_token, back.tokenizer.eos_token) == (src.tokenizer.bos_token, src.tokenizer.eos_token)
    assert back.tokenizer.chat_template == src.tokenizer.chat_template
    # What llama.cpp reads: the architecture, the weight types, the tokenizer's kind and split.
    meta = {k: field_value(f) for k, f in GGUFReader(str(out)).fields.items() if not k.startswith("GGUF.")}
    assert meta["general.architecture"] == family and meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight" if family == "llama" else "blk.0.attn_qkv.weight"] == \
        {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quantize]
    if quantize != "f16":  # lmstack's auto load keeps the quantised weights quantised
        blk = lmstack.load(out, quantize="auto").model.blocks[0]
        assert type(blk.attn.qkv).__name__ == {"q8_0": "Int8Linear", "q4_0": "Int4Linear"}[quantize]


def test_q_and_k_rows_are_permuted_as_llama_cpp_expects(tiny_ckpt, tmp_path):
    """The file holds llama.cpp's interleaved q/k rows, not HF's rotate-half ones: the reader's inverse applied to
    them gives the checkpoint's q rows back exactly (f16-exact values aside)."""
    from lmstack.model.gguf import _unpermute_rope_rows
    from lmstack.model.hf import state_to_hf

    src = lmstack.load(tiny_ckpt)
    out = write_gguf(src, tmp_path / "t.gguf", "f16")
    cfg = src.config
    q_hf = state_to_hf(src.model.state_dict(), cfg)["model.layers.0.self_attn.q_proj.weight"].numpy()
    t = next(t for t in GGUFReader(str(out)).tensors if t.name == "blk.0.attn_q.weight")
    stored = np.asarray(t.data, dtype=np.float32).reshape(q_hf.shape)
    assert not np.allclose(stored, q_hf.astype(np.float16).astype(np.float32))  # permuted on disk
    assert np.array_equal(_unpermute_rope_rows(stored, cfg.n_head), q_hf.astype(np.float16).astype(np.float32))


def test_unsupported_exports_fail_in_one_line_and_write_nothing(tmp_path, tiny_ckpt):
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer

    src = lmstack.load(tiny_ckpt)
    qwen = lmstack.lm.LM(Transformer(preset("llama-tiny", arch="qwen2", qkv_bias=True,
                                            vocab_size=src.config.vocab_size)), src.tokenizer, {})
    with pytest.raises(LmstackError, match="qwen2 models are not supported"):
        write_gguf(qwen, tmp_path / "g.gguf")
    with pytest.raises(LmstackError, match="--quantize 'q2_k'"):
        write_gguf(src, tmp_path / "q.gguf", "q2_k")
    erf = lmstack.lm.LM(Transformer(preset("gpt2-tiny", activation="gelu", vocab_size=src.config.vocab_size)),
                        src.tokenizer, {})
    with pytest.raises(LmstackError, match="activation 'gelu' is not supported"):
        write_gguf(erf, tmp_path / "e.gguf")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LmstackError, match="activation 'gelu' is not one of silu for llama"):
        preset("llama-tiny", activation="gelu")
