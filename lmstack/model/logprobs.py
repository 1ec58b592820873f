"""The one log-probability kernel: log softmax(logits)[target], computed a chunk of positions at a time.

Every caller (DPO, PPO, GRPO, SFT and pretraining losses, scoring, perplexity) asks the model for the
log-probabilities of given next tokens rather than for logits: `Transformer.forward(ids, targets=...)` returns
them from this kernel. A full-vocabulary log-softmax is the biggest tensor of a training step at real
vocabularies (16 x 256 positions x 49,152 entries is 805 MB in fp32, and autograd keeps several copies); here
the output layer and the log-softmax run over CHUNK_ELEMENTS / vocabulary positions at a time, and under
autograd each chunk is recomputed in backward (activation checkpointing), so only one chunk's logits exist at
any moment. Log-probs are computed in fp32 whatever the logits' dtype, so bf16 models score like fp32 ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 25  # logits entries per chunk: 128 MB of fp32 (682 positions of a 49,152-entry vocabulary;
# the course's 16 x 256 positions of 4,096 stay one chunk, so small models pay no recomputation)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / temperature)[targets] per position ([..., T]), and optionally each position's
    entropy, in fp32."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, targets[..., None])[..., 0]
    if not entropy:
        return lp, None
    return lp, -(logp.exp() * logp).sum(-1)


def _chunk(head, h, targets, temperature, entropy):
    lp, ent = target_logprobs(head(h), targets, temperature, entropy)
    return (lp, ent) if entropy else (lp,)


def head_logprobs(head, h: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, entropy: bool = False,
                  chunk_elements: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """target_logprobs(head(h), targets) for hidden states h [..., d] and targets [...], a chunk of positions at
    a time; equal to the one-shot computation (same ops per position), gradients included."""
    shape = targets.shape
    hf, tf = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // head.out_features)  # nn.Linear, Int4/Int8Linear
    grad = torch.is_grad_enabled() and h.requires_grad
    lps, ents = [], []
    for s in range(0, hf.shape[0], rows):
        args = (head, hf[s:s + rows], tf[s:s + rows], temperature, entropy)
        out = checkpoint(_chunk, *args, use_reentrant=False) if grad and hf.shape[0] > rows else _chunk(*args)
        lps.append(out[0])
        if entropy:
            ents.append(out[1])
    lp = torch.cat(lps).reshape(shape)
    return lp, (torch.cat(ents).reshape(shape) if entropy else None)
