"""Log p(token | tokens before it), for every caller.

The kernel is `lmstack.model.logprobs` (`target_logprobs` on logits; the model's `forward(ids, targets=...)`
runs it a chunk of positions at a time, so no full-vocabulary log-softmax is ever materialised); everything
here feeds it:
- `sequence_logprobs(model, ids)`: a right-padded batch of sequences, with gradients when the caller
  trains (DPO, PPO, GRPO, the SFT loss) and at a sampling temperature (PPO's old/new log-probs);
- `token_logprobs(model, sequences)`: per-token lists (perplexity-style scoring);
- `prompt_logprobs(model, ids, top_n)`: one prompt's per-token log-probs and top-N (the server's echo);
- `perplexity(model, ids, max_length, stride)`: sliding-window perplexity of a long text;
- `score_pairs(model, pairs)` / `loglikelihood(model, tokenizer, requests)`: lm-evaluation-harness's
  contract, (context, continuation) -> summed log-prob and is-greedy, with the context/continuation
  split done once (`encode_pair`, the harness's tokenisation) for the harness, FLAN's rank
  classification, reward ranking and DPO references.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.model.logprobs import target_logprobs


def sequence_logprobs(model, ids: torch.Tensor, temperature: float = 1.0, entropy: bool = False):
    """log p(ids[:, t] | ids[:, :t]) for t >= 1: [B, T-1] (and the entropy of each step's distribution).
    Right padding needs no mask: causal attention never lets a real token see the padding after it.
    Logits are divided by the sampling temperature, so the log-probabilities are those of the distribution
    the rollouts were drawn from. Keeps gradients: training losses call it."""
    return model(ids[:, :-1], targets=ids[:, 1:], temperature=temperature, entropy=entropy)


def right_padded(sequences: list[list[int]], device=None) -> torch.Tensor:
    """Token rows as one [B, T] tensor, zero-padded on the right (causal attention never sees the padding)."""
    ids = torch.zeros(len(sequences), max(len(x) for x in sequences), dtype=torch.long)
    for r, x in enumerate(sequences):
        ids[r, : len(x)] = torch.tensor(x)
    return ids.to(device)


@torch.inference_mode()
def token_logprobs(model, sequences: list[list[int]], batch_size: int = 8) -> list[list[float]]:
    """log p(token_t | tokens_<t) for every token after the first, per sequence."""
    out = []
    device = next(model.parameters()).device
    for s in range(0, len(sequences), batch_size):
        chunk = sequences[s:s + batch_size]
        lp, _ = sequence_logprobs(model, right_padded(chunk, device))
        for r, x in enumerate(chunk):
            out.append(lp[r, : len(x) - 1].tolist())
    return out


@torch.inference_mode()
def prompt_logprobs(model, ids: list[int], top_n: int = 0) -> tuple[list, list]:
    """Raw log p of every prompt token given those before it (None for the first), and the top_n most
    likely tokens at each position ({token id: log p}; {} when top_n is 0, None for the first)."""
    if len(ids) < 2:
        return [None] * len(ids), [None] * len(ids)
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0, :-1]
    chosen, _ = target_logprobs(logits, torch.tensor(ids[1:], device=device))
    tops: list = [None]
    if top_n:
        v, i = F.log_softmax(logits.float(), dim=-1).topk(top_n, dim=-1)
        tops += [dict(zip(a, b)) for a, b in zip(i.tolist(), v.tolist())]
    else:
        tops += [{} for _ in range(len(ids) - 1)]
    return [None, *chosen.tolist()], tops


def nll_sum(lp: torch.Tensor) -> float:
    """sum(-lp) over a 1-D tensor of log-probs, accumulated in cross_entropy's order (nll_loss over the
    gathered values), so that perplexities equal `F.cross_entropy(..., reduction="sum")` bit for bit."""
    return F.nll_loss(lp[:, None], torch.zeros_like(lp, dtype=torch.long), reduction="sum").item()


@torch.inference_mode()
def perplexity(model, ids: list[int] | torch.Tensor, max_length: int | None = None, stride: int | None = None,
               n_bytes: int | None = None) -> dict:
    """PPL = exp(mean negative log-likelihood per token), with a sliding window for long texts.

    Windows of `max_length` tokens advance by `stride`; each window scores only the tokens the previous
    window did not, with up to max_length - stride tokens of context before them (the method of the
    Hugging Face perplexity guide, so numbers are comparable). n_bytes adds bits per byte.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    if ids.numel() < 2:
        raise LmstackError("perplexity: need at least 2 tokens")
    max_length = max_length or model.cfg.max_seq_len
    if max_length > model.cfg.max_seq_len:
        raise LmstackError(f"perplexity: --max-length {max_length} exceeds the model's context {model.cfg.max_seq_len}")
    stride = stride or max_length
    if not (0 < stride <= max_length):
        raise LmstackError(f"perplexity: stride must be in [1, max_length={max_length}], got {stride}")
    device = next(model.parameters()).device
    n = ids.numel()
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        window = ids[begin:end].to(device)[None]
        # Position of each target in the text; score only those not scored by an earlier window.
        pos = torch.arange(begin + 1, end, device=device)
        keep = pos >= max(prev_end, 1)
        if keep.any():
            lp, _ = target_logprobs(model(window)[0, :-1][keep], window[0, 1:][keep])
            nll += nll_sum(lp)
            count += int(keep.sum())
        prev_end = end
        if end == n:
            break
    mean = nll / count
    out = {"nll_sum": nll, "tokens": count, "nll_per_token": mean, "perplexity": math.exp(mean)}
    if n_bytes:
        out["bits_per_byte"] = nll / math.log(2) / n_bytes
    return out


# ---- lm-evaluation-harness's loglikelihood ------------------------------------------------------------------

@dataclass
class LLResult:
    logprob: float  # sum of log p(continuation tokens | context)
    is_greedy: bool  # every continuation token was the argmax
    n_tokens: int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokenise exactly as lm-evaluation-harness does: trailing whitespace of the context moves onto the
    continuation (so " Paris" is one word token), and the continuation's tokens are the joint encoding
    cut at the context's token count. Both start with the tokenizer's BOS, if it adds one, once."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        continuation = context[-n_space:] + continuation
        context = context[:-n_space]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


MASK_ELEMENTS = 1 << 26  # attention-mask entries per scoring batch with shared rows (16 rows of 2,048 tokens)


@dataclass
class _Row:
    """One row of a scoring batch: the tokens fed, their positions and segments (0: the context; k > 0: the k-th
    continuation packed after it), and per request (index, row slots whose outputs predict its tokens, tokens)."""
    fed: list[int]
    positions: list[int]
    segments: list[int]
    scored: list[tuple[int, list[int], list[int]]]

    @property
    def shared(self) -> bool:  # several continuations packed after one context: needs an explicit mask
        return len(self.scored) > 1


def _rows(pairs: list[tuple[list[int], list[int]]], ctx_len: int) -> list[_Row]:
    """Requests that share a context share one row: the context once, then each continuation but its last token
    (nothing is predicted from it), every continuation attending to the context and to itself only, at the
    positions it would have alone — rank classification asks every option of an item after the same prompt, and a
    few-shot prompt is hundreds of tokens. A request alone, or a group that does not fit the context window
    together, is its own row, truncated on the left as before."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (c, x) in enumerate(pairs):
        if not x:
            raise LmstackError("loglikelihood: empty continuation")
        if not c:
            raise LmstackError("loglikelihood: empty context (give at least one token, e.g. BOS)")
        if len(x) >= ctx_len + 1:
            raise LmstackError(f"loglikelihood: continuation of {len(x)} tokens does not fit the context "
                               f"of {ctx_len}")
        groups.setdefault(tuple(c), []).append(i)
    rows = []
    for c, idx in groups.items():
        conts = [pairs[i][1] for i in idx]
        if len(idx) > 1 and len(c) + sum(len(x) - 1 for x in conts) <= ctx_len:
            fed, pos, seg, scored = list(c), list(range(len(c))), [0] * len(c), []
            for k, (i, x) in enumerate(zip(idx, conts), start=1):
                slots = [len(c) - 1] + list(range(len(fed), len(fed) + len(x) - 1))
                fed += x[:-1]
                pos += range(len(c), len(c) + len(x) - 1)
                seg += [k] * (len(x) - 1)
                scored.append((i, slots, x))
            rows.append(_Row(fed, pos, seg, scored))
            continue
        for i, x in zip(idx, conts):
            full = (list(c) + x)[-(ctx_len + 1):]
            L = len(full) - 1
            rows.append(_Row(full[:-1], list(range(L)), [0] * L, [(i, list(range(L - len(x), L)), x)]))
    return rows


@torch.inference_mode()
def score_pairs(model, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16) -> list[LLResult]:
    """Token-level: (context ids, continuation ids) -> LLResult. Long inputs keep their rightmost tokens;
    continuations of one context share its forward pass (`_rows`)."""
    device = next(model.parameters()).device
    out: list[LLResult | None] = [None] * len(pairs)
    rows = sorted(_rows(pairs, model.cfg.max_seq_len), key=lambda r: -len(r.fed))  # each batch pads little
    s = 0
    while s < len(rows):
        T = len(rows[s].fed)
        size = batch_size
        if any(row.shared for row in rows[s:s + size]):  # a [rows, T, T] mask: bounded at long contexts
            size = max(1, min(size, MASK_ELEMENTS // (T * T)))
        batch, s = rows[s:s + size], s + size
        ids = torch.zeros(len(batch), T, dtype=torch.long)
        pos = torch.zeros(len(batch), T, dtype=torch.long)
        seg = torch.full((len(batch), T), -1)  # -1: padding
        for r, row in enumerate(batch):
            L = len(row.fed)
            ids[r, :L], pos[r, :L], seg[r, :L] = torch.tensor(row.fed), torch.tensor(row.positions), torch.tensor(row.segments)
        mask = None
        if any(row.shared for row in batch):
            # key k is visible from query q: k <= q, and k is context or of q's own continuation
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            mask = (causal & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])))[:, None]
            mask = mask.to(device)
        # Only the scored slots go through the output layer: at a 49k-entry vocabulary the logits of every slot
        # (and their log-softmax) would be most of the work and of the memory.
        at = [(r, i, slots, x) for r, row in enumerate(batch) for i, slots, x in row.scored]
        sel_r = torch.tensor([r for r, _, slots, _ in at for _ in slots], device=device)
        sel_t = torch.tensor([t for _, _, slots, _ in at for t in slots], device=device)
        targets = torch.tensor([t for *_, x in at for t in x], device=device)
        if mask is None:  # plain causal rows, right-padded: the is_causal kernel
            logits = model(ids.to(device), select=(sel_r, sel_t))
        else:
            logits = model(ids.to(device), positions=pos.to(device), attn_mask=mask, select=(sel_r, sel_t))
        lp, _ = target_logprobs(logits, targets)
        # argmax of the log-softmax, not of the raw logits: the same choice the scores were computed from
        greedy = F.log_softmax(logits.float(), dim=-1).argmax(-1) == targets
        k = 0
        for _, i, _, x in at:
            n = len(x)
            out[i] = LLResult(float(lp[k:k + n].sum()), bool(greedy[k:k + n].all()), n)
            k += n
    return out  # type: ignore[return-value]


def encode_requests(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """Text (context, continuation) pairs as token pairs. The context starts with one BOS when the tokenizer
    adds one (`Tokenizer.encode`): a chat prompt rendered by a template that writes `{{ bos_token }}` keeps
    its own and gets no second, so it is scored as the template's token ids."""
    tok = tokenizer
    pairs = []
    for context, continuation in requests:
        c, x = encode_pair(tok, context, continuation)
        if not c:  # an empty context still needs one token to condition on
            c = [tok.bos_id if tok.bos_id is not None else tok.eos_id]
        pairs.append((c, x))
    return pairs


def loglikelihood(model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 16) -> list[LLResult]:
    """Text-level scoring through the model's tokenizer."""
    if tokenizer is None:
        raise LmstackError("this checkpoint has no tokenizer (tokenizer.json); pass token ids instead")
    return score_pairs(model, encode_requests(tokenizer, requests), batch_size)
