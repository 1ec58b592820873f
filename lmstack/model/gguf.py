"""Read a llama.cpp GGUF file of a Llama-family model into Hugging Face form, and write one (`write_gguf`).

`read_gguf` returns a transformers `LlamaConfig`-compatible dict, a state dict under HF tensor
names and layouts, a `tokenizers.Tokenizer` rebuilt from the vocabulary metadata, the special
tokens and the chat template. Every tensor is dequantised, so the result is an ordinary dense model.

Two things differ from a naive copy and are undone here:
- llama.cpp's converter permutes the rows of q_proj/k_proj from HF's rotate-half RoPE layout to
  the interleaved one its kernels use; `_unpermute_rope_rows` applies the inverse.
- GGUF lists tensor dims fastest-first (ggml's `ne`), i.e. reversed from PyTorch's.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGMLQuantizationType,
    GGUFReader,
    GGUFValueType,
    GGUFWriter,
    LlamaFileType,
    RopeScalingType,
    quants,
)
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from lmstack.errors import LmstackError
from lmstack.model.hf import state_to_hf

# Architectures whose tensors follow Llama's naming and layout. Mistral and Mixtral-free Mistral
# derivatives are written by llama.cpp as "llama" too. Qwen2 is not here: it has q/k/v biases but
# no o_proj bias, which a LlamaConfig cannot express, and llama.cpp does not permute its Q/K.
SUPPORTED_ARCHITECTURES = ("llama", "gpt2")

# GGUF per-layer tensor name -> HF per-layer module path.
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# GPT-2 (llama.cpp's "gpt2" architecture): GGUF tensor -> transformers' GPT2LMHeadModel module path.
_GPT2_LAYER = {"attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
               "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}
_GPT2_GLOBAL = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
                "output": "lm_head"}

# llama_token_type values in tokenizer.ggml.token_type.
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4


@dataclass
class GGUFContents:
    hf_config: dict
    state_dict: dict[str, torch.Tensor]
    tokenizer: object  # tokenizers.Tokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    metadata: dict = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)  # HF tensor name -> GGUF type (Q4_1, F32, ...)


# --------------------------------------------------------------------------------------- metadata


def field_value(reader_field):
    """A `gguf.ReaderField` as a Python value: str, int, float, bool, or a list of those.

    The reader keeps raw parts: `field.data` holds the indices of the parts that carry values, a
    string is a uint8 array of its UTF-8 bytes, and every scalar is a one-element array.
    """
    types = reader_field.types
    parts = [reader_field.parts[i] for i in reader_field.data]
    if types[0] == GGUFValueType.ARRAY:
        element = types[1] if len(types) > 1 else None
        if element == GGUFValueType.STRING:
            return [bytes(p).decode("utf-8") for p in parts]
        if element == GGUFValueType.ARRAY:
            return None  # nested arrays: no key we read uses them
        if element is None or not parts:  # an empty array may carry no element type
            return []
        values = np.concatenate(parts).tolist()
        return [bool(v) for v in values] if element == GGUFValueType.BOOL else values
    if types[0] == GGUFValueType.STRING:
        return bytes(parts[0]).decode("utf-8")
    value = parts[0][0]
    if types[0] == GGUFValueType.FLOAT32:
        # Via str so 1e-5 stored as float32 comes back as 1e-05, not 9.99999974e-06.
        return float(str(value))
    return bool(value) if types[0] == GGUFValueType.BOOL else value.item()


def _read_metadata(reader) -> dict:
    # "GGUF.*" are the header pseudo-fields (version, counts), not key/value metadata.
    return {key: field_value(f) for key, f in reader.fields.items() if not key.startswith("GGUF.")}


def _open(path):
    if not os.path.exists(path):
        raise LmstackError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise LmstackError(f"{path}: not a file")
    try:
        return GGUFReader(path, "r")
    except Exception as e:  # the reader raises ValueError, struct/numpy errors, ... on bad input
        cause = " ".join(str(e).split()) or type(e).__name__
        raise LmstackError(f"{path}: not a valid GGUF file ({cause})") from e


# ----------------------------------------------------------------------------------------- config


def _hf_config(path, meta: dict, arch: str, vocab_size: int, tied: bool) -> dict:
    def get(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    def need(key):
        value = get(key)
        if value is None:
            raise LmstackError(f"{path}: GGUF metadata lacks '{arch}.{key}'")
        if isinstance(value, list):  # per-layer values (e.g. OpenELM); a LlamaConfig has one
            raise LmstackError(f"{path}: GGUF metadata '{arch}.{key}' varies per layer; not supported")
        return value

    hidden = need("embedding_length")
    n_head = need("attention.head_count")
    n_kv = get("attention.head_count_kv") or n_head
    head_dim = get("attention.key_length") or hidden // n_head
    rope_dim = get("rope.dimension_count") or head_dim
    if rope_dim != head_dim:
        raise LmstackError(
            f"{path}: partial rotary embedding ({rope_dim} of {head_dim} dims) is not supported"
        )

    tok = lambda key: meta.get(f"tokenizer.ggml.{key}")
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length"),
        "num_hidden_layers": need("block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        # llama.cpp's default when the key is absent, as for the original Llama.
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_scaling": _rope_scaling(get),
        "tie_word_embeddings": tied,
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }


def _gpt2_config(path, meta: dict, vocab_size: int) -> dict:
    def need(key):
        value = meta.get(f"gpt2.{key}")
        if value is None:
            raise LmstackError(f"{path}: GGUF metadata lacks 'gpt2.{key}'")
        return value

    tok = lambda key: meta.get(f"tokenizer.ggml.{key}")
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size,
            "n_embd": need("embedding_length"), "n_layer": need("block_count"), "n_head": need("attention.head_count"),
            "n_inner": need("feed_forward_length"), "n_positions": need("context_length"),
            "layer_norm_epsilon": float(meta.get("gpt2.attention.layer_norm_epsilon", 1e-5)),
            "activation_function": "gelu_new", "tie_word_embeddings": True,
            "bos_token_id": tok("bos_token_id"), "eos_token_id": tok("eos_token_id"),
            "pad_token_id": tok("padding_token_id")}


def _gpt2_name(path, gguf_name: str) -> str:
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _GPT2_GLOBAL:
        return f"{_GPT2_GLOBAL[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _GPT2_LAYER:
        return f"transformer.h.{parts[1]}.{_GPT2_LAYER[parts[2]]}.{suffix}"
    raise LmstackError(f"{path}: unknown GGUF tensor '{gguf_name}' for a GPT-2 model")


def _rope_scaling(get) -> dict | None:
    kind = get("rope.scaling.type")
    factor = get("rope.scaling.factor")
    if kind is None and get("rope.scale_linear") is not None:  # older files
        kind, factor = "linear", get("rope.scale_linear")
    if kind in (None, "none") or factor is None:
        return None
    scaling = {"rope_type": kind, "factor": float(factor)}
    original = get("rope.scaling.original_context_length")
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


# ---------------------------------------------------------------------------------------- tensors


def _hf_name(path, gguf_name: str) -> str:
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        stem, suffix = gguf_name, ""
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    if stem == "rope_freqs":
        # Llama 3.1-style rope scaling stored as a factor tensor rather than config parameters.
        raise LmstackError(f"{path}: GGUF tensor 'rope_freqs' (llama3 rope scaling) is not supported")
    raise LmstackError(f"{path}: unknown GGUF tensor '{gguf_name}' for a Llama model")


def _unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute(w, n_head)` on a q/k projection of shape [out, in].

    The converter does `w.reshape(n_head, 2, d // 2, in).swapaxes(1, 2)`: within each head the
    two rotate-half halves become interleaved pairs (the GPT-J RoPE layout ggml uses). Reading the
    rows back as (n_head, d // 2, 2) and swapping again restores HF's (n_head, 2, d // 2).
    """
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(path, tensor) -> np.ndarray:
    try:
        # np.asarray drops the memmap subclass (no copy): dequantize slices the data block by
        # block, and memmap's per-slice bookkeeping otherwise doubles the time.
        values = dequantize(np.asarray(tensor.data), tensor.tensor_type)
    except NotImplementedError as e:
        raise LmstackError(
            f"{path}: tensor '{tensor.name}' has type {tensor.tensor_type.name}, which gguf cannot dequantize"
        ) from e
    # tensor.shape is ggml's ne (fastest dim first); PyTorch wants it reversed, i.e. [out, in].
    shape = tuple(int(d) for d in reversed(tensor.shape))
    return values.reshape(shape)


def _gpt2_state_dict(path, reader, dtype) -> dict[str, torch.Tensor]:
    """GPT-2's tensors under transformers' names, its Conv1D weights [in, out] (GGUF holds them [out, in])."""
    state = {}
    for tensor in reader.tensors:
        name = _gpt2_name(path, tensor.name)
        values = _dequantize(path, tensor)
        if values.ndim == 2 and ".h." in name:
            values = values.T
        state[name] = torch.from_numpy(np.array(values, dtype=np.float32)).to(dtype)
    return state


def _state_dict(path, reader, config: dict, dtype) -> dict[str, torch.Tensor]:
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    state = {}
    for tensor in reader.tensors:
        name = _hf_name(path, tensor.name)
        values = _dequantize(path, tensor)
        if name.endswith("self_attn.q_proj.weight"):
            values = _unpermute_rope_rows(values, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            values = _unpermute_rope_rows(values, n_kv)
        # np.array copies: F32 data is a view into the read-only memory map.
        state[name] = torch.from_numpy(np.array(values, dtype=np.float32)).to(dtype)

    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    for i in range(config["num_hidden_layers"]):
        expected.update(f"model.layers.{i}.{module}.weight" for module in _LAYER_TENSORS.values())
    if not config["tie_word_embeddings"]:
        expected.add("lm_head.weight")
    missing = sorted(expected - state.keys())
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise LmstackError(f"{path}: GGUF file lacks tensors {shown}")
    extra = sorted(state.keys() - expected)
    if extra:  # e.g. biases or layers beyond block_count: the config would not hold them
        raise LmstackError(f"{path}: GGUF tensors {', '.join(extra[:5])} do not fit a Llama model")
    return state


# -------------------------------------------------------------------------------------- tokenizer

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> how text is split before BPE, after llama.cpp's llama-vocab.cpp. "digits"
# means each digit on its own, then GPT-2's regex (StarCoder-style vocabularies such as SmolLM's).
_PRE_SPLITS = {
    "default": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "digits",
    "starcoder": "digits",
    "refact": "digits",
    "command-r": "digits",
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "tekken": _TEKKEN_SPLIT,
}

# llama.cpp matches these whole words against the vocabulary before merging (HF: ignore_merges).
_IGNORE_MERGES = {"llama-bpe", "llama3", "llama-v3", "falcon3", "dbrx", "smaug-bpe"}


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level vocabularies are spelled in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _pre_tokenizer(pre: str | None, path):
    split = _PRE_SPLITS.get(pre or "default")
    if split is None:
        # Guessing is better than refusing a file, but ids may differ from the original model.
        warnings.warn(f"{path}: unknown GGUF pre-tokenizer '{pre}', using GPT-2's split", stacklevel=3)
        split = "gpt2"
    if split == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if split == "digits":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _build_tokenizer(path, meta: dict):
    kind = meta.get("tokenizer.ggml.model")
    if kind == "llama":
        raise LmstackError(f"{path}: GGUF tokenizer model 'llama' (SentencePiece) is not supported yet")
    if kind != "gpt2":
        raise LmstackError(
            f"{path}: GGUF tokenizer model {kind!r} is not supported (only 'gpt2' byte-level BPE)"
        )
    tokens = meta.get("tokenizer.ggml.tokens")
    merges = meta.get("tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise LmstackError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    token_types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    pre = meta.get("tokenizer.ggml.pre")

    # Ordinary tokens must be spelled in the byte alphabet for BPE to find them; a few converters
    # write some as plain text, so respell those. Control/user-defined tokens keep their text:
    # they are matched whole in the input, never reached through merges.
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    vocab = {}
    for index, (token, kind_) in enumerate(zip(tokens, token_types)):
        if kind_ not in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED) and not set(token) <= alphabet:
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, index)
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]

    tokenizer = Tokenizer(
        models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False, ignore_merges=pre in _IGNORE_MERGES)
    )
    tokenizer.pre_tokenizer = _pre_tokenizer(pre, path)
    tokenizer.decoder = decoders.ByteLevel()

    control = [t for t, k in zip(tokens, token_types) if k == _TOKEN_CONTROL]
    user = [t for t, k in zip(tokens, token_types) if k == _TOKEN_USER_DEFINED]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    # llama.cpp adds BOS/EOS around the prompt when the file says so (Llama 3 does, SmolLM not).
    bos, eos = _token(meta, tokens, "bos_token_id"), _token(meta, tokens, "eos_token_id")
    prefix = [bos] if meta.get("tokenizer.ggml.add_bos_token") and bos else []
    suffix = [eos] if meta.get("tokenizer.ggml.add_eos_token") and eos else []
    if prefix or suffix:
        single = " ".join([*prefix, "$A", *suffix])
        pair = " ".join([*prefix, "$A:0", *suffix, *prefix, "$B:1", *suffix])
        specials = [(t, tokenizer.token_to_id(t)) for t in dict.fromkeys(prefix + suffix)]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=specials
        )
    return tokenizer


def _token(meta: dict, tokens: list[str], key: str) -> str | None:
    index = meta.get(f"tokenizer.ggml.{key}")
    return tokens[index] if index is not None and 0 <= index < len(tokens) else None


# ------------------------------------------------------------------------------------------- main


def read_gguf(path, dtype: torch.dtype = torch.float32) -> GGUFContents:
    """Read a Llama-architecture GGUF file: config, dequantised HF state dict, tokenizer."""
    path = os.fspath(path)
    reader = _open(path)
    meta = _read_metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise LmstackError(
            f"{path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    names = {t.name for t in reader.tensors}
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise LmstackError(f"{path}: GGUF file lacks tensor 'token_embd.weight'")
    # The embedding's row count is the vocabulary the model was trained with; ne is reversed.
    vocab_size = int(embed.shape[-1])
    tokenizer = _build_tokenizer(path, meta)
    if arch == "gpt2":
        config, state, to_hf = _gpt2_config(path, meta, vocab_size), _gpt2_state_dict(path, reader, dtype), _gpt2_name
    else:
        config = _hf_config(path, meta, arch, vocab_size, tied="output.weight" not in names)
        state, to_hf = _state_dict(path, reader, config, dtype), _hf_name

    tokens = meta["tokenizer.ggml.tokens"]
    metadata = {
        key.removeprefix("general."): value for key, value in meta.items() if key.startswith("general.")
    }
    metadata["tensor_types"] = dict(Counter(t.tensor_type.name for t in reader.tensors))
    file_type = metadata.get("file_type")
    if isinstance(file_type, int):

        try:
            metadata["file_type_name"] = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            pass
    return GGUFContents(
        hf_config=config,
        state_dict=state,
        tokenizer=tokenizer,
        bos_token=_token(meta, tokens, "bos_token_id"),
        eos_token=_token(meta, tokens, "eos_token_id"),
        pad_token=_token(meta, tokens, "padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        metadata=metadata,
        tensor_types={to_hf(path, t.name): t.tensor_type.name for t in reader.tensors},
    )


# ------------------------------------------------------------------------------------------ write

EXPORT_TYPES = ("f16", "q8_0", "q4_0")
_EXPORT_QTYPES = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}
_FILE_TYPES = {"f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}
_TOKEN_NORMAL = 1


def _permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter `permute`: HF's rotate-half q/k rows -> the interleaved layout (inverse of
    `_unpermute_rope_rows`)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf_name: str) -> str:
    stem, _, suffix = hf_name.rpartition(".")
    for gg, hf in _GLOBAL_TENSORS.items():
        if stem == hf:
            return f"{gg}.{suffix}"
    parts = stem.split(".")  # model.layers.N.<module path>
    module = ".".join(parts[3:])
    gg = next(g for g, h in _LAYER_TENSORS.items() if h == module)
    return f"blk.{parts[2]}.{gg}.{suffix}"


def _pre_name(backend) -> str:
    """The tokenizer.ggml.pre name whose split llama.cpp (and `_pre_tokenizer`) applies, read off the tokenizer's
    own pre-tokenizer; one this module cannot name is refused."""
    pre = json.loads(backend.to_str()).get("pre_tokenizer") or {}
    seq = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in seq]
    if kinds == ["ByteLevel"] and seq[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and seq[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        regex = (seq[0].get("pattern") or {}).get("Regex")
        for name, split in (("llama-bpe", _LLAMA3_SPLIT), ("qwen2", _QWEN2_SPLIT), ("tekken", _TEKKEN_SPLIT)):
            if regex == split:
                return name
    raise LmstackError(f"GGUF export: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) has no "
                       "llama.cpp name (supported: GPT-2's byte-level split, SmolLM's digits, Llama 3, Qwen 2)")


def _vocab(tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their llama.cpp token types, BPE merges) of a byte-level BPE `lmstack` tokenizer, padded to the
    model's vocabulary with unused entries."""
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    if spec.get("model", {}).get("type") != "BPE" or spec.get("decoder", {}).get("type") != "ByteLevel":
        raise LmstackError("GGUF export: only byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM, lmstack's "
                           "own) can be written; this one is " + str(spec.get("model", {}).get("type")))
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size  # UNUSED
    for text, i in backend.get_vocab(with_added_tokens=True).items():
        if i < vocab_size:
            tokens[i] = text
            a = added.get(i)
            types[i] = _TOKEN_NORMAL if a is None else (_TOKEN_CONTROL if a.get("special") else _TOKEN_USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def write_gguf(lm, path, quantize: str = "f16", name: str | None = None) -> Path:
    """Write a Llama-family or GPT-2 checkpoint (an `lmstack.load` result) as a GGUF file llama.cpp runs: the
    tensors under llama.cpp's names (Llama's q/k rows permuted as its converter does), 2-D weights as F16 or
    quantised (q8_0, q4_0: rows whose length is a multiple of 32; others F16), norms and biases F32; the byte-level
    BPE tokenizer, its special tokens and chat template in the metadata. Written to a temporary name and renamed:
    a failed export leaves nothing."""
    if quantize not in EXPORT_TYPES:
        raise LmstackError(f"GGUF export: --quantize {quantize!r}: use one of {', '.join(EXPORT_TYPES)}")
    cfg = lm.config
    if not cfg.is_gpt2 and (cfg.arch != "llama" or cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias):
        raise LmstackError(f"GGUF export: {cfg.arch} models{' with biases' if cfg.arch == 'llama' else ''} are not "
                           "supported (the Llama family without biases, and GPT-2, are)")
    if cfg.is_gpt2 and cfg.activation != "gelu_tanh":
        raise LmstackError(f"GGUF export: activation {cfg.activation!r} is not supported (llama.cpp's gpt2 graph "
                           "computes GELU's tanh form, gelu_tanh)")
    if cfg.rope_scaling and cfg.rope_scaling.get("rope_type", cfg.rope_scaling.get("type")) != "linear":
        raise LmstackError(f"GGUF export: rope scaling {cfg.rope_scaling} is not supported (linear is)")
    if lm.tokenizer is None:
        raise LmstackError("GGUF export: the checkpoint has no tokenizer; llama.cpp needs one in the file")
    tok = lm.tokenizer
    tokens, types, merges = _vocab(tok, cfg.vocab_size)
    pre = _pre_name(tok.backend)
    sd = {k: v.detach().float().cpu() for k, v in lm.model.state_dict().items()}
    tensors = _gpt2_tensors(sd, cfg) if cfg.is_gpt2 else _llama_tensors(sd, cfg)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    arch = "gpt2" if cfg.is_gpt2 else "llama"
    w = GGUFWriter(str(tmp), arch)
    w.add_name(name or path.stem)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.d_model)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.d_ff)
    w.add_head_count(cfg.n_head)
    if cfg.is_gpt2:
        w.add_layer_norm_eps(float(cfg.norm_eps))
    else:
        w.add_head_count_kv(cfg.n_kv_head)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(float(cfg.rope_theta))
        if cfg.rope_scaling:
            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(_FILE_TYPES[quantize])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for key, tid in (("bos", tok.bos_id), ("eos", tok.eos_id), ("pad", tok.pad_id)):
        if tid is not None:
            getattr(w, f"add_{key}_token_id")(int(tid))
    w.add_add_bos_token(bool(tok.add_bos))
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)
    for gname, x in tensors:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            w.add_tensor(gname, x)
        elif quantize in _EXPORT_QTYPES and x.shape[-1] % 32 == 0 and gname != "position_embd.weight":
            q = _EXPORT_QTYPES[quantize]
            w.add_tensor(gname, quants.quantize(x, q), raw_dtype=q)
        else:
            w.add_tensor(gname, x.astype(np.float16))
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _llama_tensors(sd: dict, cfg) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, [out, in] array) of a Llama model, q/k rows permuted as llama.cpp's converter does."""
    out = []
    for hf_name, t in state_to_hf(sd, cfg).items():
        if hf_name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        x = t.numpy()
        if hf_name.endswith("q_proj.weight"):
            x = _permute_rope_rows(x, cfg.n_head)
        elif hf_name.endswith("k_proj.weight"):
            x = _permute_rope_rows(x, cfg.n_kv_head)
        out.append((_gguf_name(hf_name), x))
    return out


_GPT2_OURS = {"norm1": "attn_norm", "attn.qkv": "attn_qkv", "attn.o_proj": "attn_output", "norm2": "ffn_norm",
              "mlp.up": "ffn_up", "mlp.down": "ffn_down"}


def _gpt2_tensors(sd: dict, cfg) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, array) of a GPT-2 model: lmstack's linear weights are already [out, in], as llama.cpp wants."""
    out = [("token_embd.weight", sd["tok_emb.weight"].numpy()), ("position_embd.weight", sd["pos_emb.weight"].numpy())]
    for i in range(cfg.n_layer):
        for ours, theirs in _GPT2_OURS.items():
            for kind in ("weight", "bias"):
                out.append((f"blk.{i}.{theirs}.{kind}", sd[f"blocks.{i}.{ours}.{kind}"].numpy()))
    out += [("output_norm.weight", sd["norm_f.weight"].numpy()), ("output_norm.bias", sd["norm_f.bias"].numpy())]
    if not cfg.tie_embeddings:
        out.append(("output.weight", sd["lm_head.weight"].numpy()))
    return out
