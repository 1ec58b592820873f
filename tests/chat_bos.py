"""Chat templates that write their own BOS (Llama 2/3, Mistral), on a tiny tokenizer and model, and a
recorder of the token rows a model is actually run on, for the tests that there is exactly one BOS at
the start of what is scored and generated from."""

from __future__ import annotations

from functools import lru_cache

import torch

SPECIALS = ["<|pad|>", "<s>", "</s>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]

# Llama 2 / Mistral style: `{{ bos_token }}` opens every user turn.
LLAMA2_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
# Llama 3 style: `{{ bos_token }}` once, then header-delimited turns; the generation prompt ends in "\n\n".
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_TEXT = ["[INST] Is the cat small? [/INST] yes </s>", "The small cat sat on the red mat. The dog is big.",
         "Answer yes or no. Does Mina live in Porto? no", "user assistant system OPTIONS: - yes - no"] * 30


@lru_cache(maxsize=1)
def _backend():
    from tokenizers import models, pre_tokenizers, trainers

    from lmstack.tokenizer.gpt2 import byte_level

    backend = byte_level(models.BPE())
    backend.train_from_iterator(_TEXT, trainers.BpeTrainer(
        vocab_size=320, min_frequency=1, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return backend


def tokenizer(style: str, add_bos: bool = True):
    """A tokenizer with a chat template: "llama2", "llama3" (both write {{ bos_token }}) or "chatml"
    (ChatML, which writes none, over a tokenizer whose BOS is <s>)."""
    from lmstack.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer

    if style == "llama2":
        return Tokenizer(_backend(), "<s>", "</s>", "<|pad|>", LLAMA2_TEMPLATE, add_bos=add_bos)
    if style == "llama3":
        return Tokenizer(_backend(), "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", LLAMA3_TEMPLATE,
                         extra_stop_tokens=["<|eot_id|>"], add_bos=add_bos)
    if style == "chatml":
        return Tokenizer(_backend(), "<s>", "</s>", "<|pad|>", DEFAULT_CHAT_TEMPLATE,
                         extra_stop_tokens=["<|im_end|>"], add_bos=add_bos)
    raise ValueError(style)


@lru_cache(maxsize=1)
def _model():
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer

    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=_backend().get_vocab_size(with_added_tokens=True), max_seq_len=128,
                 init_std=0.3)
    return Transformer(cfg).eval()


def lm(style: str, add_bos: bool = True):
    """A random llama-tiny over `tokenizer(style, add_bos)` (one model shared by every style)."""
    from lmstack.lm import LM

    return LM(_model(), tokenizer(style, add_bos), {})


class Fed:
    """The token rows a model is run on while the recorder is open: `scored` (whole-sequence forward
    passes, as scoring runs them; right padding left on) and `prompts` (generation prefills, with the
    left padding removed)."""

    def __init__(self, model):
        self.model = model
        self.scored: list[list[int]] = []
        self.prompts: list[list[int]] = []

    def _hook(self, module, args, kwargs):
        ids = args[0] if args else kwargs["idx"]
        if kwargs.get("cache") is None:
            self.scored += ids.tolist()
        elif kwargs.get("positions") is not None:  # a prefill (decode steps pass no positions)
            mask = kwargs.get("pad_mask")
            rows = ids.tolist() if mask is None else [r[m].tolist() for r, m in zip(ids, mask)]
            self.prompts += rows

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def bos_run(row: list[int], bos: int) -> int:
    """How many BOS tokens a row starts with."""
    n = 0
    while n < len(row) and row[n] == bos:
        n += 1
    return n
