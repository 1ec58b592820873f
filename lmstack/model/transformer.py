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


class KVCache:
    """Preallocated keys/values for every layer, shared write position, per-row key positions.

    Rows may hold different amounts of text: left padding and requests that join a running batch are
    slots whose key position is -1, masked out of attention. Key positions also give each row its
    own RoPE positions and sliding windows.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.key_pos = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len
        self.padded = False  # any hole so far: masks needed even for one-token steps

    @property
    def batch(self) -> int:
        return self.key_pos.shape[0]

    def next_positions(self) -> torch.Tensor:
        """Position of the next token in each row: one past the last valid key."""
        if self.length == 0:
            return torch.zeros(self.batch, dtype=torch.long, device=self.key_pos.device)
        return self.key_pos[:, : self.length].max(dim=1).values + 1

    def reorder(self, index: torch.Tensor):
        """Pick rows (beam search reorders beams, a server drops finished requests)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.key_pos = self.key_pos.index_select(0, index)

    # ---- continuous batching: requests join and leave a running batch ------------------------------------------
    # (under inference_mode: the cache's tensors are made there, and only there may they be updated in place)

    @torch.inference_mode()
    def resize(self, max_len: int):
        """Reallocate to max_len slots (>= length), keeping the filled ones."""
        if max_len < self.length:
            raise LmstackError(f"KV cache: cannot shrink to {max_len} slots below the {self.length} in use")
        if max_len == self.max_len:
            return

        def moved(t, fill):
            shape = list(t.shape)
            shape[2 if t.dim() == 4 else 1] = max_len
            new = torch.full(shape, fill, dtype=t.dtype, device=t.device)
            if t.dim() == 4:
                new[:, :, : self.length] = t[:, :, : self.length]
            else:
                new[:, : self.length] = t[:, : self.length]
            return new

        self.k = [moved(t, 0) for t in self.k]
        self.v = [moved(t, 0) for t in self.v]
        self.key_pos = moved(self.key_pos, -1)
        self.max_len = max_len

    def ensure_room(self, n: int):
        """Make room for n more slots, growing geometrically so that growth is rare."""
        if self.length + n > self.max_len:
            self.resize(max(self.length + n, 2 * self.max_len))

    @torch.inference_mode()
    def shift(self, n: int):
        """Move the filled slots by n: n > 0 prepends n empty slots, n < 0 drops the first -n slots.

        Attention is causal by slot order and positions come from key_pos, so moving every row's
        slots together changes nothing a row sees; dropped slots must be empty (-1) in every row.
        """
        if n == 0:
            return
        L = self.length
        if n < 0:
            d = -n
            if d > L:
                raise LmstackError(f"KV cache: cannot drop {d} slots of {L}")
            tensors = [*self.k, *self.v]
            for t in tensors:
                t[:, :, : L - d] = t[:, :, d:L].clone()
            self.key_pos[:, : L - d] = self.key_pos[:, d:L].clone()
            self.key_pos[:, L - d:L] = -1
            self.length = L - d
            return
        self.ensure_room(n)
        for t in [*self.k, *self.v]:
            t[:, :, n:n + L] = t[:, :, :L].clone()
        self.key_pos[:, n:n + L] = self.key_pos[:, :L].clone()
        self.key_pos[:, :n] = -1
        self.length = L + n
        self.padded = True

    def empty_front(self) -> int:
        """How many leading slots are empty in every row (droppable with shift(-n))."""
        if self.length == 0 or self.batch == 0:
            return self.length
        valid = (self.key_pos[:, : self.length] >= 0).any(dim=0)
        return int(valid.long().argmax()) if bool(valid.any()) else self.length

    @torch.inference_mode()
    def merge(self, other: KVCache):
        """Append other's rows to this batch, right-aligned to this cache's length.

        Both caches then end at the same slot, so the next decode step writes every row's token into
        one shared slot; the merged rows' earlier slots are empty (key_pos -1) and masked out.
        """
        if other.length > self.length:
            self.shift(other.length - self.length)
        off = self.length - other.length

        def place(t, fill):
            shape = list(t.shape)
            shape[2 if t.dim() == 4 else 1] = self.max_len
            new = torch.full(shape, fill, dtype=t.dtype, device=t.device)
            if t.dim() == 4:
                new[:, :, off:self.length] = t[:, :, : other.length]
            else:
                new[:, off:self.length] = t[:, : other.length]
            return new

        self.k = [torch.cat([a, place(b, 0)]) for a, b in zip(self.k, other.k)]
        self.v = [torch.cat([a, place(b, 0)]) for a, b in zip(self.v, other.v)]
        self.key_pos = torch.cat([self.key_pos, place(other.key_pos, -1)])
        self.padded = True


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv) * self.hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_head * self.hd, cfg.d_model, bias=cfg.o_bias)
        self.o_proj.residual = True  # scaled init, GPT-2's 1/sqrt(2 * n_layer)

    def forward(self, x, rope, mask, cache: KVCache | None, causal: bool):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:
            start, end = cache.length, cache.length + T
            cache.k[self.layer][:, :, start:end] = k
            cache.v[self.layer][:, :, start:end] = v
            k, v = cache.k[self.layer][:, :, :end], cache.v[self.layer][:, :, :end]
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

    def hidden_states(self, idx, positions=None, cache: KVCache | None = None, pad_mask=None, attn_mask=None):
        """Final-norm hidden states [B, T, d].

        positions: [B, T] position ids (default: continue each row of the cache, or 0..T-1).
        pad_mask:  [B, T] bool, False for padding tokens (left padding in batched prompts).
        attn_mask: [B, 1, T, T] bool, an explicit mask (packed sequences); no cache then.
        """
        B, T = idx.shape
        cfg = self.cfg
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise LmstackError(f"KV cache full: {start + T} tokens > {cache.max_len} allocated")
        if positions is None:
            if cache is not None and start > 0:
                positions = cache.next_positions()[:, None] + torch.arange(T, device=idx.device)
            else:
                positions = torch.arange(T, device=idx.device).expand(B, T)
        if cfg.is_gpt2 and int(positions.max()) >= cfg.max_seq_len:
            raise LmstackError(
                f"sequence of {int(positions.max()) + 1} tokens exceeds the model's context of {cfg.max_seq_len}"
            )
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        rope = None if cfg.is_gpt2 else self._rope(positions, x.dtype)

        # Masks: causal by slot order, keys limited to valid slots, sliding windows by position gap.
        windows = set(self.windows)
        need_mask = attn_mask is not None or pad_mask is not None or windows != {None} or \
            (cache is not None and (cache.padded or (start > 0 and T > 1)))
        masks = {}
        if cache is not None:
            kp = positions if pad_mask is None else positions.masked_fill(~pad_mask, -1)
            cache.key_pos[:, start:start + T] = kp
            if pad_mask is not None and not bool(pad_mask.all()):
                cache.padded = True
        if need_mask:
            if attn_mask is not None:
                base = attn_mask
                kpos = positions
            else:
                if cache is not None:
                    kpos = cache.key_pos[:, : start + T]
                else:
                    kpos = positions if pad_mask is None else positions.masked_fill(~pad_mask, -1)
                S = kpos.shape[1]
                slot_q = torch.arange(start, start + T, device=idx.device)
                causal = torch.arange(S, device=idx.device)[None, :] <= slot_q[:, None]  # [T, S]
                base = (causal[None] & (kpos >= 0)[:, None, :])[:, None]  # [B, 1, T, S]
            for w in windows:
                m = base
                if w is not None:
                    m = m & ((positions[:, None, :, None] - kpos[:, None, None, :]) < w)
                # A padding query sees no key at all; let it see everything rather than make NaNs.
                masks[w] = m | ~m.any(dim=-1, keepdim=True)
        causal_flag = cache is None or start == 0
        for i, block in enumerate(self.blocks):
            mask = masks.get(self.windows[i]) if need_mask else None
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, rope, mask, cache, causal_flag, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache, causal_flag)
        if cache is not None:
            cache.length += T
        return self.norm_f(x)

    def forward(self, idx, positions=None, cache: KVCache | None = None, pad_mask=None, attn_mask=None,
                last_only: bool = False):
        """Logits [B, T, vocab] (or [B, 1, vocab] for the last position only, as decoding needs)."""
        h = self.hidden_states(idx, positions, cache, pad_mask, attn_mask)
        if last_only:
            h = h[:, -1:]
        return self.lm_head(h)
