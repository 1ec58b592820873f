"""Beam search with Hugging Face's scoring, length penalty and stopping rules (tested token for token).

As in transformers, `logit_bias` and `repetition_penalty` transform each step's log-probabilities (after
the log-softmax, before they add to the beam scores), and a candidate whose text completes a stop string
finishes like one ending in a stop token (its text is cut before the string). Beam search does not sample:
temperature and seed do not apply, and the sampling-only settings (top-k, top-p, min-p, OpenAI's frequency
and presence penalties) are refused rather than ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.infer.cache import KVCache
from lmstack.infer.request import Completion
from lmstack.infer.sampling import SamplingParams, apply_penalties
from lmstack.infer.stop import find_stop, stop_token_ids


def check_beam_params(params: SamplingParams, tokenizer=None) -> None:
    """Refuse, in one line, the settings beam search cannot honour."""
    unsupported = [f"{name}={getattr(params, name)!r}" for name, off in
                   (("frequency_penalty", 0.0), ("presence_penalty", 0.0), ("top_k", 0), ("top_p", 1.0),
                    ("min_p", 0.0), ("grammar", None)) if getattr(params, name) != off]
    if unsupported:
        raise LmstackError(f"beam search (num_beams={params.num_beams}) does not support {', '.join(unsupported)}: "
                           "these shape a sampling distribution (use repetition_penalty or logit_bias with beams, "
                           "or sample with num_beams=1)")
    if params.stop and tokenizer is None:
        raise LmstackError("beam search: stop strings need a tokenizer")


@torch.inference_mode()
def beam_search(model, prompt: list[int], params: SamplingParams, tokenizer=None) -> Completion:
    """Beam search for one prompt.

    Candidates are the top 2*num_beams of (beam score + log-prob); candidates ending in a stop token (or
    completing a stop string) and ranked within num_beams become finished hypotheses scored
    sum_logprob / gen_len**length_penalty.
    """
    check_beam_params(params, tokenizer)
    nb, lp, es = params.num_beams, params.length_penalty, params.early_stopping
    device = next(model.parameters()).device
    ctx = model.cfg.max_seq_len
    if len(prompt) >= ctx:
        raise LmstackError(f"prompt has {len(prompt)} tokens; the model's context is {ctx} tokens")
    max_new = min(params.max_new_tokens, ctx - len(prompt))
    stop = stop_token_ids(model.cfg.eos_token_id, tokenizer, params)
    keep = max(2, 1 + len(stop)) * nb
    cache = KVCache(model.cfg, nb, len(prompt) + max_new, device=device, dtype=model.cache_dtype)
    logits = model(torch.tensor([prompt] * nb, device=device), cache=cache, last_only=True)[:, -1]
    running = torch.zeros(nb, 0, dtype=torch.long, device=device)
    run_scores = torch.full((nb,), -1e9, device=device)
    run_scores[0] = 0.0
    rows = [params] * nb
    processed = params.repetition_penalty != 1.0 or bool(params.logit_bias)
    seen = None  # tokens in each beam's prompt + output, for the repetition penalty
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(nb, logits.shape[-1], dtype=torch.bool, device=device)
        seen[:, torch.tensor(prompt, device=device)] = True
    fin: list[tuple[float, list[int]]] = []  # (score, tokens)
    improvable = True
    for step in range(max_new):
        logp = F.log_softmax(logits.float(), dim=-1)
        if processed:  # transformers' order: log-softmax, then the logits processors
            logp = apply_penalties(logp, rows, seen, None)
        V = logp.shape[-1]
        total = (logp + run_scores[:, None]).reshape(-1)
        top_scores, top_idx = total.topk(keep)
        beam_of, tok_of = top_idx // V, top_idx % V
        cand = torch.cat([running[beam_of], tok_of[:, None]], dim=1)
        gen_len = step + 1
        hits = torch.tensor([t in stop for t in tok_of.tolist()], device=device)
        if params.stop:
            for j, toks in enumerate(cand.tolist()):
                if not hits[j] and find_stop(tokenizer.decode(toks), params.stop, 0) is not None:
                    hits[j] = True
        if gen_len >= max_new:
            hits[:] = True
        # Finished hypotheses: only those ranked within num_beams, while improvement is possible.
        full = len(fin) >= nb and es is True
        if improvable and not full:
            for j in range(nb):
                if hits[j]:
                    fin.append((top_scores[j].item() / gen_len ** lp, cand[j].tolist()))
            fin.sort(key=lambda x: -x[0])
            fin = fin[:nb]
        masked = top_scores + hits.float() * -1e9
        nxt = masked.topk(nb).indices
        running, run_scores = cand[nxt], masked[nxt]
        if seen is not None:
            seen = seen[beam_of[nxt]]
            seen[torch.arange(nb, device=device), running[:, -1]] = True
        # Early-stop heuristic, as transformers: can the best running beam still beat the worst finished?
        if len(fin) >= nb:
            best_len = (max_new if (es == "never" and lp > 0) else gen_len)
            improvable = improvable and (run_scores[0].item() / best_len ** lp > fin[-1][0])
        if not improvable or (len(fin) >= nb and es is True) or bool(hits.all()):
            break
        cache.reorder(beam_of[nxt])
        logits = model(running[:, -1:], cache=cache, last_only=True)[:, -1]
    best_score, best = fin[0] if fin else (run_scores[0].item(), running[0].tolist())
    res = Completion(prompt_ids=list(prompt), ids=best)
    by_token = bool(best) and best[-1] in stop
    res.finish_reason = "stop" if by_token else "length"
    if tokenizer is not None:
        res.text = tokenizer.decode(best[:-1] if by_token else best)
        cut = find_stop(res.text, params.stop, 0)
        if cut is not None:
            res.text, res.finish_reason = res.text[:cut], "stop"
    return res
