"""The KV cache: keys and values of the tokens decoded so far, with each slot's key position.

The model (model/transformer.py) talks to a cache through four members only, so any object
offering them can stand in (a paged cache, a cache that records what it is asked):

- `length`: slots already filled; the new tokens' queries sit at slots length .. length+T-1;
- `positions(T) -> [B, T]`: the positions that continue each row (one past its last valid key);
- `append(key_pos) -> (all_key_pos [B, S], holes)`: reserve T slots for the new tokens with these
  positions (-1 for padding) and return every slot's position; `holes` says whether any slot so
  far is empty, so that masks are needed even for a one-token step;
- `update(layer, k, v) -> (k, v)`: store this layer's new keys/values [B, kv_heads, T, hd] in
  the reserved slots and return all of them so far [B, kv_heads, S, hd].

Slots are shared across the batch, and each slot records its token's position (or -1 for padding):
the model derives masks from that (causal by slot order, padding masked, sliding windows by position
gap) and RoPE positions per row. So the same cache serves left-padded batches, beam search (rows
reordered), finished rows leaving a batch (rows dropped) and requests joining one (`merge`).
"""

from __future__ import annotations

import torch

from lmstack.errors import LmstackError
from lmstack.model.config import ModelConfig


class KVCache:
    """Preallocated keys/values for every layer, shared write position, per-row key positions."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.key_pos = torch.full((batch, max_len), -1, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len
        self.padded = False  # any hole so far: masks needed even for one-token steps

    @property
    def batch(self) -> int:
        return self.key_pos.shape[0]

    # ---- what the model calls (see the module docstring) ------------------------------------------------------

    def positions(self, T: int) -> torch.Tensor:
        """Positions [B, T] of T new tokens in each row: continuing after the row's last valid key."""
        steps = torch.arange(T, device=self.key_pos.device)
        if self.length == 0:
            return steps.expand(self.batch, T)
        return self.next_positions()[:, None] + steps

    def append(self, key_pos: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Reserve slots for key_pos.shape[1] new tokens at these positions (-1: padding)."""
        start, T = self.length, key_pos.shape[1]
        if start + T > self.max_len:
            raise LmstackError(f"KV cache full: {start + T} tokens > {self.max_len} allocated")
        self.key_pos[:, start:start + T] = key_pos
        if not bool((key_pos >= 0).all()):
            self.padded = True
        self.length = start + T
        return self.key_pos[:, : self.length], self.padded

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values into the slots `append` reserved; all of this layer's so far."""
        end = self.length
        start = end - k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    # ---- what the engine calls -----------------------------------------------------------------------------

    def next_positions(self) -> torch.Tensor:
        """Position of the next token in each row: one past the last valid key."""
        if self.length == 0:
            return torch.zeros(self.batch, dtype=torch.long, device=self.key_pos.device)
        return self.key_pos[:, : self.length].max(dim=1).values + 1

    def reorder(self, index: torch.Tensor):
        """Pick rows (beam search reorders beams, a server drops finished requests)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.key_pos = self.key_pos.index_select(0, index)

    # ---- continuous batching: requests join and leave a running batch ------------------------------------------
    # (under inference_mode: the cache's tensors are made there, and only there may they be updated in place)

    @torch.inference_mode()
    def resize(self, max_len: int):
        """Reallocate to max_len slots (>= length), keeping the filled ones."""
        if max_len < self.length:
            raise LmstackError(f"KV cache: cannot shrink to {max_len} slots below the {self.length} in use")
        if max_len == self.max_len:
            return
        self.k = [_placed(t, max_len, 0, self.length, 0) for t in self.k]
        self.v = [_placed(t, max_len, 0, self.length, 0) for t in self.v]
        self.key_pos = _placed(self.key_pos, max_len, 0, self.length, -1)
        self.max_len = max_len

    def ensure_room(self, n: int):
        """Make room for n more slots, growing geometrically so that growth is rare."""
        if self.length + n > self.max_len:
            self.resize(max(self.length + n, 2 * self.max_len))

    @torch.inference_mode()
    def shift(self, n: int):
        """Move the filled slots by n: n > 0 prepends n empty slots, n < 0 drops the first -n slots.

        Attention is causal by slot order and positions come from key_pos, so moving every row's
        slots together changes nothing a row sees; dropped slots must be empty (-1) in every row.
        """
        if n == 0:
            return
        L = self.length
        if n < 0:
            d = -n
            if d > L:
                raise LmstackError(f"KV cache: cannot drop {d} slots of {L}")
            for t in [*self.k, *self.v]:
                t[:, :, : L - d] = t[:, :, d:L].clone()
            self.key_pos[:, : L - d] = self.key_pos[:, d:L].clone()
            self.key_pos[:, L - d:L] = -1
            self.length = L - d
            return
        self.ensure_room(n)
        for t in [*self.k, *self.v]:
            t[:, :, n:n + L] = t[:, :, :L].clone()
        self.key_pos[:, n:n + L] = self.key_pos[:, :L].clone()
        self.key_pos[:, :n] = -1
        self.length = L + n
        self.padded = True

    def empty_front(self) -> int:
        """How many leading slots are empty in every row (droppable with shift(-n))."""
        if self.length == 0 or self.batch == 0:
            return self.length
        valid = (self.key_pos[:, : self.length] >= 0).any(dim=0)
        return int(valid.long().argmax()) if bool(valid.any()) else self.length

    @torch.inference_mode()
    def merge(self, other: KVCache):
        """Append other's rows to this batch, right-aligned to this cache's length.

        Both caches then end at the same slot, so the next decode step writes every row's token into
        one shared slot; the merged rows' earlier slots are empty (key_pos -1) and masked out.
        """
        if other.length > self.length:
            self.shift(other.length - self.length)
        off = self.length - other.length
        self.k = [torch.cat([a, _placed(b, self.max_len, off, other.length, 0)]) for a, b in zip(self.k, other.k)]
        self.v = [torch.cat([a, _placed(b, self.max_len, off, other.length, 0)]) for a, b in zip(self.v, other.v)]
        self.key_pos = torch.cat([self.key_pos, _placed(other.key_pos, self.max_len, off, other.length, -1)])
        self.padded = True


def _placed(t: torch.Tensor, slots: int, off: int, n: int, fill) -> torch.Tensor:
    """A copy of t ([B, H, S, hd] keys/values or [B, S] positions) with `slots` slots, its first n
    slots moved to off..off+n and the rest filled with `fill`."""
    dim = 2 if t.dim() == 4 else 1
    shape = list(t.shape)
    shape[dim] = slots
    new = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    new.narrow(dim, off, n).copy_(t.narrow(dim, 0, n))
    return new


class PrefixCache:
    """Keys and values of recently prefilled prompts, reused by prompts that start the same way (a few-shot
    prefix, a long system prompt, a client repeating a request), as vLLM's automatic prefix caching and
    llama-server's prompt cache do.

    A token's keys and values depend only on the tokens up to it (causal attention) and on its position, and
    every prompt starts at position 0: the first m slots of a stored prompt serve any prompt whose first m
    tokens are the same. The longest such match over the stored prompts is reused; the least recently used
    prompts go once more than `max_tokens` tokens are stored. Tensors are [1, kv_heads, tokens, head_dim] per
    layer, copies owned by the cache (the running batch moves and drops its own)."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # in LRU order
        self.tokens = 0
        self.lookups = self.hits = self.hit_tokens = 0
        self._table: tuple[list[tuple], torch.Tensor] | None = None  # the stored prompts as one padded matrix

    @staticmethod
    def bytes_per_token(cfg: ModelConfig, dtype=torch.float32) -> int:
        return 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * torch.empty(0, dtype=dtype).element_size()

    def _common(self, tokens: list[int]) -> torch.Tensor:
        """Leading tokens each stored prompt shares with `tokens`, in one vectorised comparison (a scan of
        thousands of prompts in Python would cost milliseconds per request)."""
        if self._table is None:
            keys = list(self.entries)
            mat = torch.full((len(keys), max(map(len, keys))), -1, dtype=torch.long)
            for i, k in enumerate(keys):
                mat[i, :len(k)] = torch.tensor(k)
            self._table = (keys, mat)
        mat = self._table[1]
        n = min(len(tokens), mat.shape[1])
        return (mat[:, :n] == torch.tensor(tokens[:n])).cumprod(1).sum(1)

    def match(self, tokens: list[int]) -> tuple[int, tuple | None]:
        """(m, key): the longest run of leading `tokens` whose keys/values are stored, and where."""
        self.lookups += 1
        if not tokens or not self.entries:
            return 0, None
        common = self._common(tokens)
        best = int(common.max())
        if not best:
            return 0, None
        self.hits += 1
        self.hit_tokens += best
        return best, self._table[0][int(common.argmax())]

    def get(self, key, m: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The first m slots of a stored prompt (views); marks it recently used."""
        k, v = self._touch(key)
        return [t[:, :, :m] for t in k], [t[:, :, :m] for t in v]

    def _touch(self, key):
        """Move a stored prompt to the recently used end (the table's rows keep their own key order)."""
        self.entries[key] = kv = self.entries.pop(key)
        return kv

    def put(self, tokens: list[int], k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        """Store a prompt's keys/values (tensors the cache may keep: copies, not views of a running batch). A
        stored prompt that this one extends is replaced; one that already extends this one makes storing it
        pointless."""
        n = len(tokens)
        if n == 0 or n > self.max_tokens:
            return
        key = tuple(tokens)
        if self.entries:
            common = self._common(tokens).tolist()
            for other, m in zip(self._table[0], common):  # the table's own key order (LRU moves keep it valid)
                if m == n:  # `other` starts with this whole prompt
                    self._touch(other)
                    return
                if m == len(other):  # this prompt extends `other`
                    self._drop(other)
        self.entries[key] = (list(k), list(v))
        self._table = None
        self.tokens += n
        while self.tokens > self.max_tokens:
            self._drop(next(iter(self.entries)))

    def _drop(self, key) -> None:
        del self.entries[key]
        self._table = None
        self.tokens -= len(key)

    def stats(self) -> dict:
        return {"entries": len(self.entries), "tokens": self.tokens, "lookups": self.lookups, "hits": self.hits,
                "hit_tokens": self.hit_tokens}
