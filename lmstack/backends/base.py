"""The backend interface: what every evaluation and prompting strategy calls.

A backend answers two questions about text, whatever runs the model:

- `loglikelihood([(context, continuation), ...])`: log p(continuation | context) and whether
  greedy decoding would produce the continuation (lm-evaluation-harness's contract);
- `generate([prompt, ...], sampling)`: a completion for each prompt, where a prompt is a string
  (plain completion) or a list of chat messages (rendered by the model's chat template, or sent
  to a chat endpoint).

`loglikelihood_rolling(texts)` (perplexity) completes the set. A local checkpoint and an
OpenAI-compatible API implement the same methods, so open and closed models run through the
same commands; a chat-only API cannot score log-likelihoods and says so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Sequence

from lmstack.errors import LmstackError
from lmstack.infer.logprobs import LLResult
from lmstack.infer.sampling import SamplingParams, as_sampling

Messages = list[dict]
Prompt = str | Messages


def per_prompt(sampling, n: int) -> list[SamplingParams]:
    """One SamplingParams per prompt: a list is taken as is (its length must match), else repeated."""
    if isinstance(sampling, (list, tuple)):
        if len(sampling) != n:
            raise LmstackError(f"generate: {len(sampling)} sampling settings for {n} prompts")
        return [as_sampling(s) for s in sampling]
    s = as_sampling(sampling)
    return [s] * n


def is_messages(prompt) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)


class Backend:
    """Base class. Subclasses implement the methods they can; the rest raise a clear LmstackError."""

    name: str = "backend"
    can_loglikelihood: bool = True

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[LLResult]:
        raise LmstackError(f"{self.name}: this backend cannot score log-likelihoods")

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[LLResult]:
        """Summed log-probability of each whole text (every token the model can score) and its token count."""
        raise LmstackError(f"{self.name}: this backend cannot score log-likelihoods")

    def generate(self, prompts: Sequence[Prompt], sampling=None) -> list[str]:
        raise LmstackError(f"{self.name}: this backend cannot generate")

    def chat(self, conversations: Sequence[Messages], sampling=None, tools: list | None = None) -> list[dict]:
        """OpenAI's chat: one assistant message per conversation, {"role", "content", "tool_calls"?}; with
        `tools` (OpenAI's function definitions) an answer may be calls, each {"id", "type": "function",
        "function": {"name", "arguments": JSON text}}. Conversations may hold earlier calls and `tool` results."""
        if tools:
            raise LmstackError(f"{self.name}: this backend cannot offer tools")
        return [{"role": "assistant", "content": t} for t in self.generate(list(conversations), sampling)]

    def chat_context(self, messages: Messages) -> str:
        """The text a chat prompt becomes before the assistant's answer (to score answers in chat form).
        A template's own BOS stays at its start, and `loglikelihood` then adds no second one."""
        raise LmstackError(f"{self.name}: cannot render chat prompts as text for log-likelihood scoring")

    def describe(self) -> dict:
        return {"backend": type(self).__name__, "name": self.name}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
