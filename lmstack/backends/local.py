"""A local lmstack or Hugging Face checkpoint behind the backend interface.

Log-likelihoods and perplexity (sliding windows) go through the one log-prob kernel
(`lmstack.infer.logprobs`, lm-evaluation-harness's tokenisation rules), and generation through the
one batched engine with a KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmstack.errors import LmstackError
from lmstack.infer.engine import generate
from lmstack.infer.logprobs import loglikelihood, perplexity
from lmstack.infer.tools import parse_calls, template_messages, tool_names
from lmstack.lm import LM, load
from lmstack.model.checkpoint import Checkpoint

from .base import Backend, LLResult, Messages, Prompt, is_messages, per_prompt


class LocalBackend(Backend):
    def __init__(self, lm_or_path, batch_size: int = 16, dtype: str = "fp32", device: str | None = None,
                 quantize: str | None = None):
        if isinstance(lm_or_path, (str, bytes)) or hasattr(lm_or_path, "__fspath__"):
            dt = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(dtype)
            if dt is None:
                raise LmstackError(f"dtype {dtype!r}: use fp32 or bf16")
            self.lm = load(lm_or_path, dtype=dt, quantize=quantize)
            self.name = str(lm_or_path)
        else:
            # a checkpoint built by a recipe (no generation methods of its own) gets the LM's
            self.lm = LM.of(lm_or_path) if isinstance(lm_or_path, Checkpoint) else lm_or_path
            self.name = getattr(lm_or_path, "name", "local")
        if device:
            self.lm.to(device)
        self.lm._need_tokenizer()
        self.batch_size = batch_size
        self.stats = {"truncated_prompts": 0}

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LLResult]:
        if not requests:
            return []
        return loglikelihood(self.lm.model, self.lm.tokenizer, list(requests), batch_size=self.batch_size)

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[LLResult]:
        tok = self.tokenizer
        out = []
        for text in texts:
            ids = tok.encode(text, add_bos=False)
            # Condition the first token on BOS (or EOS, which GPT-2-style models use as a document
            # separator) so that every token of the text is scored, as lm-eval's rolling windows do.
            start = tok.bos_id if tok.bos_id is not None else tok.eos_id
            if start is not None:
                ids = [start] + ids
            if len(ids) < 2:
                raise LmstackError(f"perplexity: text {text[:40]!r} is too short to score")
            r = perplexity(self.lm.model, ids)
            out.append(LLResult(-r["nll_sum"], False, r["tokens"]))
        return out

    def _ids(self, prompt: Prompt, tools: list | None = None) -> list[int]:
        if is_messages(prompt):
            self.lm._need_tokenizer()
            return self.tokenizer.encode_chat(template_messages(prompt), add_generation_prompt=True, tools=tools)[0]
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        raise LmstackError(f"generate: a prompt must be a string or a list of messages, got {type(prompt).__name__}")

    def generate(self, prompts: Sequence[Prompt], sampling=None, tools: list | None = None) -> list[str]:
        params = per_prompt(sampling, len(prompts))
        texts: list[str] = []
        ctx = self.lm.config.max_seq_len
        for s in range(0, len(prompts), self.batch_size):
            ps = params[s:s + self.batch_size]
            ids = []
            for p, sp in zip(prompts[s:s + self.batch_size], ps):
                x = self._ids(p, tools)
                # Too long for the context: keep the rightmost tokens, leaving room for the answer (as
                # lm-evaluation-harness does); counted so a report can say how many were cut.
                keep = max(1, ctx - max(1, sp.max_new_tokens))
                if len(x) > keep:
                    x = x[-keep:]
                    self.stats["truncated_prompts"] += 1
                ids.append(x)
            if ps[0].num_beams > 1:  # beam search runs one prompt at a time with one setting
                outs = [generate(self.lm.model, [i], p, self.tokenizer)[0] for i, p in zip(ids, ps)]
            else:
                outs = generate(self.lm.model, ids, ps, self.tokenizer)
            texts += [o.text for o in outs]
        return texts

    def chat(self, conversations: Sequence[Messages], sampling=None, tools: list | None = None) -> list[dict]:
        """The conversations rendered by the model's chat template with `tools` shown; calls parsed out of
        each answer in the template's format (`infer.tools`: Hermes blocks or a JSON object), as the server does."""
        texts = self.generate(list(conversations), sampling, tools)
        names = tool_names(tools) if tools else []
        out = []
        for k, text in enumerate(texts):
            rest, calls = parse_calls(text, names) if names else (text, [])
            msg = {"role": "assistant", "content": (rest or "") if calls else text}
            if calls:
                msg["tool_calls"] = [{"id": f"call_{k}_{j}", "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for j, c in enumerate(calls)]
            out.append(msg)
        return out

    def chat_context(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def describe(self) -> dict:
        return {"backend": "local", "name": self.name, "params": self.lm.model.num_params(),
                "arch": self.lm.config.arch, "context": self.lm.config.max_seq_len, **self.stats}
