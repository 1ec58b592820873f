"""The decoder-only Transformer, in one file of plain PyTorch.

GPT-2 style and Llama style are switches on one `ModelConfig` (see config.py). Attention goes
through `scaled_dot_product_attention`, so GPUs get flash attention. q/k/v share one projection and
SwiGLU's gate/up share another: fewer, larger matrix multiplies are what make small-batch decoding
fast on a CPU, and the Hugging Face tensor layout is restored on save (hf.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmstack.errors import LmstackError
from lmstack.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Computed in fp32 as Llama does, so bf16 weights keep fp32 statistics.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    rs = cfg.rope_scaling
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return inv / rs["factor"]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        return torch.where(medium, smoothed, scaled)
    raise LmstackError(f"model config: rope_scaling type '{kind}' is not supported (default, linear, llama3)")


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention_mask(q_pos, k_pos, q_start: int, window: int | None = None, base=None) -> torch.Tensor:
    """Which keys each query may attend to: [B, 1, T, S] bool.

    q_pos [B, T] are the queries' positions, k_pos [B, S] the keys' (-1: an empty or padding slot),
    q_start the slot of the first query. Causal by slot order, padding masked, and keys more than
    `window` positions back dropped (sliding-window attention). `base` replaces the causal/padding
    part with an explicit mask (packed sequences).
    """
    if base is None:
        T, S = q_pos.shape[1], k_pos.shape[1]
        slot_q = torch.arange(q_start, q_start + T, device=q_pos.device)
        causal = torch.arange(S, device=q_pos.device)[None, :] <= slot_q[:, None]  # [T, S]
        base = (causal[None] & (k_pos >= 0)[:, None, :])[:, None]  # [B, 1, T, S]
    m = base
    if window is not None:
        m = m & ((q_pos[:, None, :, None] - k_pos[:, None, None, :]) < window)
    # A padding query sees no key at all; let it see everything rather than make NaNs.
    return m | ~m.any(dim=-1, keepdim=True)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv) * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.d_model, bias=cfg.o_bias)
        self.o_proj.residual = True  # scaled init, GPT-2's 1/sqrt(2 * n_layer)

    def forward(self, x, rope, mask, cache, causal: bool):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:  # keys/values of the earlier tokens too: [B, n_kv, S, hd]
            k, v = cache.update(self.layer, k, v)
        if self.n_kv != self.n_head:
            rep = self.n_head // self.n_kv
            k = k[:, :, None].expand(-1, -1, rep, -1, -1).reshape(B, self.n_head, -1, self.hd)
            v = v[:, :, None].expand(-1, -1, rep, -1, -1).reshape(B, self.n_head, -1, self.hd)
        p = self.cfg.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, dropout_p=p)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gpt2 = cfg.is_gpt2
        up_out = cfg.d_ff if self.gpt2 else 2 * cfg.d_ff  # SwiGLU: gate and up in one matrix
        self.up = nn.Linear(cfg.d_model, up_out, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.down.residual = True

    def forward(self, x):
        h = self.up(x)
        if self.gpt2:
            h = F.gelu(h, approximate="tanh")
        else:
            g, u = h.chunk(2, dim=-1)
            h = F.silu(g) * u
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)) if cfg.is_gpt2 else \
            (lambda: RMSNorm(cfg.d_model, cfg.norm_eps))
        self.norm1, self.attn, self.norm2, self.mlp = norm(), Attention(cfg, layer), norm(), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, mask, cache, causal):
        x = x + self.drop(self.attn(self.norm1(x), rope, mask, cache, causal))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.is_gpt2 else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.is_gpt2 else \
            RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.windows = [cfg.window_for_layer(i) for i in range(cfg.n_layer)]
        self.grad_checkpointing = False
        if not cfg.is_gpt2:
            self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        std = self.cfg.init_std
        if isinstance(m, nn.Linear):
            if getattr(m, "residual", False):
                std = std / math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, std)

    def set_dropout(self, p: float) -> None:
        """Training recipes choose dropout; a loaded checkpoint's config does not."""
        self.cfg.dropout = p
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.p = p

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return n

    def _rope(self, positions, dtype):
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def hidden_states(self, idx, positions=None, cache=None, pad_mask=None, attn_mask=None):
        """Final-norm hidden states [B, T, d].

        positions: [B, T] position ids (default: continue each row of the cache, or 0..T-1).
        cache:     a KV cache (lmstack.infer.cache, whose docstring gives the interface used here).
        pad_mask:  [B, T] bool, False for padding tokens (left padding in batched prompts).
        attn_mask: [B, 1, T, T] bool, an explicit mask (packed sequences); no cache then.
        """
        B, T = idx.shape
        cfg = self.cfg
        start = cache.length if cache is not None else 0  # slot of the first new token
        if positions is None:
            positions = cache.positions(T) if cache is not None else torch.arange(T, device=idx.device).expand(B, T)
        if cfg.is_gpt2 and int(positions.max()) >= cfg.max_seq_len:
            raise LmstackError(
                f"sequence of {int(positions.max()) + 1} tokens exceeds the model's context of {cfg.max_seq_len}"
            )
        key_pos = positions if pad_mask is None else positions.masked_fill(~pad_mask, -1)  # -1: padding
        holes = False
        if cache is not None:
            key_pos, holes = cache.append(key_pos)  # every key's position, earlier tokens included
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        rope = None if cfg.is_gpt2 else self._rope(positions, x.dtype)

        # One mask per window size; none when plain causal attention (is_causal) is exact.
        windows = set(self.windows)
        masks = None
        if attn_mask is not None or pad_mask is not None or windows != {None} or holes or (start > 0 and T > 1):
            if attn_mask is not None:
                key_pos = positions
            masks = {w: attention_mask(positions, key_pos, start, w, base=attn_mask) for w in windows}
        causal = start == 0
        for i, block in enumerate(self.blocks):
            mask = masks[self.windows[i]] if masks is not None else None
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, rope, mask, cache, causal, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache, causal)
        return self.norm_f(x)

    def forward(self, idx, positions=None, cache=None, pad_mask=None, attn_mask=None,
                last_only: bool = False):
        """Logits [B, T, vocab] (or [B, 1, vocab] for the last position only, as decoding needs)."""
        h = self.hidden_states(idx, positions, cache, pad_mask, attn_mask)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)
