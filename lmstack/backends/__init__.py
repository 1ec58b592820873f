"""One interface over a local model and an OpenAI-compatible remote API.

    from lmstack.backends import get_backend
    local = get_backend("runs/sft/model")                                  # checkpoint folder, .gguf, hub name
    remote = get_backend("gpt-4o-mini", base_url="https://api.openai.com/v1", chat=True,
                         cache_dir="runs/cache")                          # key from $OPENAI_API_KEY
    remote.generate([[{"role": "user", "content": "Hi"}]], {"max_new_tokens": 20})
    local.loglikelihood([("The capital of France is", " Paris")])

Every evaluation (`lmstack eval ...`) and prompting strategy (`lmstack prompt ...`) takes a backend,
so open and closed models run through the same commands.
"""

from __future__ import annotations

from lmstack.errors import LmstackError
from lmstack.options import add_weights_args

from .base import Backend, LLResult, as_sampling, is_messages, per_prompt
from .local import LocalBackend
from .remote import OpenAIBackend

__all__ = ["Backend", "LLResult", "LocalBackend", "OpenAIBackend", "add_backend_args", "as_sampling",
           "backend_from_args", "get_backend", "is_messages", "per_prompt"]


def get_backend(model, base_url: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                chat: bool = False, cache_dir=None, concurrency: int = 4, max_retries: int = 5,
                timeout: float = 60.0, batch_size: int = 16, dtype: str = "fp32",
                quantize: str | None = None) -> Backend:
    """A backend from a model: an object that already is one, a loaded LM, a local path/hub name, or
    (with `base_url`) a model name at an OpenAI-compatible API."""
    if isinstance(model, Backend):
        return model
    if base_url:
        return OpenAIBackend(str(model), base_url, api_key_env=api_key_env, chat=chat, concurrency=concurrency,
                             max_retries=max_retries, timeout=timeout, cache_dir=cache_dir)
    return LocalBackend(model, batch_size=batch_size, dtype=dtype, quantize=quantize)


def add_backend_args(p, prefix: str = "", suffix: str = "", required: bool = True, what: str = "model",
                     extras: bool = True) -> None:
    """--model/--base-url/--api-key-env/--chat-api, named with a prefix (--judge-model) or a suffix
    (--model-a); `extras` adds the shared --cache/--concurrency/--max-retries/--timeout/--batch-size/--dtype."""
    def name(n):
        return f"--{prefix}{n}{suffix}"

    def dest(n):
        return f"{prefix}{n}{suffix}".replace("-", "_")

    g = p.add_argument_group(f"{what} backend")
    g.add_argument(name("model"), required=required, dest=dest("model"),
                   help=f"{what}: a checkpoint folder, .gguf or hub name; with {name('base-url')}, the API's model name")
    g.add_argument(name("base-url"), dest=dest("base-url"), default=None,
                   help="an OpenAI-compatible API, e.g. https://api.openai.com/v1 (the model then runs remotely)")
    g.add_argument(name("api-key-env"), dest=dest("api-key-env"), default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY)")
    g.add_argument(name("chat-api"), dest=dest("chat-api"), action="store_true",
                   help="send every prompt to /chat/completions (closed chat models); no log-likelihoods")
    if extras:
        g = p.add_argument_group("backend options")
        g.add_argument("--cache", default=None, help="folder for the remote response cache (resume without paying twice)")
        g.add_argument("--concurrency", type=int, default=4, help="remote requests in flight")
        g.add_argument("--max-retries", type=int, default=5, help="retries of a failed remote request (default: 5)")
        g.add_argument("--timeout", type=float, default=60.0, help="seconds per remote request")
        g.add_argument("--batch-size", type=int, default=16, help="local batch size")
        add_weights_args(g)


def backend_from_args(args, prefix: str = "", suffix: str = "", model=None) -> Backend:
    def get(n, default=None):
        return getattr(args, f"{prefix}{n}{suffix}".replace("-", "_"), default)

    m = model if model is not None else get("model")
    if m is None:
        raise LmstackError(f"--{prefix}model{suffix} is required")
    return get_backend(m, base_url=get("base-url"), api_key_env=get("api-key-env", "OPENAI_API_KEY"),
                       chat=bool(get("chat-api", False)), cache_dir=getattr(args, "cache", None),
                       concurrency=getattr(args, "concurrency", 4), max_retries=getattr(args, "max_retries", 5),
                       timeout=getattr(args, "timeout", 60.0), batch_size=getattr(args, "batch_size", 16),
                       dtype=getattr(args, "dtype", "fp32"), quantize=getattr(args, "quantize", None))
