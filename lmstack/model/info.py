"""Parameter counts, shapes and memory estimates, computed on the meta device (no weights allocated)."""

from __future__ import annotations

import torch

from lmstack.model.config import ModelConfig
from lmstack.model.transformer import Transformer


def meta_model(cfg: ModelConfig) -> Transformer:
    with torch.device("meta"):
        return Transformer(cfg)


def model_info(cfg: ModelConfig) -> dict:
    m = meta_model(cfg)
    n = m.num_params()
    n_emb = n - m.num_params(exclude_embeddings=True)
    kv_per_token = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim  # values per token in the KV cache
    shapes = {}
    for name, p in m.named_parameters():
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        shapes[name.replace("blocks.0.", f"blocks.[0-{cfg.n_layer - 1}].")] = tuple(p.shape)
    return {
        "arch": cfg.arch,
        "params": n,
        "non_embedding_params": n - n_emb,
        "shapes": shapes,
        "weights_fp32_bytes": 4 * n,
        "weights_bf16_bytes": 2 * n,
        # AdamW in mixed precision keeps fp32 weights, grads and two moments: 16 bytes a parameter.
        "train_adamw_bytes": 16 * n,
        "kv_cache_bytes_per_token_bf16": 2 * kv_per_token,
        # 6N FLOPs per token for forward+backward (Kaplan et al.), plus attention's 12*L*d*T term.
        "train_flops_per_token": 6 * (n - n_emb) + 12 * cfg.n_layer * cfg.d_model * cfg.max_seq_len,
    }


def human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def human_bytes(n: float) -> str:
    for suffix, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f} B"


def format_info(name: str, cfg: ModelConfig) -> str:
    i = model_info(cfg)
    lines = [
        f"{name}: {cfg.arch}, {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads "
        f"({cfg.n_kv_head} kv), head_dim {cfg.head_dim}, d_ff {cfg.d_ff}, context {cfg.max_seq_len}, "
        f"vocab {cfg.vocab_size}",
        f"parameters: {i['params']:,} ({human(i['params'])}); non-embedding {i['non_embedding_params']:,}",
        f"weights: {human_bytes(i['weights_fp32_bytes'])} fp32, {human_bytes(i['weights_bf16_bytes'])} bf16; "
        f"AdamW training state ~{human_bytes(i['train_adamw_bytes'])}",
        f"KV cache: {human_bytes(i['kv_cache_bytes_per_token_bf16'])} per token (bf16), "
        f"{human_bytes(i['kv_cache_bytes_per_token_bf16'] * cfg.max_seq_len)} per full-context sequence",
        f"training compute: ~{human(i['train_flops_per_token'], 'FLOP')} per token",
        "shapes:",
    ]
    lines += [f"  {k:<40} {tuple(v)}" for k, v in i["shapes"].items()]
    return "\n".join(lines)
