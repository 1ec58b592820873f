"""The generation engine: one loop that serves `generate`, `chat`, the server, PPO rollouts and evaluation.

A `Generation` is a batch of `Request`s (one per row: a prompt and its sampling parameters)
decoding together over one KV cache. Prompts of different lengths are left-padded; each request
keeps its own sampling parameters, stop conditions and random generator; finished rows leave the
batch (the cache is compacted), and `step()` can be driven by a caller that wants tokens as they
come (streaming, a server's scheduler, which also `add`s and `cancel`s requests between steps).
Stop conditions are in stop.py, beam search in beam.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.infer.beam import beam_search, check_beam_params
from lmstack.infer.cache import KVCache, PrefixCache
from lmstack.infer.grammar import Matcher, apply_masks, grammar_tokenizer
from lmstack.infer.request import Completion, Request, StreamEvent
from lmstack.infer.sampling import SamplingParams, apply_penalties, filter_logits, sample
from lmstack.infer.stop import StopText, stop_token_ids

__all__ = ["Completion", "Generation", "Request", "StreamEvent", "beam_search", "generate", "generate_rows", "stream"]


class Generation:
    """A batch decoding together. `Generation(model, prompts, params, tokenizer)` starts with these
    prompts; `Generation.empty(...)` with none, for requests to join with `add`."""

    def __init__(self, model, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 tokenizer=None, stream_text: bool = False, prefix_cache: PrefixCache | None = None):
        if not prompts:
            raise LmstackError("generate: no prompts given")
        if isinstance(params, SamplingParams):
            params = [params] * len(prompts)
        self._start(model, tokenizer, stream_text, "stop strings and streaming text need a tokenizer", prefix_cache)
        reqs = self.add([Request(p, sp) for p, sp in zip(prompts, params)])
        if all(r.params.seed == reqs[0].params.seed for r in reqs) and reqs[0].params.seed is not None:
            for r in reqs:  # one seed: one random stream for the batch, as HF
                r.generator = reqs[0].generator

    @classmethod
    def empty(cls, model, tokenizer=None, stream_text: bool = False,
              prefix_cache: PrefixCache | None = None) -> Generation:
        """A generation with no request yet; requests join with `add` (a server's running batch). With a
        `prefix_cache`, joining prompts reuse the keys/values of earlier prompts that start the same way."""
        gen = cls.__new__(cls)
        gen._start(model, tokenizer, stream_text, "streaming text needs a tokenizer", prefix_cache)
        return gen

    def _start(self, model, tokenizer, stream_text: bool, why: str, prefix_cache: PrefixCache | None = None):
        if stream_text and tokenizer is None:
            raise LmstackError(f"generate: {why}")
        self.model, self.tokenizer, self.need_text = model, tokenizer, stream_text
        self.prefix_cache = prefix_cache
        self.adapters = getattr(model, "adapters", None)  # LoRA adapters served beside the base, per row
        self.device = next(model.parameters()).device
        self.requests: dict[int, Request] = {}  # by index, until forgotten
        self.running: list[Request] = []  # the batch, in the cache's row order
        self.cache: KVCache | None = None
        self._next = 0
        self._prefilled = False
        self._merged = False  # rows joined a running batch: its cache may hold slots no row uses any more
        self.track_seen = self.track_counts = False  # penalty state: tokens seen [B, V], output counts [B, V]
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return not self.running

    # ---- requests join and leave --------------------------------------------------------------------------

    @torch.inference_mode()
    def add(self, requests: list[Request]) -> list[Request]:
        """Add requests (before the first step or between steps); returns them, their indices set.

        While a batch is running, the new prompts (all but their last token) are prefilled together
        in a cache of their own, which is then merged into the running cache right-aligned to its
        length (their earlier slots are empty, key_pos -1, masked out). The next step feeds each new
        row its last prompt token beside the other rows' last outputs, so a request decodes as it
        would alone. Before the first step, or once every row has finished, they join the next prefill.
        Each seeded request gets its own random generator, so its samples do not depend on its neighbours.
        A request with no room to generate finishes at once ("length").
        """
        ctx = self.model.cfg.max_seq_len
        if any(len(r.prompt) == 0 for r in requests):
            raise LmstackError("generate: empty prompt (no tokens); give at least one token, e.g. BOS")
        if any(r.params.num_beams > 1 for r in requests):
            raise LmstackError("generate: beam search (num_beams > 1) cannot join a batch or stream; "
                               "use generate() or beam_search() (one prompt at a time)")
        for j, r in enumerate(requests):
            if len(r.prompt) >= ctx:
                raise LmstackError(f"prompt {j} has {len(r.prompt)} tokens; the model's context is {ctx} tokens")
        if any(r.params.stop for r in requests) and not self.need_text:
            if self.tokenizer is None:
                raise LmstackError("generate: stop strings and streaming text need a tokenizer")
            self.need_text = True
        new = []
        for r in requests:
            sp = r.params
            r.prompt = list(r.prompt)
            r.index, self._next = self._next, self._next + 1
            r.result = Completion(prompt_ids=list(r.prompt))
            r.stop_ids = stop_token_ids(self.model.cfg.eos_token_id, self.tokenizer, sp)
            r.budget = min(sp.max_new_tokens, ctx - len(r.prompt))
            r.generator = torch.Generator(device=self.device).manual_seed(sp.seed) if sp.seed is not None else None
            if sp.adapter and (self.adapters is None or not 0 < sp.adapter <= len(self.adapters.names)):
                raise LmstackError(f"generate: adapter {sp.adapter} asked for, but the model serves "
                                   f"{len(self.adapters.names) if self.adapters else 0} adapters")
            if sp.grammar is not None:
                r.matcher = Matcher(grammar_tokenizer(self.tokenizer, self.model.cfg.vocab_size, r.stop_ids),
                                    sp.grammar)
            self.requests[r.index] = r
            if r.budget > 0:
                new.append(r)
            else:
                r.result.finish_reason = "length"
        if not new:
            return requests
        if self.done:  # the old cache holds only finished rows: start afresh
            self.cache, self._prefilled, self._merged = None, False, False
        if self._prefilled or self.prefix_cache is not None:
            joining, new = self._prefill_joining(new)
            if self._prefilled:
                self.cache.merge(joining)
            else:
                self.cache, self._prefilled = joining, True
            self._merged = True
        old = list(self.running)
        self.running = old + new
        self._track(old, new)
        return requests

    def cancel(self, requests: list[Request]) -> None:
        """Drop requests from the batch (a client went away, a timeout); they finish as 'abort'."""
        drop = set(requests) & set(self.running)
        if not drop:
            return
        for r in drop:
            r.result.finish_reason = "abort"
        self._keep_rows([k for k, r in enumerate(self.running) if r not in drop])

    def forget(self, request: Request) -> None:
        """Free a finished request's state once its caller has read it (a long-running server batch)."""
        if request in self.running:
            raise LmstackError(f"generate: request {request.index} is still running")
        self.requests.pop(request.index, None)
        request.generator = request.text = request.matcher = None

    # ---- decoding -------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[StreamEvent]:
        """Run one forward pass and choose one token for every running request."""
        if self.done:
            return []
        if not self._prefilled:
            logits = self._prefill()
        else:
            # A row that joined a running batch (add) has no output yet: it feeds its last prompt token.
            last = torch.tensor([[r.result.ids[-1] if r.result.ids else r.prompt[-1]] for r in self.running],
                                device=self.device)
            if self._merged:
                self._compact_cache()
            self.cache.ensure_room(1)
            self._select(self.running)
            logits = self.model(last, cache=self.cache, last_only=True)[:, -1]
        logits = logits.float()
        rows = self.running
        params = [r.params for r in rows]
        raw_logprobs = F.log_softmax(logits, dim=-1)
        scores = apply_penalties(logits, params, self.seen if self.track_seen else None,
                                 self.counts if self.track_counts else None)
        if any(r.matcher is not None for r in rows):  # structured output: only what each row's grammar allows
            scores = apply_masks(scores, [r.matcher for r in rows])
        scores = filter_logits(scores, params)
        next_ids = sample(scores, params, [r.generator for r in rows])
        chosen_lp = raw_logprobs.gather(1, next_ids[:, None])[:, 0].tolist()
        want_top = [p.logprobs for p in params]
        top = None
        if any(w for w in want_top):
            top = raw_logprobs.topk(max(w or 0 for w in want_top), dim=-1)
        if self.track_seen:
            self.seen[torch.arange(len(rows)), next_ids] = True
        if self.track_counts:
            self.counts[torch.arange(len(rows)), next_ids] += 1
        events, keep = [], []
        for k, (r, tok) in enumerate(zip(rows, next_ids.tolist())):
            res = r.result
            res.ids.append(tok)
            res.logprobs.append(chosen_lp[k])
            if top is not None and want_top[k]:
                n = want_top[k]
                res.top_logprobs.append(dict(zip(top.indices[k, :n].tolist(), top.values[k, :n].tolist())))
            reason = None
            end_token = tok in r.stop_ids
            if r.matcher is not None and not end_token:
                r.matcher.advance(tok)
            if end_token or (r.matcher is not None and r.matcher.done):  # or its grammar is complete
                reason = "stop"
            elif len(res.ids) >= r.budget:
                reason = "length"
            delta = ""
            if self.need_text:
                if r.text is None:
                    r.text = StopText(self.tokenizer, r.params.stop)
                delta, hit = r.text.update(res.ids[:-1] if end_token else res.ids, final=reason is not None)
                if hit:
                    reason = "stop"
                res.text = r.text.text
            if reason:
                res.finish_reason = reason
            else:
                keep.append(k)
            events.append(StreamEvent(r.index, tok, delta, reason is not None, reason, r))
        if len(keep) < len(rows):
            self._keep_rows(keep)
        return events

    def run(self) -> list[Completion]:
        """Decode until every request has finished; their completions in order of arrival."""
        while not self.done:
            self.step()
        results = [r.result for r in self.requests.values()]
        if self.tokenizer is not None and not self.need_text:
            for r, res in zip(self.requests.values(), results):
                ended = res.finish_reason == "stop" and res.ids and res.ids[-1] in r.stop_ids  # not its text
                res.text = self.tokenizer.decode(res.ids[:-1] if ended else res.ids)
        return results

    # ---- batch state ----------------------------------------------------------------------------------------

    def _prefill(self):
        """The first forward. Rows with the same prompt (several samples of one prompt, as in best-of-n, GRPO's
        groups or a labelling step's k answers) share one prefill; its cache rows are then copied out to each."""
        rows = [r.prompt for r in self.running]
        max_new = max(r.budget for r in self.running)
        pad = self.tokenizer.pad_id if self.tokenizer is not None and self.tokenizer.pad_id is not None else 0
        first: dict[tuple, int] = {}
        owner = [first.setdefault(tuple(t), len(first)) for t in rows]
        shared = self.adapters is None and len(first) < len(rows)  # rows with different LoRA adapters differ
        unique = [list(t) for t in first] if shared else rows  # in order of first appearance
        self.cache = KVCache(self.model.cfg, len(unique), max(len(t) for t in rows) + max_new, device=self.device,
                             dtype=self.model.cache_dtype)
        self._select(self.running)
        logits = self._forward_left_padded(unique, self.cache, pad)
        if shared:
            idx = torch.tensor(owner, device=self.device)
            self.cache.reorder(idx)
            logits = logits.index_select(0, idx)
        self._prefilled = True
        return logits[:, -1]

    def _prefill_joining(self, new: list[Request]) -> tuple[KVCache, list[Request]]:
        """A cache holding the joining requests' prompts but their last token (which the next step feeds), and
        the requests in its row order. With a prefix cache each row starts from the longest stored run of its
        prompt's first tokens, right-aligned to the longest such run, and only the rest is computed (one
        left-padded forward for all rows); the prompts are then stored for later requests."""
        rows = [r.prompt[:-1] for r in new]
        self._select(new)
        pc = self.prefix_cache
        if pc is None:
            return self._prefill_rows(rows), new
        # Stored keys/values are the base model's: a row with a LoRA adapter neither reuses nor stores them.
        hits = [pc.match(t) if not r.params.adapter else (0, None) for t, r in zip(rows, new)]
        M = max(m for m, _ in hits)
        rest = [t[m:] for t, (m, _) in zip(rows, hits)]
        R = max(len(t) for t in rest)
        cache = KVCache(self.model.cfg, len(rows), M + R, device=self.device, dtype=self.model.cache_dtype)
        for j, (m, key) in enumerate(hits):
            if m:
                ks, vs = pc.get(key, m)
                for layer, (k, v) in enumerate(zip(ks, vs)):
                    cache.k[layer][j, :, M - m:M] = k[0]
                    cache.v[layer][j, :, M - m:M] = v[0]
                cache.key_pos[j, M - m:M] = torch.arange(m, device=self.device)
        cache.length, cache.padded = M, any(m < M for m, _ in hits)
        if R:
            self._forward_left_padded(rest, cache, 0)
        L = cache.length
        for j, ((m, _), t) in enumerate(zip(hits, rest)):
            if t and not new[j].params.adapter:  # something new was computed: keep the whole prompt (its slots
                # gathered into copies)
                idx = torch.cat([torch.arange(M - m, M), torch.arange(L - len(t), L)]).to(self.device)
                pc.put(rows[j], [k[j:j + 1, :, idx] for k in cache.k], [v[j:j + 1, :, idx] for v in cache.v])
        return cache, new

    def _select(self, reqs: list[Request]) -> None:
        """Each row's LoRA adapter for the next forward, where the model serves several."""
        if self.adapters is not None:
            self.adapters.select([r.params.adapter for r in reqs], self.device)

    def _prefill_rows(self, rows: list[list[int]]) -> KVCache:
        """A cache holding these token rows, left-padded to one length (rows may be empty)."""
        T = max(len(r) for r in rows)
        cache = KVCache(self.model.cfg, len(rows), T, device=self.device, dtype=self.model.cache_dtype)
        if T:
            self._forward_left_padded(rows, cache, 0)
        return cache

    def _forward_left_padded(self, rows: list[list[int]], cache: KVCache, pad: int):
        """Run token rows, left-padded with `pad` to one length, into `cache` (each row continuing from its
        cached tokens, if any); the last position's logits."""
        T, B = max(len(r) for r in rows), len(rows)
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for k, toks in enumerate(rows):
            if toks:
                ids[k, T - len(toks):] = torch.tensor(toks)
                mask[k, T - len(toks):] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if cache.length:
            positions = positions + cache.next_positions()[:, None]
        padded = not bool(mask.all())
        return self.model(ids, positions=positions, cache=cache, pad_mask=mask if padded else None, last_only=True)

    def _keep_rows(self, keep: list[int]):
        """Keep only these rows (positions in self.running) in the batch, its cache and penalty state.

        What only the leaving rows needed goes with them: the whole cache once no row is left (a server's
        batch may then sit idle for long), the penalty state once no remaining row uses a penalty.
        """
        self.running = [self.running[k] for k in keep]
        if not keep:
            self.cache, self._prefilled, self._merged = None, False, False
            self._free_penalty_state(seen=True, counts=True)
            return
        idx = torch.tensor(keep, device=self.device)
        if self.cache is not None:
            self.cache.reorder(idx)
        if self.track_seen:
            self.seen = self.seen[idx]
        if self.track_counts:
            self.counts = self.counts[idx]
        self._free_penalty_state(
            seen=self.track_seen and all(r.params.repetition_penalty == 1.0 for r in self.running),
            counts=self.track_counts and not any(r.params.frequency_penalty or r.params.presence_penalty
                                                 for r in self.running))

    def _free_penalty_state(self, seen: bool, counts: bool):
        if seen:
            self.seen, self.track_seen = None, False
        if counts:
            self.counts, self.track_counts = None, False

    def _track(self, old: list[Request], new: list[Request]):
        """Penalty state (tokens seen, output counts) for the rows old + new, in batch order."""
        V = self.model.cfg.vocab_size
        want_seen = any(r.params.repetition_penalty != 1.0 for r in old + new) or self.track_seen
        want_counts = any(r.params.frequency_penalty or r.params.presence_penalty for r in old + new) or \
            self.track_counts

        def seen_of(rows):
            t = torch.zeros(len(rows), V, dtype=torch.bool, device=self.device)
            for k, r in enumerate(rows):
                t[k, torch.tensor(r.prompt + r.result.ids, device=self.device)] = True
            return t

        def counts_of(rows):
            t = torch.zeros(len(rows), V, dtype=torch.float32, device=self.device)
            for k, r in enumerate(rows):
                if r.result.ids:
                    t[k] += torch.bincount(torch.tensor(r.result.ids), minlength=V)[:V].to(t)
            return t

        if want_seen:
            self.seen = torch.cat([self.seen, seen_of(new)]) if self.track_seen and old else seen_of(old + new)
        if want_counts:
            self.counts = (torch.cat([self.counts, counts_of(new)]) if self.track_counts and old
                           else counts_of(old + new))
        self.track_seen, self.track_counts = want_seen, want_counts

    def _compact_cache(self):
        """Drop leading slots that no remaining row uses, once they are a good part of the cache."""
        n = self.cache.empty_front()
        if n and n >= max(16, self.cache.length // 4):
            self.cache.shift(-n)


def generate(model, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
             tokenizer=None) -> list[Completion]:
    """Decode a batch of token-id prompts; beam search (one prompt at a time) where num_beams > 1."""
    per = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    if len(per) != len(prompts):
        raise LmstackError(f"generate: {len(per)} sampling settings for {len(prompts)} prompts")
    beams = [k for k, p in enumerate(per) if p.num_beams > 1]
    if not beams:
        return Generation(model, prompts, params, tokenizer).run()
    for k in beams:  # refused before any decoding
        check_beam_params(per[k], tokenizer)
    out: list[Completion | None] = [None] * len(prompts)
    rest = [k for k in range(len(prompts)) if per[k].num_beams == 1]
    if rest:
        sampled = Generation(model, [prompts[k] for k in rest], [per[k] for k in rest], tokenizer).run()
        for k, res in zip(rest, sampled):
            out[k] = res
    for k in beams:
        out[k] = beam_search(model, prompts[k], per[k], tokenizer)
    return out  # type: ignore[return-value]


def generate_rows(model, prompts: list[list[int]], params: list[SamplingParams], tokenizer=None,
                  max_rows: int = 256, cache_budget: int = 1 << 30) -> list[Completion]:
    """`generate` for many rows in bounded batches: rows ordered by prompt length (little left padding, identical
    prompts side by side so they share a prefill) and decoded at most `max_rows` at a time, fewer where their
    keys/values would pass `cache_budget` bytes; completions in the order given. Every sampled row needs its own
    seed, so that its answer does not depend on which rows it was batched with."""
    if len(params) != len(prompts):
        raise LmstackError(f"generate: {len(params)} sampling settings for {len(prompts)} prompts")
    if any(p.temperature > 0 and p.seed is None for p in params):
        raise LmstackError("generate_rows: a sampled row needs its own seed (SamplingParams.seed)")
    order = sorted(range(len(prompts)), key=lambda k: (len(prompts[k]), prompts[k]))
    longest = max((len(t) for t in prompts), default=0) + max((p.max_new_tokens for p in params), default=0)
    rows = max(1, min(max_rows, cache_budget // max(1, PrefixCache.bytes_per_token(model.cfg) * longest)))
    out: list[Completion | None] = [None] * len(prompts)
    for s in range(0, len(order), rows):
        part = order[s:s + rows]
        for k, res in zip(part, generate(model, [prompts[k] for k in part], [params[k] for k in part], tokenizer)):
            out[k] = res
    return out  # type: ignore[return-value]


def stream(model, prompts: list[list[int]], params, tokenizer) -> Iterator[StreamEvent]:
    gen = Generation(model, prompts, params, tokenizer, stream_text=True)
    while not gen.done:
        yield from gen.step()
