"""Perplexity of a text or of prepared token data (the command, `lmstack eval perplexity`, is in lmstack/cli/eval.py).

The sliding-window computation is `lmstack.infer.logprobs.perplexity` (re-exported here).
"""

from __future__ import annotations

from lmstack.infer.logprobs import perplexity  # the computation lives with the one log-prob kernel


def perplexity_of_text(lm, text: str, max_length=None, stride=None) -> dict:
    lm._need_tokenizer()
    ids = lm.tokenizer.encode(text)
    return perplexity(lm.model, ids, max_length, stride, n_bytes=len(text.encode("utf-8")))
