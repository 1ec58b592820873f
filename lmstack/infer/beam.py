"""Beam search with Hugging Face's scoring, length penalty and stopping rules (tested token for token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.infer.cache import KVCache
from lmstack.infer.request import Completion
from lmstack.infer.sampling import SamplingParams
from lmstack.infer.stop import stop_token_ids


@torch.inference_mode()
def beam_search(model, prompt: list[int], params: SamplingParams, tokenizer=None) -> Completion:
    """Beam search for one prompt.

    Candidates are the top 2*num_beams of (beam score + log-prob); candidates ending in a stop token
    and ranked within num_beams become finished hypotheses scored sum_logprob / gen_len**length_penalty.
    """
    nb, lp, es = params.num_beams, params.length_penalty, params.early_stopping
    device = next(model.parameters()).device
    ctx = model.cfg.max_seq_len
    if len(prompt) >= ctx:
        raise LmstackError(f"prompt has {len(prompt)} tokens; the model's context is {ctx} tokens")
    max_new = min(params.max_new_tokens, ctx - len(prompt))
    stop = stop_token_ids(model.cfg.eos_token_id, tokenizer, params)
    keep = max(2, 1 + len(stop)) * nb
    cache = KVCache(model.cfg, nb, len(prompt) + max_new, device=device, dtype=model.tok_emb.weight.dtype)
    logits = model(torch.tensor([prompt] * nb, device=device), cache=cache, last_only=True)[:, -1]
    running = torch.zeros(nb, 0, dtype=torch.long, device=device)
    run_scores = torch.full((nb,), -1e9, device=device)
    run_scores[0] = 0.0
    fin: list[tuple[float, list[int]]] = []  # (score, tokens)
    improvable = True
    for step in range(max_new):
        logp = F.log_softmax(logits.float(), dim=-1)
        V = logp.shape[-1]
        total = (logp + run_scores[:, None]).reshape(-1)
        top_scores, top_idx = total.topk(keep)
        beam_of, tok_of = top_idx // V, top_idx % V
        cand = torch.cat([running[beam_of], tok_of[:, None]], dim=1)
        gen_len = step + 1
        hits = torch.tensor([t in stop for t in tok_of.tolist()], device=device)
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
    res.finish_reason = "stop" if best and best[-1] in stop else "length"
    if tokenizer is not None:
        res.text = tokenizer.decode(best[:-1] if res.finish_reason == "stop" else best)
    return res
