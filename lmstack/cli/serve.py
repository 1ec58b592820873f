"""`lmstack serve`: the OpenAI-compatible server and web chat page for one model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from lmstack.cli.common import dispatch
from lmstack.errors import LmstackError
from lmstack.lm import load
from lmstack.model.adapter import attach_adapters
from lmstack.options import add_weights_args


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API, with a web chat page at /")
    add_arguments(p)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="checkpoint folder, .gguf file or hub name")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every endpoint but /health "
                        "(default: the LMSTACK_API_KEY environment variable, if set)")
    p.add_argument("--max-batch", type=int, default=32, help="sequences decoded together (default 32)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait for a batch slot; more are answered 429 (default 256)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a request may take in all (default 600)")
    p.add_argument("--prefix-cache-mb", type=float, default=256.0,
                   help="memory for the keys/values of recent prompts: a request that starts like an earlier one "
                        "(few-shot examples, a system prompt) skips computing the shared part (default 256; 0: off)")
    p.add_argument("--served-model-name", "--model-name", nargs="+", default=None, metavar="NAME",
                   help="names requests may give as `model`, the first reported in responses; the --model string "
                        "as given is always served too (vLLM's convention; default: only the --model string)")
    p.add_argument("--lora", "--lora-modules", nargs="+", default=[], metavar="NAME=DIR",
                   help="LoRA adapters served beside the base: a request naming NAME as its model decodes with the "
                        "adapter in DIR (peft's format: lmstack's, or peft's on the transformers model), in the same "
                        "batch as the others (vLLM's --lora-modules)")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME",
                   help="the comparison page at /compare: each prompt answered by these 2-4 served names (the base, "
                        "its aliases, --lora adapters; a name twice: two samples of it) side by side, for a person to "
                        "rank; needs --labels")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="the JSONL file the comparison page appends each ranking to ({prompt, answers, ranking}: "
                        "what `lmstack reward` and `lmstack dpo` read)")
    add_weights_args(p, dtypes=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (default on CPU: all cores but one, left to the HTTP loop; "
                        "OMP_NUM_THREADS if set)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (default warning)")
    p.set_defaults(func=cmd_serve)


def build(args):
    """The app and its settings from parsed arguments (the model loaded), for `serve` and for tests."""
    from lmstack.serve.app import ServerConfig, create_app  # optional: fastapi (the [serve] extra)

    for name, v in (("--max-batch", args.max_batch), ("--max-queue", args.max_queue)):
        if v < 1:
            raise LmstackError(f"{name} must be >= 1, got {v}")
    if args.timeout <= 0:
        raise LmstackError(f"--timeout must be > 0, got {args.timeout}")
    if args.prefix_cache_mb < 0:
        raise LmstackError(f"--prefix-cache-mb must be >= 0, got {args.prefix_cache_mb}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    elif str(device).startswith("cpu") and "OMP_NUM_THREADS" not in os.environ:
        # The event loop (parsing, JSON, SSE writes) needs a core of its own: intra-op threads that
        # compete with it for every core stall each other at every operator.
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    quantize = args.quantize if str(device).startswith("cpu") or args.quantize in ("int8", "int4") else "none"
    lm = load(args.model, device=device, dtype=args.dtype, quantize=quantize)
    api_key = args.api_key if args.api_key is not None else os.environ.get("LMSTACK_API_KEY") or None
    names = [*(args.served_model_name or []), str(args.model)]  # vLLM serves the --model string as given
    adapters = []
    for spec in args.lora:
        name, eq, folder = spec.partition("=")
        if not eq or not name or not folder:
            raise LmstackError(f"--lora {spec!r}: give NAME=DIR")
        if name in names or name in [n for n, _ in adapters]:
            raise LmstackError(f"--lora {spec!r}: the name {name!r} is already served")
        adapters.append((name, Path(folder)))
    if adapters:
        attach_adapters(lm.model, adapters)
    check_compare(args.compare, args.labels, [*names, *(n for n, _ in adapters)])
    cfg = ServerConfig(model_name=names[0], aliases=tuple(names[1:]), adapters=tuple(n for n, _ in adapters),
                       compare=tuple(args.compare), labels=args.labels, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                       timeout=args.timeout, prefix_cache_mb=args.prefix_cache_mb)
    return create_app(lm, cfg), cfg, lm


def check_compare(compare: list[str], labels: str | None, served: list[str]) -> None:
    """--compare and --labels, checked before the server starts: 2-4 served names and a file that can be appended to
    (created empty if absent), each problem in one line."""
    if not compare and labels is None:
        return
    if not compare or labels is None:
        raise LmstackError("--compare and --labels go together: the models to compare and the file for the rankings")
    if not 2 <= len(compare) <= 4:
        raise LmstackError(f"--compare: give 2 to 4 names, got {len(compare)}")
    unknown = [n for n in compare if n not in served]
    if unknown:
        raise LmstackError(f"--compare {unknown[0]!r}: not a served name ({', '.join(served)})")
    try:
        with open(labels, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise LmstackError(f"--labels {labels}: cannot append to it ({e.strerror})") from None


def cmd_serve(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise LmstackError("serving needs the 'serve' extras: pip install 'lmstack[serve]' "
                           "(fastapi, uvicorn)") from None
    app, cfg, lm = build(args)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {cfg.model_name} ({lm.model.num_params():,} parameters, {lm.device}) at {where}  "
          f"[chat page: {where}/, API: {where}/v1{', API key required' if cfg.api_key else ''}]", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmstack.serve", description=__doc__.splitlines()[0])
    add_arguments(p)
    return dispatch(p.parse_args(argv))
