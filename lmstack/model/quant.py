"""Weight-only quantisation for CPU inference: int8 and int4 linear layers on PyTorch's own kernels.

Decoding one token reads every weight once, so on a CPU its speed is the bytes read per token. A
GGUF file's 4-bit weights dequantised to fp32 are 8x the bytes; kept as int4 they are what llama.cpp
reads. The layers here hold the codes and run PyTorch's packed kernels on bf16 activations:

- `Int4Linear`: 4-bit codes in groups of 32 along the input, one bf16 scale and zero per group
  (w = (q - 8) * scale + zero), `torch._weight_int4pack_mm_for_cpu`. GGUF's Q4_0 (w = d (q - 8)) and
  Q4_1 (w = d q + m) are this grid exactly, so `quantize_int4` recovers their codes from the
  dequantised weights: each group takes whichever of the two grids reproduces it better. Only the
  fp16 block scales round to bf16 (a relative 2^-9).
- `Int8Linear`: int8 codes with one scale per output row, `torch._weight_int8pack_mm`. GGUF's 5-,
  6- and 8-bit types (Q8_0's per-32 scales included) are requantised to it, which costs a little.
- `Int8Embedding`: the token embedding as int8 rows; a tied int8 output layer reads the same codes.

Only bf16 activations run fast in these kernels on a CPU (fp32 inputs take a 10-30x slower path), so
a quantised model computes in bf16. Training needs dense weights: `refuse_quantized` says so.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmstack.errors import LmstackError

GROUP = 32  # GGUF's block size for Q4_0/Q4_1/Q8_0, and a group size the int4 kernel accepts
ACT_DTYPE = torch.bfloat16


class Int4Linear(nn.Module):
    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None):
        """codes [N, K] integers 0..15; scale, zero [N, K // GROUP]: w = (codes - 8) * scale + zero."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1))
        # The kernel wants [K // GROUP, N, 2] (scale, zero).
        sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(ACT_DTYPE)
        self.register_buffer("scales_zeros", sz)
        self.register_buffer("bias", None if bias is None else bias.to(ACT_DTYPE))

    def forward(self, x):
        shape = x.shape
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).to(ACT_DTYPE).contiguous(), self.packed, GROUP,
                                              self.scales_zeros)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        """The dense weight [N, K] these codes stand for (tests, and a check of the packing)."""
        eye = torch.eye(self.in_features, dtype=ACT_DTYPE)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, self.scales_zeros).t().float()

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, group={GROUP}, bias={self.bias is not None}"


class Int8Linear(nn.Module):
    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        """codes [N, K] int8, scale [N]: w = codes * scale[:, None]."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(ACT_DTYPE))
        self.register_buffer("bias", None if bias is None else bias.to(ACT_DTYPE))

    def forward(self, x):
        shape = x.shape
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(ACT_DTYPE), self.codes, self.scale)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def dequantized(self) -> torch.Tensor:
        return self.codes.float() * self.scale.float()[:, None]

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, per-row scale, bias={self.bias is not None}"


class Int8Embedding(nn.Module):
    """Token embedding rows as int8 codes with one scale per row (a tied `Int8Linear` shares them)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(ACT_DTYPE))

    def forward(self, idx):
        return self.codes[idx].to(ACT_DTYPE) * self.scale[idx].unsqueeze(-1)


# ------------------------------------------------------------------------------------------ codes


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (codes [N, K] int8, scale [N])."""
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    # The codes are rounded against the bf16 scale the kernel will multiply by.
    scale = scale.to(ACT_DTYPE).float()
    codes = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scale


def quantize_int4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit codes in groups of GROUP: (codes [N, K] 0..15, scale, zero [N, K // GROUP]).

    Three grids per group, the best kept: min/max (Q4_1's: the smallest weight is code 0, the
    largest code 15), symmetric (Q4_0's: the weight of largest magnitude is code 0, zero 0), and the
    lattice the group already lies on (step = the smallest gap between its distinct values, code 0 at
    the smallest): a Q4_K group (scale x 6-bit sub-scale, minus a 6-bit min) need not use codes 0 and
    15, so only the lattice finds its codes. Weights read from a Q4_0, Q4_1 or Q4_K file lie on one of
    these grids, so their codes come back exactly (the scales rounded to bf16)."""
    N, K = w.shape
    g = w.float().reshape(N, K // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    # Min/max grid: w = lo + q * s, i.e. (q - 8) * s + (lo + 8 s).
    s1 = ((hi - lo) / 15).clamp(min=1e-12)
    z1 = lo + 8 * s1
    # Symmetric grid: w = (q - 8) * d with d = -w_ext / 8 (w_ext the weight of largest magnitude).
    ext = torch.where(hi.abs() > lo.abs(), hi, lo)
    s2 = torch.where(ext == 0, torch.full_like(ext, 1e-12), -ext / 8)
    z2 = torch.zeros_like(s2)
    # Lattice grid: the smallest gap between distinct values (float noise of the dequantisation ignored).
    srt = g.sort(-1).values
    gap = srt.diff(dim=-1)
    gap = torch.where(gap > 1e-5 * (hi - lo)[..., None], gap, torch.full_like(gap, float("inf"))).amin(-1)
    s3 = torch.where(torch.isfinite(gap), gap, s1)
    z3 = lo + 8 * s3
    best = None
    for s, z in ((s1, z1), (s2, z2), (s3, z3)):
        s, z = s.to(ACT_DTYPE).float(), z.to(ACT_DTYPE).float()  # as the kernel will see them
        q = torch.round((g - z[..., None]) / s[..., None] + 8).clamp(0, 15)
        err = ((q - 8) * s[..., None] + z[..., None] - g).abs().amax(-1)
        if best is None:
            best = [q, s, z, err]
        else:
            take = err < best[3]
            best = [torch.where(take[..., None], q, best[0]), torch.where(take, s, best[1]),
                    torch.where(take, z, best[2]), torch.minimum(err, best[3])]
    q, s, z, _ = best
    return q.reshape(N, K).to(torch.uint8), s, z


def int4_fits(linear: nn.Linear) -> bool:
    """The int4 kernel needs whole groups along the input and output rows in multiples of 16."""
    return linear.in_features % GROUP == 0 and linear.out_features % 16 == 0


def int8_fits(linear: nn.Linear) -> bool:
    """The int8 kernel reads the input in blocks of 16 (other widths crash it, torch 2.13)."""
    return linear.in_features % 16 == 0


def quantized_linear(linear: nn.Linear, bits: int) -> nn.Module:
    """int4 where the kernel runs and int4 was asked, else int8 where it runs, else the layer stays dense."""
    w, b = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
    if bits == 4 and int4_fits(linear):
        return Int4Linear(*quantize_int4(w), b)
    if int8_fits(linear):
        return Int8Linear(*quantize_int8(w), b)
    return linear


# ------------------------------------------------------------------------------------------ model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (Int4Linear, Int8Linear, Int8Embedding)) for m in model.modules())


def refuse_quantized(model: nn.Module, what: str) -> None:
    if is_quantized(model):
        raise LmstackError(f"{what}: the model has quantised (int8/int4) weights, which cannot be trained or "
                           "saved; load it dense (--quantize none)")


def quantize_model(model: nn.Module, bits: int | dict[str, int]) -> nn.Module:
    """Replace the Transformer's linear layers by int4/int8 ones (in place) and compute in bf16.

    `bits`: 4 or 8 for every linear layer, or {module name: 4 | 8} (a GGUF file's own types; names
    not listed stay dense). The token embedding becomes int8 rows; a tied output layer that is int8
    reads the same codes, an int4 one gets its own."""
    if model.__class__.__name__ != "Transformer":
        raise LmstackError("quantisation applies to lmstack's Transformer (merge LoRA adapters first)")
    if torch.device(model.norm_f.weight.device).type != "cpu":
        raise LmstackError("int8/int4 weights run on PyTorch's CPU kernels; on a GPU load the model dense")
    plan = bits if isinstance(bits, dict) else {n: bits for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    tied = model.lm_head.weight is model.tok_emb.weight
    emb = Int8Embedding(*quantize_int8(model.tok_emb.weight.detach()))
    for name, m in list(model.named_modules()):
        if not isinstance(m, nn.Linear) or name not in plan:
            continue
        if name == "lm_head" and tied and int8_fits(m) and (plan[name] == 8 or not int4_fits(m)):
            q = Int8Linear(emb.codes, emb.scale, None)  # the embedding's own tensors: one copy of the codes
        else:
            q = quantized_linear(m, plan[name])
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, q)
    model.tok_emb = emb
    model.to(ACT_DTYPE)  # norms, position embeddings, biases: the activations are bf16
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights in memory (a tensor shared by two modules counted once)."""
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        n += t.numel() * t.element_size()
    return n


__all__ = ["Int4Linear", "Int8Linear", "Int8Embedding", "quantize_int4", "quantize_int8",
           "quantize_model", "is_quantized", "refuse_quantized", "weight_bytes"]
