"""Optimizer and learning-rate schedules shared by every training recipe."""

from __future__ import annotations

import inspect
import math

import torch

from lmstack.errors import LmstackError

SCHEDULES = ("cosine", "linear", "wsd", "constant")
OPTIMIZERS = ("adamw", "muon")


class Optimizers:
    """Several optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest): what a recipe's
    loop, its checkpoints and the lr schedule see is one optimizer."""

    def __init__(self, *opts: torch.optim.Optimizer):
        self.opts = opts

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.opts for g in o.param_groups]

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.opts]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.opts, state["optimizers"], strict=True):
            o.load_state_dict(s)


def make_optimizer(model_or_params, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95),
                   eps: float = 1e-8, fused: bool | None = None, kind: str = "adamw"):
    """AdamW with weight decay on matrices only (GPT-3, nanoGPT): biases and norm gains are not decayed.

    Takes a model or an iterable of parameters (LoRA trains only its adapter weights). kind="muon": PyTorch's
    own `torch.optim.Muon` for the hidden weight matrices, AdamW for embeddings, output layer, norms and biases
    (as modded-nanogpt and nanochat split them); Muon's step is scaled to AdamW's update size
    (`match_rms_adamw`), so one --lr and one schedule serve both."""
    if kind not in OPTIMIZERS:
        raise LmstackError(f"--optimizer {kind!r}: use {' or '.join(OPTIMIZERS)}")
    if kind == "muon":
        return _muon(model_or_params, lr, weight_decay, betas, eps, fused)
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


def _muon(model, lr, weight_decay, betas, eps, fused) -> Optimizers:
    if not isinstance(model, torch.nn.Module):
        raise LmstackError("--optimizer muon: full training only (Muon needs to tell the hidden matrices from "
                           "embeddings and the output layer; LoRA adapters train with AdamW)")
    if not hasattr(torch.optim, "Muon"):
        raise LmstackError(f"--optimizer muon needs torch.optim.Muon (PyTorch >= 2.9; this is {torch.__version__})")
    # Embedding-like weights (token and position embeddings, the output layer they may be tied to) go to AdamW.
    skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    head = getattr(model, "lm_head", None)
    if head is not None:
        skip.add(id(head.weight))
    hidden = [p for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) not in skip]
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    muon = torch.optim.Muon(hidden, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")
    return Optimizers(muon, make_optimizer(rest, lr, weight_decay, betas, eps, fused))


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


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
