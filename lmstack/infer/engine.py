"""The generation engine: one loop that serves `generate`, `chat`, the server, PPO rollouts and evaluation.

A `Generation` is a batch of requests decoding together over one KV cache. Prompts of different
lengths are left-padded; each row keeps its own sampling parameters, stop conditions and random
generator; finished rows leave the batch (the cache is compacted), and `step()` can be driven by a
caller that wants tokens as they come (streaming, a server's scheduler).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.infer.sampling import SamplingParams, apply_penalties, filter_logits, sample
from lmstack.model.transformer import KVCache, Transformer


@dataclass
class Completion:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # generated tokens (the stop token, if any, included)
    text: str = ""  # generated text, cut before a stop string; no stop token text
    finish_reason: str | None = None  # "stop" (EOS or stop string) or "length"
    logprobs: list[float] = field(default_factory=list)  # raw (untempered) log-prob of each generated token
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


@dataclass
class StreamEvent:
    index: int  # which prompt
    token_id: int
    text: str  # new text safe to show (held back while it may be a stop string or half a character)
    finished: bool
    finish_reason: str | None = None


def _stop_ids(model: Transformer, tokenizer, p: SamplingParams) -> set[int]:
    if p.ignore_eos:
        return set()
    if p.stop_token_ids is not None:
        return set(p.stop_token_ids)
    ids = set()
    if tokenizer is not None:
        ids.update(tokenizer.stop_ids)
    eos = model.cfg.eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


class Generation:
    def __init__(self, model: Transformer, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 tokenizer=None, stream_text: bool = False):
        if not prompts:
            raise LmstackError("generate: no prompts given")
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if any(len(p) == 0 for p in prompts):
            raise LmstackError("generate: empty prompt (no tokens); give at least one token, e.g. BOS")
        self.model, self.tokenizer, self.params = model, tokenizer, list(params)
        ctx = model.cfg.max_seq_len
        for i, p in enumerate(prompts):
            if len(p) >= ctx:
                raise LmstackError(f"prompt {i} has {len(p)} tokens; the model's context is {ctx} tokens")
        self.device = next(model.parameters()).device
        self.results = [Completion(prompt_ids=list(p)) for p in prompts]
        self.stop_ids = [_stop_ids(model, tokenizer, p) for p in self.params]
        self.budget = [min(p.max_new_tokens, ctx - len(pr)) for p, pr in zip(self.params, prompts)]
        self.need_text = stream_text or any(p.stop for p in self.params)
        if self.need_text and tokenizer is None:
            raise LmstackError("generate: stop strings and streaming text need a tokenizer")
        self.emitted = [0] * len(prompts)  # characters of text already streamed
        self.generators = [
            torch.Generator(device=self.device).manual_seed(p.seed) if p.seed is not None else None
            for p in self.params
        ]
        if all(p.seed == self.params[0].seed for p in self.params) and self.params[0].seed is not None:
            self.generators = [self.generators[0]] * len(self.generators)  # one seed: one stream, as HF
        self.active = [i for i in range(len(prompts)) if self.budget[i] > 0]
        for i in range(len(prompts)):
            if self.budget[i] <= 0:
                self.results[i].finish_reason = "length"
        self._prefilled = False
        B = len(self.active)
        V = model.cfg.vocab_size
        self.cache = None
        self.prompts = prompts
        self.track_seen = any(p.repetition_penalty != 1.0 for p in self.params)
        self.track_counts = any(p.frequency_penalty or p.presence_penalty for p in self.params)
        if self.track_seen:
            self.seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
            for r, i in enumerate(self.active):
                self.seen[r, torch.tensor(prompts[i], device=self.device)] = True
        if self.track_counts:
            self.counts = torch.zeros(B, V, dtype=torch.float32, device=self.device)

    @property
    def done(self) -> bool:
        return not self.active

    def _prefill(self):
        rows = [self.prompts[i] for i in self.active]
        T = max(len(r) for r in rows)
        B = len(rows)
        max_new = max(self.budget[i] for i in self.active)
        dtype = self.model.tok_emb.weight.dtype
        self.cache = KVCache(self.model.cfg, B, T + max_new, device=self.device, dtype=dtype)
        pad = self.tokenizer.pad_id if self.tokenizer is not None and self.tokenizer.pad_id is not None else 0
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for r, toks in enumerate(rows):
            ids[r, T - len(toks):] = torch.tensor(toks)
            mask[r, T - len(toks):] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        padded = not bool(mask.all())
        logits = self.model(ids, positions=positions, cache=self.cache, pad_mask=mask if padded else None,
                            last_only=True)
        self._prefilled = True
        return logits[:, -1]

    @torch.inference_mode()
    def step(self) -> list[StreamEvent]:
        """Run one forward pass and choose one token for every active row."""
        if self.done:
            return []
        if not self._prefilled:
            logits = self._prefill()
        else:
            # A row that joined a running batch (add) has no output yet: it feeds its last prompt token.
            last = torch.tensor([[self.results[i].ids[-1] if self.results[i].ids else self.prompts[i][-1]]
                                 for i in self.active], device=self.device)
            if self._merged:
                self._compact_cache()
            self.cache.ensure_room(1)
            logits = self.model(last, cache=self.cache, last_only=True)[:, -1]
        logits = logits.float()
        params = [self.params[i] for i in self.active]
        raw_logprobs = F.log_softmax(logits, dim=-1)
        scores = apply_penalties(logits, params, self.seen if self.track_seen else None,
                                 self.counts if self.track_counts else None)
        scores = filter_logits(scores, params)
        next_ids = sample(scores, params, [self.generators[i] for i in self.active])
        chosen_lp = raw_logprobs.gather(1, next_ids[:, None])[:, 0].tolist()
        want_top = [self.params[i].logprobs for i in self.active]
        top = None
        if any(w for w in want_top):
            top = raw_logprobs.topk(max(w or 0 for w in want_top), dim=-1)
        if self.track_seen:
            self.seen[torch.arange(len(self.active)), next_ids] = True
        if self.track_counts:
            self.counts[torch.arange(len(self.active)), next_ids] += 1
        events, finished_rows = [], []
        for r, (i, tok) in enumerate(zip(self.active, next_ids.tolist())):
            res = self.results[i]
            res.ids.append(tok)
            res.logprobs.append(chosen_lp[r])
            if top is not None and want_top[r]:
                n = want_top[r]
                res.top_logprobs.append(dict(zip(top.indices[r, :n].tolist(), top.values[r, :n].tolist())))
            reason = None
            if tok in self.stop_ids[i]:
                reason = "stop"
            elif len(res.ids) >= self.budget[i]:
                reason = "length"
            delta = ""
            if self.need_text:
                ids = res.ids[:-1] if reason == "stop" else res.ids
                text = self.tokenizer.decode(ids)
                cut = _find_stop(text, self.params[i].stop, self.emitted[i])
                if cut is not None:
                    text, reason = text[:cut], "stop"
                res.text = text
                safe = len(text) if reason else _safe_prefix(text, self.params[i].stop)
                if safe > self.emitted[i]:
                    delta = text[self.emitted[i]:safe]
                    self.emitted[i] = safe
            if reason:
                res.finish_reason = reason
                finished_rows.append(r)
            events.append(StreamEvent(i, tok, delta, reason is not None, reason))
        if finished_rows:
            self._keep_rows([r for r in range(len(self.active)) if r not in set(finished_rows)])
        return events

    def _keep_rows(self, keep: list[int]):
        """Keep only these rows (positions in self.active) in the batch, its cache and penalty state."""
        self.active = [self.active[r] for r in keep]
        if keep:
            idx = torch.tensor(keep, device=self.device)
            if self.cache is not None:
                self.cache.reorder(idx)
            if self.track_seen:
                self.seen = self.seen[idx]
            if self.track_counts:
                self.counts = self.counts[idx]

    # ---- continuous batching: a server adds requests between steps and drops those whose client left ----------

    @classmethod
    def empty(cls, model: Transformer, tokenizer=None, stream_text: bool = False) -> Generation:
        """A generation with no request yet; requests join with `add` (a server's running batch)."""
        gen = cls.__new__(cls)
        gen.model, gen.tokenizer, gen.params = model, tokenizer, []
        gen.device = next(model.parameters()).device
        gen.results, gen.stop_ids, gen.budget, gen.emitted, gen.generators, gen.prompts = [], [], [], [], [], []
        gen.need_text = stream_text
        if stream_text and tokenizer is None:
            raise LmstackError("generate: streaming text needs a tokenizer")
        gen.active, gen.cache, gen._prefilled = [], None, False
        gen.track_seen = gen.track_counts = False
        return gen

    _merged = False  # rows joined a running batch: its cache may hold slots that no row uses any more
    _own_prompts = False

    @torch.inference_mode()
    def add(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[int]:
        """Add requests between steps; returns their indices (StreamEvent.index, results).

        While a batch is running, the new prompts (all but their last token) are prefilled together
        in a cache of their own, which is then merged into the running cache right-aligned to its
        length (their earlier slots are empty, key_pos -1, masked out). The next step feeds each new
        row its last prompt token beside the other rows' last outputs, so a request decodes as it
        would alone. Before the first step, or once every row has finished, they join the next prefill.
        Each seeded request gets its own random generator, so its samples do not depend on its neighbours.
        """
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        if len(params) != len(prompts):
            raise LmstackError("generate: one SamplingParams per prompt")
        ctx = self.model.cfg.max_seq_len
        for j, p in enumerate(prompts):
            if len(p) == 0:
                raise LmstackError("generate: empty prompt (no tokens); give at least one token, e.g. BOS")
            if len(p) >= ctx:
                raise LmstackError(f"prompt {j} has {len(p)} tokens; the model's context is {ctx} tokens")
        if any(p.stop for p in params) and not self.need_text:
            if self.tokenizer is None:
                raise LmstackError("generate: stop strings and streaming text need a tokenizer")
            self.need_text = True
        if not self._own_prompts:  # __init__ keeps the caller's list: copy it before growing it
            self.prompts, self._own_prompts = list(self.prompts), True
        start = len(self.results)
        for p, sp in zip(prompts, params):
            self.prompts.append(list(p))
            self.params.append(sp)
            self.results.append(Completion(prompt_ids=list(p)))
            self.stop_ids.append(_stop_ids(self.model, self.tokenizer, sp))
            self.budget.append(min(sp.max_new_tokens, ctx - len(p)))
            self.emitted.append(0)
            self.generators.append(torch.Generator(device=self.device).manual_seed(sp.seed)
                                   if sp.seed is not None else None)
        indices = list(range(start, len(self.results)))
        new = []
        for i in indices:
            if self.budget[i] > 0:
                new.append(i)
            else:
                self.results[i].finish_reason = "length"
        if not new:
            return indices
        if self.done:  # the old cache holds only finished rows: start afresh
            self.cache, self._prefilled, self._merged = None, False, False
        if self._prefilled:
            rows = [self.prompts[i][:-1] for i in new]
            self.cache.merge(self._prefill_rows(rows))
            self._merged = True
        old = list(self.active)
        self.active = old + new
        self._track(old, new)
        return indices

    def _prefill_rows(self, rows: list[list[int]]) -> KVCache:
        """A cache holding these token rows, left-padded to one length (rows may be empty)."""
        T, B = max(len(r) for r in rows), len(rows)
        cache = KVCache(self.model.cfg, B, T, device=self.device, dtype=self.model.tok_emb.weight.dtype)
        if T == 0:
            return cache
        ids = torch.zeros((B, T), dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for r, toks in enumerate(rows):
            if toks:
                ids[r, T - len(toks):] = torch.tensor(toks)
                mask[r, T - len(toks):] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        padded = not bool(mask.all())
        self.model(ids, positions=positions, cache=cache, pad_mask=mask if padded else None, last_only=True)
        return cache

    def _track(self, old: list[int], new: list[int]):
        """Penalty state (tokens seen, output counts) for the rows old + new, in batch order."""
        V = self.model.cfg.vocab_size
        want_seen = any(self.params[i].repetition_penalty != 1.0 for i in old + new) or self.track_seen
        want_counts = any(self.params[i].frequency_penalty or self.params[i].presence_penalty
                          for i in old + new) or self.track_counts

        def seen_of(rows):
            t = torch.zeros(len(rows), V, dtype=torch.bool, device=self.device)
            for r, i in enumerate(rows):
                t[r, torch.tensor(self.prompts[i] + self.results[i].ids, device=self.device)] = True
            return t

        def counts_of(rows):
            t = torch.zeros(len(rows), V, dtype=torch.float32, device=self.device)
            for r, i in enumerate(rows):
                if self.results[i].ids:
                    t[r] += torch.bincount(torch.tensor(self.results[i].ids), minlength=V)[:V].to(t)
            return t

        if want_seen:
            self.seen = torch.cat([self.seen, seen_of(new)]) if self.track_seen and old else seen_of(old + new)
        if want_counts:
            self.counts = (torch.cat([self.counts, counts_of(new)]) if self.track_counts and old
                           else counts_of(old + new))
        self.track_seen, self.track_counts = want_seen, want_counts

    def cancel(self, indices) -> None:
        """Drop requests from the batch (a client went away, a timeout); they finish as 'abort'."""
        drop = set(indices) & set(self.active)
        if not drop:
            return
        for i in drop:
            self.results[i].finish_reason = "abort"
        self._keep_rows([r for r, i in enumerate(self.active) if i not in drop])

    def forget(self, index: int) -> None:
        """Free a finished request's state once its caller has read it (a long-running server batch)."""
        if index in self.active:
            raise LmstackError(f"generate: request {index} is still running")
        self.results[index] = self.prompts[index] = self.generators[index] = None  # type: ignore[call-overload]

    def _compact_cache(self):
        """Drop leading slots that no remaining row uses, once they are a good part of the cache."""
        n = self.cache.empty_front()
        if n and n >= max(16, self.cache.length // 4):
            self.cache.shift(-n)

    def run(self) -> list[Completion]:
        while not self.done:
            self.step()
        if self.tokenizer is not None and not self.need_text:
            for r in self.results:
                ids = r.ids[:-1] if r.finish_reason == "stop" and r.ids else r.ids
                r.text = self.tokenizer.decode(ids)
        return self.results


def _find_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Index where the earliest stop string starts (searching only text not yet streamed, and a margin)."""
    best = None
    for s in stops:
        j = text.find(s, max(0, emitted - len(s)))
        if j >= 0 and (best is None or j < best):
            best = j
    return best


def _safe_prefix(text: str, stops: list[str]) -> int:
    """Length of the text that can be shown: no half-decoded character, no possible start of a stop string."""
    n = len(text)
    while n and text[n - 1] == "\ufffd":  # an incomplete UTF-8 sequence decodes as U+FFFD for now
        n -= 1
    for s in stops:
        for k in range(min(len(s) - 1, n), 0, -1):
            if text[:n].endswith(s[:k]):
                n -= k
                break
    return n


def generate(model: Transformer, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
             tokenizer=None) -> list[Completion]:
    """Decode a batch of token-id prompts; beam search when params.num_beams > 1."""
    if isinstance(params, SamplingParams) and params.num_beams > 1:
        return [beam_search(model, p, params, tokenizer) for p in prompts]
    return Generation(model, prompts, params, tokenizer).run()


def stream(model: Transformer, prompts: list[list[int]], params, tokenizer) -> Iterator[StreamEvent]:
    gen = Generation(model, prompts, params, tokenizer, stream_text=True)
    while not gen.done:
        yield from gen.step()


@torch.inference_mode()
def beam_search(model: Transformer, prompt: list[int], params: SamplingParams, tokenizer=None) -> Completion:
    """Beam search with Hugging Face's scoring, length penalty and stopping rules, for one prompt.

    Candidates are the top 2*num_beams of (beam score + log-prob); candidates ending in a stop token
    and ranked within num_beams become finished hypotheses scored sum_logprob / gen_len**length_penalty.
    """
    nb, lp, es = params.num_beams, params.length_penalty, params.early_stopping
    device = next(model.parameters()).device
    ctx = model.cfg.max_seq_len
    if len(prompt) >= ctx:
        raise LmstackError(f"prompt has {len(prompt)} tokens; the model's context is {ctx} tokens")
    max_new = min(params.max_new_tokens, ctx - len(prompt))
    stop = _stop_ids(model, tokenizer, params)
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
