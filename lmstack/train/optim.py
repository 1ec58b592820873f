"""Optimizer and learning-rate schedules shared by every training recipe."""

from __future__ import annotations

import inspect
import math

import torch

from lmstack.errors import LmstackError

SCHEDULES = ("cosine", "linear", "wsd", "constant")


def make_optimizer(model_or_params, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95),
                   eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (GPT-3, nanoGPT): biases and norm gains are not decayed.

    Takes a model or an iterable of parameters (LoRA trains only its adapter weights)."""
    src = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    params = [p for p in src if p.requires_grad]
    seen, decay, no_decay = set(), [], []
    for p in params:
        if id(p) in seen:  # tied embeddings appear once
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {}
    if fused is None:
        fused = all(p.is_cuda for p in params)
    if fused and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kw["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kw)


def lr_at(step: int, *, lr: float, total: int, warmup: int = 0, schedule: str = "cosine",
          min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then the chosen decay.

    wsd = warmup-stable-decay: constant after warmup, then a linear decay over the last
    `decay_fraction` of training (MiniCPM, DeepSeek).
    """
    if schedule not in SCHEDULES:
        raise LmstackError(f"unknown lr schedule '{schedule}' (choose from {', '.join(SCHEDULES)})")
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    min_lr = lr * min_lr_ratio
    if schedule == "wsd":
        start = int(total * (1 - decay_fraction))
        if step < start:
            return lr
        frac = min(1.0, (step - start) / max(1, total - start))
        return lr - (lr - min_lr) * frac
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return lr - (lr - min_lr) * frac
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
