"""Per-item scores and their aggregates, with bootstrap standard errors and binomial intervals.

- `acc`: the choice with the highest log-likelihood is a gold one.
- `acc_norm`: the same after dividing each log-likelihood by the choice's length in characters
  (lm-evaluation-harness's definition), which removes the bias towards short choices.
- `mc2` (TruthfulQA): the normalised probability mass on the true answers,
  sum_{true} p_i / sum_{all} p_i with p_i = exp(loglikelihood_i).
- `exact_match`: the extracted answer equals a reference after normalisation.
- `perplexity` = exp(total NLL / total tokens), `bits_per_byte` = total NLL / ln 2 / total UTF-8
  bytes, `word_perplexity` = exp(total NLL / total words): corpus-level ratios, not item means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np


def mc_scores(logprobs: Sequence[float], choices: Sequence[str], gold: Sequence[int]) -> dict:
    """acc, acc_norm, mc2 and the predictions of one multiple-choice item."""
    ll = np.asarray(logprobs, dtype=np.float64)
    lens = np.asarray([max(1, len(c)) for c in choices], dtype=np.float64)
    norm = ll / lens
    pred, pred_norm = int(np.argmax(ll)), int(np.argmax(norm))
    gold = [int(g) for g in gold]
    # mc2 through log-sum-exp, so that long answers with logprobs of -300 do not underflow to 0/0.
    top = ll.max()
    p = np.exp(ll - top)
    mc2 = float(p[gold].sum() / p.sum())
    return {"pred": pred, "pred_norm": pred_norm, "acc": float(pred in gold), "acc_norm": float(pred_norm in gold),
            "mc2": mc2, "logprobs_norm": norm.tolist()}


# ---- aggregation --------------------------------------------------------------------------------------------

def mean_agg(cols: dict) -> np.ndarray:
    return cols["value"].mean(axis=-1)


def ppl_aggs() -> dict[str, Callable]:
    ln2 = math.log(2)
    return {
        "perplexity": lambda c: np.exp(c["nll"].sum(-1) / c["tokens"].sum(-1)),
        "bits_per_byte": lambda c: c["nll"].sum(-1) / ln2 / c["bytes"].sum(-1),
        "word_perplexity": lambda c: np.exp(c["nll"].sum(-1) / c["words"].sum(-1)),
        "byte_perplexity": lambda c: np.exp(c["nll"].sum(-1) / c["bytes"].sum(-1)),
    }


def bootstrap_stderr(columns: dict[str, Sequence[float]], agg: Callable = mean_agg, iters: int = 1000,
                     seed: int = 1234, chunk: int = 100) -> float:
    """Standard deviation of `agg` over `iters` resamples (with replacement) of the items.

    `columns` are per-item arrays of equal length; `agg` maps arrays of shape [B, n] to [B]. A
    constant metric has stderr exactly 0 (every resample is the same array)."""
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    n = len(next(iter(cols.values())))
    if n < 2 or iters <= 1:  # one item has no spread to estimate
        return float("nan")
    rng = np.random.default_rng(seed)
    stats = []
    for s in range(0, iters, chunk):
        idx = rng.integers(0, n, size=(min(chunk, iters - s), n))
        stats.append(agg({k: v[idx] for k, v in cols.items()}))
    stats = np.concatenate(stats)
    return float(np.std(stats, ddof=1))


def wilson_interval(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n (good at small n and near 0 or 1)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over a set of generations."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
