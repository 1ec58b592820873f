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
from lmstack.model.logprobs import head_logprobs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Computed in fp32 as Llama does, so bf16 weights keep fp32 statistics (F.rms_norm in fp32 is
        # bitwise Llama's formula, in one op instead of five).
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


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
    """(x1, x2) -> (x2, x1): Llama's rotate_half without its sign, which `_rope` folds into sin."""
    return x.roll(x.shape[-1] // 2, dims=-1)


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


FP32_ATTENTION_MAX_KEYS = 256


def fp32_attention(k) -> bool:
    """Whether attention under bf16 autocast on a CPU runs in fp32 instead: over at most FP32_ATTENTION_MAX_KEYS
    keys. PyTorch's CPU flash kernel runs its backward in bf16 at about half its fp32 speed over short sequences
    (forward + backward of 8 rows x 4 heads x 256 keys x 32 dims: 15.9 ms in bf16, 10.3 in fp32; bf16 is the
    faster from 512-1024 keys on), which made whole bf16 training steps 9-10% slower at 4-6 layers
    (docs/benchmarks.md). Autocast is what training recipes run under, their passes without a backward too (a
    reference or old-policy pass must round as the training pass it is compared with: DPO's margins start at zero,
    PPO's ratios at one); a model whose weights are bf16 (inference) keeps the bf16 kernel, the faster without a
    backward."""
    return (k.device.type == "cpu" and k.shape[-2] <= FP32_ATTENTION_MAX_KEYS and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def decode_attention(q, k, v, mask=None):
    """Attention of one new query per row over the cache: q [B, H, 1, hd], k/v [B, kv_heads, S, hd], mask
    [B, 1, 1, S] (True: attend). Two batched matmuls with each key/value head's query heads as rows: on a CPU,
    the flash kernel takes 1.3-6x as long for a single query (51-477 us vs 39-106 us per layer at 60-169 keys,
    batch 1-8, fp32 cache, 2 threads). The cache may be fp32 under bf16 activations (`cache_dtype`)."""
    B, H, _, hd = q.shape
    kv = k.shape[1]
    s = torch.matmul(q.reshape(B, kv, H // kv, hd).to(k.dtype), k.transpose(-1, -2)) * hd ** -0.5  # [B, kv, H/kv, S]
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = s.float().softmax(-1).to(v.dtype)
    return torch.matmul(p, v).reshape(B, H, 1, hd).to(q.dtype)


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
        qkv = self.qkv(x).view(B, T, self.n_head + 2 * self.n_kv, self.hd)
        if rope is not None:  # queries and keys rotated together: one op per step of the formula
            cos, sin = rope
            qk, v = qkv.split([self.n_head + self.n_kv, self.n_kv], dim=2)
            q, k = torch.addcmul(qk * cos, rotate_half(qk), sin).split([self.n_head, self.n_kv], dim=2)
        else:  # one split, one concatenation in backward
            q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:  # keys/values of the earlier tokens too: [B, n_kv, S, hd]
            k, v = cache.update(self.layer, k, v)
        if T == 1 and not self.training and q.device.type == "cpu":  # GPUs keep SDPA's decoding kernels
            y = decode_attention(q, k, v, mask)
        else:
            p = self.cfg.dropout if self.training else 0.0
            # Grouped-query attention inside the kernel: expanding k/v to every head would copy the whole
            # cache at every layer.
            kw = dict(attn_mask=mask, is_causal=causal and mask is None, dropout_p=p, enable_gqa=self.n_kv != self.n_head)
            if fp32_attention(k):
                with torch.autocast("cpu", enabled=False):  # autocast would cast the fp32 inputs back to bf16
                    y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw).to(q.dtype)
            else:
                y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, **kw).to(q.dtype)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gpt2 = cfg.is_gpt2
        # GPT-2's tanh approximation unless the config says the exact erf form ("gelu", nanoGPT's); in bf16 on a
        # CPU the tanh kernel takes about twice the erf one, but a checkpoint's logits need the form it was
        # trained with.
        self.gelu = "tanh" if cfg.activation == "gelu_tanh" else "none"
        up_out = cfg.d_ff if self.gpt2 else 2 * cfg.d_ff  # SwiGLU: gate and up in one matrix
        self.up = nn.Linear(cfg.d_model, up_out, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.down.residual = True

    def forward(self, x):
        h = self.up(x)
        if self.gpt2:
            h = F.gelu(h, approximate=self.gelu)
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
        # Dropout only where it acts: two module calls per layer are a few percent of a decode step.
        drop = self.drop if self.training and self.drop.p > 0 else (lambda h: h)
        x = x + drop(self.attn(self.norm1(x), rope, mask, cache, causal))
        return x + drop(self.mlp(self.norm2(x)))


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

    def _apply(self, fn, recurse=True):
        # RoPE's frequencies stay fp32 whatever the weights become: in bf16 they carry 3 significant
        # digits, and position x frequency is then off by radians a few hundred tokens in.
        super()._apply(fn, recurse)
        if getattr(self, "inv_freq", None) is not None and self.inv_freq.dtype != torch.float32:
            self.inv_freq = rope_inv_freq(self.cfg).to(self.inv_freq.device)
        return self

    @property
    def act_dtype(self) -> torch.dtype:
        """The dtype activations are computed in: the final norm's weight's."""
        return self.norm_f.weight.dtype

    @property
    def cache_dtype(self) -> torch.dtype:
        """The KV cache's dtype: fp32 on a CPU, where one query's attention over a strided bf16 cache costs
        2-4x an fp32 one (bench: 99 vs 39 us per layer at 60 keys, 169 vs 106 at batch 8); else the
        activations'."""
        return torch.float32 if self.norm_f.weight.device.type == "cpu" else self.act_dtype

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
        """cos and sin [B, T, 1, hd] for x * cos + rotate_half(x) * sin; sin's first half is negated, which is
        the minus sign of Llama's rotate_half (x1, x2) -> (-x2, x1)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None]  # [B, T, 1, hd]
        sin = emb.sin()
        sin = torch.cat((-sin[..., : sin.shape[-1] // 2], sin[..., sin.shape[-1] // 2:]), dim=-1)
        return emb.cos().to(dtype), sin.to(dtype)

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
        implied = positions is None and cache is None  # 0..T-1
        if positions is None:
            positions = cache.positions(T) if cache is not None else torch.arange(T, device=idx.device).expand(B, T)
        if cfg.is_gpt2:  # learned positions end at max_seq_len
            # 0..T-1 is checked from T: reading the tensor is a host sync and a torch.compile graph break per step.
            top = T if implied else int(positions.max()) + 1
            if top > cfg.max_seq_len:
                raise LmstackError(f"sequence of {top} tokens exceeds the model's context of {cfg.max_seq_len}")
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
                last_only: bool = False, targets=None, temperature: float = 1.0, entropy: bool = False,
                select=None):
        """Logits [B, T, vocab] (or [B, 1, vocab] for the last position only, as decoding needs; or [M, vocab] for
        the M (row, position) pairs of `select`, two index tensors, as scoring a continuation needs).

        With `targets` [B, T] (the next token at each position): (log p(targets), entropy or None), [B, T] each,
        from the chunked kernel (model/logprobs.py) instead of logits, at a sampling `temperature`. Inside
        forward, so DDP, FSDP and peft wrappers see one forward pass."""
        h = self.hidden_states(idx, positions, cache, pad_mask, attn_mask)
        if targets is not None:
            return head_logprobs(self.lm_head, h, targets, temperature, entropy)
        if last_only:
            h = h[:, -1:]
        elif select is not None:
            h = h[select]
        return self.lm_head(h)
