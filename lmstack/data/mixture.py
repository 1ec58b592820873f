"""Pretraining batches drawn from a weighted mixture of token datasets.

Sources are drawn by weight, not by size (as in GPT-3's table 2.2): a small high-quality source can be seen for
several epochs while a huge web crawl is seen for a fraction of one, and `epochs()` reports which happened.

The global batch of a step is a pure function of (seed, step). A run resumes exactly from the step alone, and
data-parallel ranks each take a slice of the very batch a single process would have drawn, so the world size
does not change what is trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from lmstack.errors import LmstackError


def parse_mix(items: Sequence[str]) -> dict[str, float]:
    """["web=0.6", "books=0.4"] -> {"web": 0.6, "books": 0.4}, normalised to sum to 1."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise LmstackError(f"--mix {item!r}: expected NAME=WEIGHT, e.g. web=0.6")
        try:
            w = float(value)
        except ValueError:
            raise LmstackError(f"--mix {item!r}: weight {value!r} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise LmstackError(f"--mix {item!r}: weight must be a finite number >= 0")
        if name in out:
            raise LmstackError(f"--mix {item!r}: source {name!r} given twice")
        out[name] = w
    return _normalise(out, "--mix")


def _normalise(weights: Mapping[str, float], what: str) -> dict[str, float]:
    total = sum(weights.values())
    if not weights or total <= 0:
        raise LmstackError(f"{what}: weights must include at least one positive weight")
    return {k: v / total for k, v in weights.items()}


class Mixture:
    """Random windows of seq_len + 1 tokens from weighted sources; `get_batch(step)` gives (inputs, targets)."""

    def __init__(self, sources: Mapping, weights: Mapping[str, float], seq_len: int, global_batch: int,
                 seed: int = 0):
        if seq_len < 1 or global_batch < 1:
            raise LmstackError(f"mixture: seq_len ({seq_len}) and global batch ({global_batch}) must be >= 1")
        missing = [n for n in weights if n not in sources]
        unweighted = [n for n in sources if n not in weights]
        if missing:
            raise LmstackError(f"mixture: weight given for {missing[0]!r}, which is not a source "
                               f"(sources: {', '.join(sources)})")
        if unweighted:
            raise LmstackError(f"mixture: source {unweighted[0]!r} has no weight")
        for n, w in weights.items():
            if not math.isfinite(w) or w < 0:
                raise LmstackError(f"mixture: weight of {n!r} is {w}; must be a finite number >= 0")
        self.names = list(sources)
        self.sources = [sources[n] for n in self.names]
        probs = _normalise({n: float(weights[n]) for n in self.names}, "mixture")
        self.probs = np.array([probs[n] for n in self.names])
        self.sizes = np.array([int(s.n_tokens) for s in self.sources], np.int64)
        for n, size, p in zip(self.names, self.sizes, self.probs):
            if p > 0 and size < seq_len + 1:
                raise LmstackError(f"mixture: source {n!r} has {size} tokens, fewer than seq_len + 1 = "
                                   f"{seq_len + 1}")
        # Source k is drawn for a uniform u when cdf[k-1] <= u < cdf[k]; the bound of the last weighted source is
        # pinned to 1 so that rounding can never send u past it (to nothing, or to a source of weight 0)
        self._cdf = np.cumsum(self.probs)
        self._cdf[int(np.flatnonzero(self.probs > 0)[-1]):] = 1.0
        self.seq_len = seq_len
        self.global_batch = global_batch
        self.seed = seed
        self._counted = 0  # steps already replayed into _counts (training reports ask again and again)
        self._counts = np.zeros(len(self.names), np.int64)

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.probs.tolist()))

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, step])

    def _draw_sources(self, rng: np.random.Generator) -> np.ndarray:
        # Sources are drawn for the whole batch before any window, so replaying only the source choice (for
        # epochs) consumes the generator exactly as get_batch does
        src = np.searchsorted(self._cdf, rng.random(self.global_batch), side="right")
        return np.minimum(src, len(self.names) - 1)

    def plan(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, window start) of every row of the global batch of `step`."""
        rng = self._rng(step)
        src = self._draw_sources(rng)
        starts = rng.integers(0, self.sizes[src] - self.seq_len)
        return src, starts

    def get_batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if world < 1 or not 0 <= rank < world:
            raise LmstackError(f"mixture: rank {rank} is not in a world of {world}")
        if self.global_batch % world:
            raise LmstackError(f"mixture: global batch {self.global_batch} does not divide among {world} ranks")
        per = self.global_batch // world
        src, starts = self.plan(step)
        rows = range(rank * per, (rank + 1) * per)
        window = np.empty((per, self.seq_len + 1), np.int64)
        for out_row, r in enumerate(rows):
            s = int(starts[r])
            window[out_row] = self.sources[src[r]].tokens[s : s + self.seq_len + 1]
        window = torch.from_numpy(window)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def rows_drawn(self, steps: int) -> dict[str, int]:
        """How many rows each source supplied in steps 0 .. steps-1."""
        if steps < self._counted:
            self._counted, self._counts = 0, np.zeros(len(self.names), np.int64)
        for step in range(self._counted, steps):
            self._counts += np.bincount(self._draw_sources(self._rng(step)), minlength=len(self.names))
        self._counted = max(self._counted, steps)
        return dict(zip(self.names, self._counts.tolist()))

    def tokens_drawn(self, steps: int) -> dict[str, int]:
        """Training tokens (targets) each source supplied in steps 0 .. steps-1."""
        return {n: c * self.seq_len for n, c in self.rows_drawn(steps).items()}

    def epochs(self, steps: int) -> dict[str, float]:
        """Tokens drawn / source size for steps 0 .. steps-1: 2.0 means the source was seen about twice."""
        drawn = self.tokens_drawn(steps)
        return {n: drawn[n] / int(size) for n, size in zip(self.names, self.sizes)}


def val_batches(dataset, seq_len: int, batch: int, max_batches: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential, non-overlapping windows over a dataset for validation loss; every target token counts once.

    Window i covers tokens [i*seq_len, i*seq_len + seq_len + 1); the last batch may be smaller.
    """
    n = int(dataset.n_tokens)
    windows = (n - 1) // seq_len
    if windows < 1:
        name = getattr(dataset, "name", "dataset")
        raise LmstackError(f"{name}: {n} tokens, fewer than seq_len + 1 = {seq_len + 1} for one validation window")
    if max_batches is not None:
        windows = min(windows, max_batches * batch)
    tokens = dataset.tokens
    for first in range(0, windows, batch):
        k = min(batch, windows - first)
        a = first * seq_len
        flat = np.asarray(tokens[a : a + k * seq_len + 1], np.int64)
        yield torch.from_numpy(flat[:-1].reshape(k, seq_len)), torch.from_numpy(flat[1:].reshape(k, seq_len))
