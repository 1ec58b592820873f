"""Log-likelihood scoring shared by evaluation, FLAN's rank classification and preference learning.

`loglikelihood(lm, [(context, continuation), ...])` follows lm-evaluation-harness's contract: the
continuation's summed log-probability given the context, and whether greedy decoding would have
produced exactly the continuation. Context and continuation are tokenised separately (the context
keeps its trailing text, the continuation is encoded on its own), as the harness does, so results
are comparable with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError


@dataclass
class LLResult:
    logprob: float  # sum of log p(continuation tokens | context)
    is_greedy: bool  # every continuation token was the argmax
    n_tokens: int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokenise exactly as lm-evaluation-harness does: trailing whitespace of the context moves onto the
    continuation (so " Paris" is one word token), and the continuation's tokens are the joint encoding
    cut at the context's token count."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        continuation = context[-n_space:] + continuation
        context = context[:-n_space]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@torch.inference_mode()
def score_token_pairs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[LLResult]:
    """Token-level: (context ids, continuation ids) -> LLResult. Long inputs keep their rightmost tokens."""
    device = next(model.parameters()).device
    ctx_len = model.cfg.max_seq_len
    out: list[LLResult | None] = [None] * len(pairs)
    # Longest first so that each batch pads little.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        seqs, conts = [], []
        for i in idx:
            c, x = pairs[i]
            if not x:
                raise LmstackError("loglikelihood: empty continuation")
            if not c:
                raise LmstackError("loglikelihood: empty context (give at least one token, e.g. BOS)")
            full = (c + x)[-(ctx_len + 1):]
            if len(x) >= len(full):
                raise LmstackError(f"loglikelihood: continuation of {len(x)} tokens does not fit the context "
                                   f"of {ctx_len}")
            seqs.append(full)
            conts.append(len(x))
        T = max(len(q) for q in seqs) - 1
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        for r, q in enumerate(seqs):
            ids[r, : len(q) - 1] = torch.tensor(q[:-1])
        logits = model(ids.to(device)).float()
        logp = F.log_softmax(logits, dim=-1)
        for r, (q, n) in enumerate(zip(seqs, conts)):
            L = len(q) - 1
            target = torch.tensor(q[-n:], device=device)
            lp = logp[r, L - n:L]
            tok_lp = lp.gather(1, target[:, None])[:, 0]
            out[idx[r]] = LLResult(float(tok_lp.sum()), bool((lp.argmax(-1) == target).all()), n)
    return out  # type: ignore[return-value]


def loglikelihood(lm, requests: list[tuple[str, str]], batch_size: int = 16) -> list[LLResult]:
    """Text-level scoring through the model's tokenizer (BOS prepended when the tokenizer adds one)."""
    lm._need_tokenizer()
    tok = lm.tokenizer
    pairs = []
    for context, continuation in requests:
        c, x = encode_pair(tok, context, continuation)
        if tok.add_bos and tok.bos_id is not None and (not c or c[0] != tok.bos_id):
            c = [tok.bos_id] + c
        if not c:  # an empty context still needs one token to condition on
            c = [tok.bos_id if tok.bos_id is not None else tok.eos_id]
        pairs.append((c, x))
    return score_token_pairs(lm.model, pairs, batch_size)


@torch.inference_mode()
def sequence_logprobs(model, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
    """Sum of log p(completion | prompt) per pair, as a tensor (reward ranking, DPO references)."""
    res = score_token_pairs(model, list(zip(prompts, completions)))
    return torch.tensor([r.logprob for r in res])
