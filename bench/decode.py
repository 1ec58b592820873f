"""Decode speed: lmstack's engine against transformers' `generate` on the same weights, in one run.

    python bench/decode.py                       # tiny + GPT-2-small shapes, batch 1 and 8, fp32 (+ bf16)
    python bench/decode.py --shapes tiny --new-tokens 64

Both sides decode greedily with a KV cache, the same prompt tokens and the same number of new
tokens (EOS ignored). The GPT-2-small figures are also given as a fraction of the memory-bandwidth
bound: weight bytes read per decode step divided by measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

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
    args = ap.parse_args(argv)

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


if __name__ == "__main__":
    main()
