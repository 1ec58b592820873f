"""Byte-level BPE: training new tokenizers and reading GPT-2's original vocabulary files.

Byte-level (GPT-2 style) rather than SentencePiece-style BPE because every string, in any script and with any
whitespace, maps to bytes and back, so decode(encode(s)) == s holds without an unknown token or a normalizer.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from tokenizers import models, pre_tokenizers, trainers

from lmstack.errors import LmstackError
from lmstack.tokenizer.chat import DEFAULT_CHAT_TEMPLATE
from lmstack.tokenizer.core import Tokenizer
from lmstack.tokenizer.gpt2 import byte_level, gpt2_backend  # noqa: F401 (gpt2_backend: re-exported)

DEFAULT_SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def expand_files(patterns: Iterable[str | os.PathLike]) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        pat = str(pat)
        matches = sorted(glob.glob(pat, recursive=True))
        if not matches:
            raise LmstackError(f"train_bpe: no file matches {pat!r}")
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise LmstackError(f"train_bpe: {pat!r} matches only directories")
        out += [f for f in files if f not in out]
    return out


def train_bpe(
    files,
    vocab_size: int,
    special_tokens: list[str] = DEFAULT_SPECIAL_TOKENS,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on files (a list of paths or glob patterns) or on an iterator of texts."""
    special_tokens = list(dict.fromkeys(special_tokens))
    floor = 256 + len(special_tokens)
    if vocab_size < floor:
        raise LmstackError(
            f"train_bpe: vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} specials"
        )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        # Every byte must be in the vocab, even ones absent from the corpus, or unseen text could not be encoded
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend = byte_level(models.BPE())
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    if isinstance(files, (list, tuple)):
        backend.train(expand_files(files), trainer)
    else:
        backend.train_from_iterator(files, trainer)

    def has(t):
        return t in special_tokens

    eot = "<|endoftext|>" if has("<|endoftext|>") else None
    chatml = has("<|im_start|>") and has("<|im_end|>")
    return Tokenizer(
        backend,
        bos_token=eot,
        eos_token=eot,
        pad_token="<|pad|>" if has("<|pad|>") else None,
        chat_template=DEFAULT_CHAT_TEMPLATE if chatml else None,
        extra_stop_tokens=["<|im_end|>"] if chatml else [],
    )
