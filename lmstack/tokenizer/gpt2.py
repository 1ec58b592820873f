"""Byte-level BPE backends: empty ones to train, and GPT-2's own vocab.json/merges.txt files."""

from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

from lmstack.errors import LmstackError


def byte_level(model: models.Model) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(model)
    # use_regex=True is GPT-2's pre-tokenisation regex; no prefix space so that text is encoded as written
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_backend(vocab_file, merges_file) -> tokenizers.Tokenizer:
    """Backend from GPT-2's vocab.json/merges.txt (or OpenAI's encoder.json/vocab.bpe, the same formats)."""
    vocab_file, merges_file = Path(vocab_file), Path(merges_file)
    for p in (vocab_file, merges_file):
        if not p.is_file():
            raise LmstackError(f"tokenizer: {p} does not exist")
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmstackError(f"tokenizer: {vocab_file} is not valid JSON ({e})") from None
    if not isinstance(vocab, dict):
        raise LmstackError(f"tokenizer: {vocab_file} should map tokens to ids")
    merges = []
    for n, line in enumerate(merges_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise LmstackError(f"tokenizer: {merges_file} line {n} is not a merge of two tokens: {line!r}")
        merges.append((parts[0], parts[1]))
    try:
        backend = byte_level(models.BPE(vocab, merges))
    except Exception as e:
        raise LmstackError(f"tokenizer: cannot build BPE from {vocab_file} and {merges_file} ({e})") from None
    # Same post-processor as HF's GPT-2 tokenizer.json, so offsets match theirs
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if "<|endoftext|>" in vocab:
        backend.add_special_tokens(["<|endoftext|>"])
    return backend
