"""Structured output: answers that follow a JSON schema, any JSON object, a regex, one of a list of strings or a
Lark grammar, enforced token by token in the engine's sampling step.

The grammar library is llguidance (Microsoft's; the engine behind llama.cpp's, vLLM's and SGLang's `guidance`
backends): a Rust matcher with no dependency beyond its wheel, built for CPUs, that computes the set of allowed
next tokens from the tokenizer's vocabulary in microseconds per token (bench/grammar.py measures it here). xgrammar
needs torch and its own compilation cache; outlines-core compiles a regex's whole automaton up front, which is
slow for large schemas. Each row of a batch has its own matcher, so every request follows its own grammar.

    guide = Guide("json_schema", {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    params = SamplingParams(max_new_tokens=64, grammar=compile_guide(guide))
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from lmstack.errors import LmstackError

KINDS = ("json_object", "json_schema", "regex", "choice", "lark")


@dataclass(frozen=True)
class Guide:
    """What an answer must follow: `kind` one of KINDS, `spec` the schema (a dict), regex, choices (a list of
    strings) or Lark grammar (json_object: none)."""

    kind: str
    spec: object = None


def _llg():
    try:
        import llguidance
    except ImportError:
        raise LmstackError("structured output needs llguidance: pip install 'lmstack[serve]' (or llguidance)") \
            from None
    return llguidance


def compile_guide(guide: Guide) -> str:
    """The llguidance grammar of a guide, checked: a malformed spec is a one-line LmstackError naming it."""
    llg = _llg()
    M = llg.LLMatcher
    kind, spec = guide.kind, guide.spec
    if kind == "json_object":
        grammar = M.grammar_from_json_schema({"type": "object"})
    elif kind == "json_schema":
        if not isinstance(spec, dict):
            raise LmstackError(f"json_schema: the schema must be a JSON object, got {type(spec).__name__}")
        check_schema(spec, "json_schema")
        grammar = M.grammar_from_json_schema(spec, defaults={"whitespace_flexible": False})
    elif kind == "regex":
        if not isinstance(spec, str) or not spec:
            raise LmstackError("regex: must be a non-empty string")
        grammar = M.grammar_from_regex(spec)
    elif kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) and c for c in spec):
            raise LmstackError("choice: must be a non-empty list of non-empty strings")
        grammar = M.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in spec))
    elif kind == "lark":
        if not isinstance(spec, str) or not spec.strip():
            raise LmstackError("grammar: must be a non-empty Lark grammar")
        grammar = M.grammar_from_lark(spec)
    else:
        raise LmstackError(f"guided decoding: unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    err = M.validate_grammar(grammar)
    if err:
        raise LmstackError(f"{kind}: {err.strip().splitlines()[0]}")
    return grammar


def check_schema(schema: dict, what: str) -> None:
    """A JSON schema must be a valid one (checked against its metaschema with `jsonschema`): one line naming the
    first problem."""
    try:
        import jsonschema
    except ImportError:  # llguidance still rejects what it cannot compile
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(root)"
        raise LmstackError(f"{what}: not a valid JSON schema at {where}: {e.message}") from None


_TOKENIZERS: dict = {}


def grammar_tokenizer(tokenizer, vocab_size: int, eos_ids) -> object:
    """llguidance's view of a tokenizer (built once per tokenizer, vocabulary size and end tokens: ~1 s for a 50k
    vocabulary). `eos_ids`: the tokens that end an answer, allowed once the grammar is complete."""
    if tokenizer is None:
        raise LmstackError("structured output needs the model's tokenizer")
    key = (id(tokenizer.backend), vocab_size, tuple(sorted(eos_ids)))
    hit = _TOKENIZERS.get(key)
    if hit is None:
        llg = _llg()
        hit = _TOKENIZERS[key] = (tokenizer, llg.LLTokenizer(tokenizer.backend.to_str(), n_vocab=vocab_size,
                                                             eos_token=sorted(eos_ids)))
    return hit[1]


class Matcher:
    """One row's grammar state: the mask of allowed next tokens, advanced by each chosen token."""

    def __init__(self, lltok, grammar: str):
        self.m = _llg().LLMatcher(lltok, grammar, log_level=0)
        if self.m.is_error():
            raise LmstackError(f"grammar: {self.m.get_error()}")
        self.words = (lltok.vocab_size + 31) // 32

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-token bits of the next token into row `row` of an int32 [B, words] CPU tensor."""
        v = bitmask[row]
        self.m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())
        if self.m.is_error():
            raise LmstackError("grammar: no token of this tokenizer can continue an answer that follows it")

    def check_start(self) -> None:
        """Refuse, in one line, a grammar no answer in this tokenizer's tokens can start (e.g. a regex that
        matches nothing): the first step's mask would be empty."""
        self.fill(torch.full((1, self.words), -1, dtype=torch.int32), 0)

    def advance(self, token: int) -> None:
        if not self.m.consume_token(token):
            raise LmstackError(f"grammar: token {token} was not allowed ({self.m.get_error()})")

    @property
    def done(self) -> bool:
        """The grammar is complete and nothing may follow (the answer ends here)."""
        return self.m.is_stopped()


_BITS = torch.arange(32, dtype=torch.int32)


def apply_masks(scores: torch.Tensor, matchers: list[Matcher | None]) -> torch.Tensor:
    """Logits with every token a row's grammar does not allow next set to -inf (rows without a matcher as they
    are). The matchers fill one bitmask; unpacking it is a few tensor operations for the whole batch."""
    rows = [k for k, m in enumerate(matchers) if m is not None]
    if not rows:
        return scores
    words = matchers[rows[0]].words
    bitmask = torch.full((len(rows), words), -1, dtype=torch.int32)
    for j, k in enumerate(rows):
        matchers[k].fill(bitmask, j)
    allowed = ((bitmask[:, :, None] >> _BITS) & 1).bool().flatten(1)[:, :scores.shape[1]]
    V = allowed.shape[1]
    sub = scores[rows]
    sub[:, :V] = sub[:, :V].masked_fill(~allowed.to(scores.device), float("-inf"))
    sub[:, V:] = float("-inf")
    scores[rows] = sub
    return scores
