"""When a generated row stops, and which part of its text may be shown yet.

A row stops at one of its stop tokens (the model's end-of-sequence tokens unless the request names
its own) or at the first occurrence of a stop string in its decoded text, which is then cut before
the string. While streaming, text is held back while it could still turn out to be the start of a
stop string, or while its last character is only half decoded.
"""

from __future__ import annotations

from lmstack.infer.sampling import SamplingParams


def stop_token_ids(eos_token_id, tokenizer, params: SamplingParams) -> set[int]:
    """The token ids that end a row: the request's own, or the tokenizer's and the model's EOS ids."""
    if params.ignore_eos:
        return set()
    if params.stop_token_ids is not None:
        return set(params.stop_token_ids)
    ids = set()
    if tokenizer is not None:
        ids.update(tokenizer.stop_ids)
    eos = eos_token_id
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ids


def find_stop(text: str, stops: list[str], emitted: int) -> int | None:
    """Index where the earliest stop string starts (searching only text not yet streamed, and a margin)."""
    best = None
    for s in stops:
        j = text.find(s, max(0, emitted - len(s)))
        if j >= 0 and (best is None or j < best):
            best = j
    return best


def safe_prefix(text: str, stops: list[str]) -> int:
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


class StopText:
    """One row's text as tokens arrive: cut at its first stop string, streamed only where safe."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.text = ""  # the text so far (cut before a stop string)
        self.emitted = 0  # characters already handed out

    def update(self, ids: list[int], final: bool) -> tuple[str, bool]:
        """Decode the row's tokens (stop token excluded); returns (new text safe to show, stop string hit).
        final: the row ends with this token anyway, so all its text may be shown."""
        text = self.tokenizer.decode(ids)
        cut = find_stop(text, self.stops, self.emitted)
        if cut is not None:
            text = text[:cut]
        self.text = text
        safe = len(text) if final or cut is not None else safe_prefix(text, self.stops)
        delta = ""
        if safe > self.emitted:
            delta = text[self.emitted:safe]
            self.emitted = safe
        return delta, cut is not None
