"""The `LM` facade: what `lmstack.load` returns and every stage passes around.

    from lmstack.lm import load
    lm = load("runs/demo/model")                  # a checkpoint folder, a .gguf file or a hub name
    logits = lm(lm.encode("Hello"))               # forward pass (model.checkpoint.Checkpoint)
    lm.generate("Once upon a time", max_new_tokens=20, temperature=0)
    lm.chat([{"role": "user", "content": "Hi"}])
    lm.save("copy")

`LM` is a checkpoint (model, tokenizer, generation config, lmstack.json; model/checkpoint.py) with
generation on top, through the one engine (infer/engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lmstack.infer.engine import StreamEvent, generate, stream
from lmstack.infer.sampling import SamplingParams
from lmstack.model import checkpoint
from lmstack.model.checkpoint import Checkpoint, save

__all__ = ["LM", "load", "save"]


class LM(Checkpoint):
    """A checkpoint that generates: text or token-id prompts in, completions out."""

    @classmethod
    def of(cls, ckpt: Checkpoint) -> LM:
        """The LM over a checkpoint's parts (the same model object, not a copy)."""
        if isinstance(ckpt, cls):
            return ckpt
        return cls(ckpt.model, ckpt.tokenizer, ckpt.generation_config, ckpt.meta)

    def sampling(self, **kw) -> SamplingParams:
        return SamplingParams(**kw)

    def generate(self, prompts, **sampling):
        """Text (or token-id) prompts in, completions out. Returns a str for one str prompt."""
        single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        ids = [self.encode(p) if isinstance(p, str) else list(p) for p in batch]
        outs = generate(self.model, ids, self.sampling(**sampling), self.tokenizer)
        if self.tokenizer is None:
            return outs[0] if single else outs
        texts = [o.text for o in outs]
        return texts[0] if single else texts

    def chat_ids(self, messages) -> list[int]:
        """The token ids of a conversation rendered by the chat template, up to the assistant's turn."""
        self._need_tokenizer()
        return self.tokenizer.encode_chat(messages, add_generation_prompt=True)[0]

    def chat(self, messages, **sampling) -> str:
        return generate(self.model, [self.chat_ids(messages)], self.sampling(**sampling), self.tokenizer)[0].text

    def stream(self, prompt_ids: list[int], **sampling) -> Iterator[StreamEvent]:
        self._need_tokenizer()
        return stream(self.model, [prompt_ids], self.sampling(**sampling), self.tokenizer)


def load(path_or_name, device="cpu", dtype=torch.float32, quantize: str | None = None) -> LM:
    """Load a checkpoint folder, a .gguf file, or a Hugging Face hub name (downloaded when online).

    quantize: None/"none" dense (what training needs), "auto" (a GGUF file stays int4/int8), "int8", "int4"."""
    return LM.of(checkpoint.load(path_or_name, device, dtype, quantize))
