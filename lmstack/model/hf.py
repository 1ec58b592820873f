"""Hugging Face interop: `config.json` fields and tensor names/layouts, both ways.

lmstack checkpoints are Hugging Face model folders, so this file is the only place that knows the
difference between our module names (fused q/k/v and gate/up, nn.Linear layouts) and theirs.
"""

from __future__ import annotations

import torch

from lmstack.errors import LmstackError
from lmstack.model.config import ModelConfig

HF_ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
# transformers' names of GPT-2's GELU forms: the tanh approximations (gelu_fast is a second tanh formula, equal to
# float rounding) and the exact erf form.
_ACTS_GPT2 = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


def _rope_fields(d: dict) -> tuple[float, dict | None]:
    # transformers 5 nests RoPE under rope_parameters; older configs use rope_theta + rope_scaling.
    params = d.get("rope_parameters") or {}
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    scaling = d.get("rope_scaling")
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(theta), scaling


def config_from_hf(d: dict, where: str = "config.json") -> ModelConfig:
    mt = d.get("model_type")
    if mt not in HF_ARCHITECTURES:
        raise LmstackError(
            f"{where}: unsupported model_type {mt!r} (supported: {', '.join(HF_ARCHITECTURES)})"
        )
    common = dict(
        vocab_size=d["vocab_size"],
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=d.get("eos_token_id"),
        pad_token_id=d.get("pad_token_id"),
    )
    try:
        if mt == "gpt2":
            act = d.get("activation_function", "gelu_new")
            if act not in _ACTS_GPT2:
                raise LmstackError(f"{where}: activation_function {act!r} is not supported for gpt2 "
                                   f"({', '.join(_ACTS_GPT2)})")
            for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
                if d.get(flag):
                    raise LmstackError(f"{where}: {flag}=true is not supported")
            if d.get("scale_attn_weights") is False:
                raise LmstackError(f"{where}: scale_attn_weights=false is not supported")
            return ModelConfig(
                arch="gpt2", n_layer=d["n_layer"], n_head=d["n_head"], d_model=d["n_embd"],
                d_ff=d.get("n_inner") or 4 * d["n_embd"], max_seq_len=d.get("n_positions", 1024),
                norm_eps=d.get("layer_norm_epsilon", 1e-5), tie_embeddings=d.get("tie_word_embeddings", True),
                activation=_ACTS_GPT2[act], **common,
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise LmstackError(f"{where}: hidden_act {act!r} is not supported (silu)")
        theta, scaling = _rope_fields(d)
        window = None
        layer_types = None
        if mt == "mistral":
            window = d.get("sliding_window")
        elif mt == "qwen2" and d.get("use_sliding_window"):
            window = d.get("sliding_window")
            layer_types = d.get("layer_types") or [
                "sliding_attention" if i >= d.get("max_window_layers", 0) else "full_attention"
                for i in range(d["num_hidden_layers"])
            ]
        n_head = d["num_attention_heads"]
        return ModelConfig(
            arch=mt, n_layer=d["num_hidden_layers"], n_head=n_head,
            n_kv_head=d.get("num_key_value_heads") or n_head, d_model=d["hidden_size"],
            d_ff=d["intermediate_size"], head_dim=d.get("head_dim") or d["hidden_size"] // n_head,
            max_seq_len=d.get("max_position_embeddings", 2048), norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=theta, rope_scaling=scaling,
            qkv_bias=True if mt == "qwen2" else bool(d.get("attention_bias", False)),
            o_bias=False if mt == "qwen2" else bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            tie_embeddings=d.get("tie_word_embeddings", False),
            sliding_window=window, layer_types=layer_types, **common,
        )
    except KeyError as e:
        raise LmstackError(f"{where}: missing field {e.args[0]!r} for model_type {mt!r}") from None


def config_to_hf(cfg: ModelConfig) -> dict:
    d = {
        "architectures": [HF_ARCHITECTURES[cfg.arch]],
        "model_type": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
    }
    if cfg.is_gpt2:
        d.update(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.d_model, n_inner=cfg.d_ff,
                 n_positions=cfg.max_seq_len, n_ctx=cfg.max_seq_len, layer_norm_epsilon=cfg.norm_eps,
                 activation_function="gelu_new" if cfg.activation == "gelu_tanh" else "gelu",
                 resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout)
        return d
    if cfg.arch == "qwen2" and (not cfg.qkv_bias or cfg.o_bias):
        raise LmstackError("model config: qwen2 has q/k/v biases and no output bias")
    d.update(num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
             hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, head_dim=cfg.head_dim,
             max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, hidden_act="silu",
             rope_theta=cfg.rope_theta, rope_scaling=cfg.rope_scaling, attention_dropout=cfg.dropout)
    if cfg.arch == "llama":
        if cfg.qkv_bias != cfg.o_bias:
            raise LmstackError("model config: llama's attention_bias covers q/k/v and output together")
        d.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    if cfg.arch == "mistral":
        d["sliding_window"] = cfg.sliding_window
    if cfg.arch == "qwen2":
        d.update(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window)
        if cfg.layer_types is not None:
            d["layer_types"] = cfg.layer_types
            d["max_window_layers"] = next(
                (i for i, t in enumerate(cfg.layer_types) if t == "sliding_attention"), cfg.n_layer)
    return d


# --- tensors -----------------------------------------------------------------------------------

def _llama_layer(i):
    return f"model.layers.{i}."


def state_from_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig, where: str = "checkpoint") -> dict:
    """HF tensor names/layouts -> ours. Missing tensors are an error naming them."""
    sd = dict(sd)
    out = {}

    def take(name):
        try:
            return sd.pop(name)
        except KeyError:
            raise LmstackError(f"{where}: missing tensor '{name}'") from None

    if cfg.is_gpt2:
        # Hub GPT-2 files come with and without the "transformer." prefix.
        sd = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not (k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"))}
        out["tok_emb.weight"] = take("wte.weight")
        out["pos_emb.weight"] = take("wpe.weight")
        for i in range(cfg.n_layer):
            h, b = f"h.{i}.", f"blocks.{i}."
            # GPT-2's Conv1D stores [in, out]; nn.Linear wants [out, in].
            for src, dst in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.o_proj"),
                             ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.down")):
                out[b + dst + ".weight"] = take(h + src + ".weight").t().contiguous()
                out[b + dst + ".bias"] = take(h + src + ".bias")
            for src, dst in (("ln_1", "norm1"), ("ln_2", "norm2")):
                out[b + dst + ".weight"] = take(h + src + ".weight")
                out[b + dst + ".bias"] = take(h + src + ".bias")
        out["norm_f.weight"] = take("ln_f.weight")
        out["norm_f.bias"] = take("ln_f.bias")
        head = sd.pop("lm_head.weight", None)
    else:
        out["tok_emb.weight"] = take("model.embed_tokens.weight")
        for i in range(cfg.n_layer):
            h, b = _llama_layer(i), f"blocks.{i}."
            a = h + "self_attn."
            out[b + "attn.qkv.weight"] = torch.cat([take(a + f"{p}_proj.weight") for p in "qkv"])
            if cfg.qkv_bias:
                out[b + "attn.qkv.bias"] = torch.cat([take(a + f"{p}_proj.bias") for p in "qkv"])
            out[b + "attn.o_proj.weight"] = take(a + "o_proj.weight")
            if cfg.o_bias:
                out[b + "attn.o_proj.bias"] = take(a + "o_proj.bias")
            m = h + "mlp."
            out[b + "mlp.up.weight"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")])
            out[b + "mlp.down.weight"] = take(m + "down_proj.weight")
            if cfg.mlp_bias:
                out[b + "mlp.up.bias"] = torch.cat([take(m + "gate_proj.bias"), take(m + "up_proj.bias")])
                out[b + "mlp.down.bias"] = take(m + "down_proj.bias")
            out[b + "norm1.weight"] = take(h + "input_layernorm.weight")
            out[b + "norm2.weight"] = take(h + "post_attention_layernorm.weight")
        out["norm_f.weight"] = take("model.norm.weight")
        head = sd.pop("lm_head.weight", None)
        sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        out["lm_head.weight"] = out["tok_emb.weight"]
    elif head is None:
        raise LmstackError(f"{where}: missing tensor 'lm_head.weight' (config says embeddings are not tied)")
    else:
        out["lm_head.weight"] = head
    if sd:
        extra = ", ".join(sorted(sd)[:5])
        raise LmstackError(f"{where}: unexpected tensor(s) {extra}{' ...' if len(sd) > 5 else ''}")
    return out


def state_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> HF names/layouts, contiguous and unshared (safetensors refuses shared storage)."""
    out = {}
    if cfg.is_gpt2:
        out["transformer.wte.weight"] = sd["tok_emb.weight"]
        out["transformer.wpe.weight"] = sd["pos_emb.weight"]
        for i in range(cfg.n_layer):
            h, b = f"transformer.h.{i}.", f"blocks.{i}."
            for dst, src in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.o_proj"),
                             ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.down")):
                out[h + dst + ".weight"] = sd[b + src + ".weight"].t()
                out[h + dst + ".bias"] = sd[b + src + ".bias"]
            for dst, src in (("ln_1", "norm1"), ("ln_2", "norm2")):
                out[h + dst + ".weight"] = sd[b + src + ".weight"]
                out[h + dst + ".bias"] = sd[b + src + ".bias"]
        out["transformer.ln_f.weight"] = sd["norm_f.weight"]
        out["transformer.ln_f.bias"] = sd["norm_f.bias"]
    else:
        nq, nkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"]
        for i in range(cfg.n_layer):
            h, b = _llama_layer(i), f"blocks.{i}."
            a = h + "self_attn."
            for p, t in zip("qkv", sd[b + "attn.qkv.weight"].split([nq, nkv, nkv])):
                out[a + f"{p}_proj.weight"] = t
            if cfg.qkv_bias:
                for p, t in zip("qkv", sd[b + "attn.qkv.bias"].split([nq, nkv, nkv])):
                    out[a + f"{p}_proj.bias"] = t
            out[a + "o_proj.weight"] = sd[b + "attn.o_proj.weight"]
            if cfg.o_bias:
                out[a + "o_proj.bias"] = sd[b + "attn.o_proj.bias"]
            m = h + "mlp."
            gate, up = sd[b + "mlp.up.weight"].chunk(2)
            out[m + "gate_proj.weight"], out[m + "up_proj.weight"] = gate, up
            out[m + "down_proj.weight"] = sd[b + "mlp.down.weight"]
            if cfg.mlp_bias:
                gb, ub = sd[b + "mlp.up.bias"].chunk(2)
                out[m + "gate_proj.bias"], out[m + "up_proj.bias"] = gb, ub
                out[m + "down_proj.bias"] = sd[b + "mlp.down.bias"]
            out[h + "input_layernorm.weight"] = sd[b + "norm1.weight"]
            out[h + "post_attention_layernorm.weight"] = sd[b + "norm2.weight"]
        out["model.norm.weight"] = sd["norm_f.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
