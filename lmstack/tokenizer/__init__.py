"""Tokenizers: byte-level BPE training, HF-compatible loading/saving, chat templates and assistant masks."""

from lmstack.tokenizer.bpe import DEFAULT_SPECIAL_TOKENS, train_bpe
from lmstack.tokenizer.chat import DEFAULT_CHAT_TEMPLATE
from lmstack.tokenizer.core import StreamDecoder, Tokenizer

__all__ = ["DEFAULT_CHAT_TEMPLATE", "DEFAULT_SPECIAL_TOKENS", "StreamDecoder", "Tokenizer", "train_bpe"]
