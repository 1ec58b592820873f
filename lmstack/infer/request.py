"""What the engine decodes and what it hands back: a `Request` per row, its `Completion`, `StreamEvent`s."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmstack.infer.sampling import SamplingParams
from lmstack.infer.stop import StopText


@dataclass
class Completion:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # generated tokens (the stop token, if any, included)
    text: str = ""  # generated text, cut before a stop string; no stop token text
    finish_reason: str | None = None  # "stop" (EOS or stop string), "length" or "abort" (cancelled)
    logprobs: list[float] = field(default_factory=list)  # raw (untempered) log-prob of each generated token
    top_logprobs: list[dict[int, float]] = field(default_factory=list)


@dataclass(eq=False)  # compared by identity: a request is one row, wherever it sits in a batch
class Request:
    """One sequence to decode: a prompt and its sampling parameters.

    Made by the caller as `Request(prompt_ids, params)`; `Generation.add` fills in the rest (its
    index, the stop tokens, the token budget, the random generator) and the engine writes the
    output into `result` as it decodes.
    """

    prompt: list[int]
    params: SamplingParams
    index: int = -1  # order of arrival in its Generation (StreamEvent.index)
    result: Completion | None = None
    stop_ids: set[int] = field(default_factory=set)
    budget: int = 0  # tokens it may generate: max_new_tokens, or less where the context ends first
    generator: torch.Generator | None = None
    text: StopText | None = None  # decoded as it goes (stop strings, streaming); None: decoded at the end
    matcher: object | None = None  # its grammar's state (lmstack.infer.grammar.Matcher), with params.grammar

    @property
    def finished(self) -> bool:
        return self.result is not None and self.result.finish_reason is not None


@dataclass
class StreamEvent:
    index: int  # which request (in order of arrival)
    token_id: int
    text: str  # new text safe to show (held back while it may be a stop string or half a character)
    finished: bool
    finish_reason: str | None = None
    request: Request | None = None
