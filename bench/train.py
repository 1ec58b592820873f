"""Training speed: lmstack's model against nanoGPT's `GPT` (and a plain `transformers` loop), same shapes, one run.

    python bench/train.py --nanogpt ~/src/nanoGPT/model.py        # 4L/128, 6L/256, 12L/768; fp32 and bf16
    python bench/train.py --shapes 4l128 --precisions fp32 --transformers
    python bench/train.py --curves runs/tiny/data/tokens --plot curves.png   # AdamW fp32 vs bf16 vs Muon

nanoGPT is MIT-licensed and never vendored: pass the path of its model.py (a checkout of karpathy/nanoGPT, or
the file alone); without it that column is skipped with a message. Both models are GPT-2 blocks of the same
shape (LayerNorm, GELU MLP, biases, tied embeddings), the same batch and sequence length, the same AdamW step
and, per row, the same precision (fp32, or bf16 autocast). lmstack runs with GPT-2's tanh GELU (its default for
gpt2 models, which GPT-2's checkpoints need) and with nanoGPT's exact erf GELU (`activation="gelu"`: the same
network as the peer); `--compile` compiles every model's forward and loss, as nanoGPT's train.py does. Their
steps are interleaved in one process (A, B, A, B, ...) so that a machine's drift hits all; reported are median
step times as tokens/s and the ratios lmstack / nanoGPT at equal precision and lmstack bf16 / nanoGPT fp32.

--curves DATA pretrains the default course's llama-mini on prepared token data once per --variants
(optimizer:precision) for the same steps and prints validation loss against steps and wall time: bf16's
curve against fp32's, and time to AdamW's final loss with Muon (the same lr schedule; Muon's step is
matched to AdamW's update size, see lmstack.train.optim).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {"4l128": (4, 128, 4, 4096), "6l256": (6, 256, 8, 4096), "12l768": (12, 768, 12, 50304)}


def nanogpt_module(path: str | None):
    if not path:
        print("nanoGPT column skipped: pass --nanogpt PATH (nanoGPT's model.py, or a checkout holding it)")
        return None
    import os

    file = os.path.join(path, "model.py") if os.path.isdir(path) else path
    spec = importlib.util.spec_from_file_location("nanogpt_model", file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # torch.compile looks a traced function's module up by name
    spec.loader.exec_module(mod)
    return mod


def lmstack_gpt(n_layer, d, n_head, vocab, seq, activation="gelu_tanh"):
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer

    torch.manual_seed(0)
    return Transformer(preset("gpt2-mini", n_layer=n_layer, d_model=d, n_head=n_head, vocab_size=vocab,
                              max_seq_len=seq, activation=activation))


def stepper(model, forward, x, y, bf16: bool, compile: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # nanoGPT's train.py compiles its model by default (its loss is inside its forward); --compile compiles each
    # model's forward and loss the same way for every model in the row (the optimizer step stays eager).
    forward = torch.compile(forward) if compile else forward
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def one() -> float:
        t = time.perf_counter()
        with ctx():
            loss = forward(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return one


def interleaved(steppers: dict, steps: int) -> dict:
    """Median seconds per step of each, their steps alternating (after two warm-up steps each)."""
    for s in steppers.values():
        s(), s()
    times = {k: [] for k in steppers}
    for _ in range(steps):
        for k, s in steppers.items():
            times[k].append(s())
    return {k: statistics.median(v) for k, v in times.items()}


def speed(args):
    ng = nanogpt_module(args.nanogpt)
    acts = args.activations
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"batch {args.batch} x seq {args.seq}; median of {args.steps} interleaved steps"
          + ("; every model torch.compile'd" if args.compile else "; eager"))
    print("lmstack's GPT-2 blocks with GELU's tanh form (gelu_tanh: GPT-2's, the default) and/or the exact erf form "
          "(gelu: nanoGPT's nn.GELU(), the same network as the peer)")
    print("| shape | params | precision | " + " | ".join(f"lmstack {a} tok/s" for a in acts) + " | nanoGPT tok/s | "
          + " | ".join(f"{a} / nanoGPT" for a in acts) + " |" + (" transformers tok/s |" if args.transformers else ""))
    print("| --- | ---: | --- |" + " ---: |" * (2 * len(acts) + 1 + args.transformers))
    rows = []
    for shape in args.shapes:
        n_layer, d, n_head, vocab = SHAPES[shape]
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
        y = torch.randint(0, vocab, (args.batch, args.seq), generator=g)
        tokens = args.batch * args.seq
        per = {}
        for prec in args.precisions:
            bf16 = prec == "bf16"
            steppers = {}
            for a in acts:
                ours = lmstack_gpt(n_layer, d, n_head, vocab, args.seq, a).train()
                steppers[a] = stepper(ours, lambda m, x, y: F.cross_entropy(
                    m(x).float().flatten(0, 1), y.flatten()), x, y, bf16, args.compile)
            if ng is not None:
                torch.manual_seed(0)
                peer = ng.GPT(ng.GPTConfig(block_size=args.seq, vocab_size=vocab, n_layer=n_layer, n_head=n_head,
                                           n_embd=d, dropout=0.0, bias=True)).train()
                steppers["nanoGPT"] = stepper(peer, lambda m, x, y: m(x, y)[1], x, y, bf16, args.compile)
            if args.transformers:
                import transformers as t

                torch.manual_seed(0)
                hf = t.GPT2LMHeadModel(t.GPT2Config(n_embd=d, n_layer=n_layer, n_head=n_head, vocab_size=vocab,
                                                   n_positions=args.seq, resid_pdrop=0, embd_pdrop=0,
                                                   attn_pdrop=0)).train()
                steppers["transformers"] = stepper(hf, lambda m, x, y: F.cross_entropy(
                    m(x).logits.float().flatten(0, 1), y.flatten()), x, y, bf16, args.compile)
            t = interleaved(steppers, args.steps)
            row = {"shape": shape, "params": sum(p.numel() for p in ours.parameters()), "precision": prec,
                   "compiled": args.compile, **{f"{k}_tok_s": round(tokens / v, 1) for k, v in t.items()}}
            nan = float("nan")
            for a in acts:
                row[f"{a}_vs_nanogpt"] = round(t["nanoGPT"] / t[a], 2) if "nanoGPT" in t else nan
            per[prec] = row
            rows.append(row)
            print(f"| {shape} | {row['params'] / 1e6:.1f}M | {prec} | "
                  + " | ".join(f"{row[f'{a}_tok_s']:.0f}" for a in acts)
                  + f" | {row.get('nanoGPT_tok_s', nan):.0f} | "
                  + " | ".join(f"{row[f'{a}_vs_nanogpt']:.2f}x" for a in acts) + " |"
                  + (f" {row['transformers_tok_s']:.0f} |" if args.transformers else ""), flush=True)
        if "bf16" in per and "fp32" in per and "nanoGPT_tok_s" in per["fp32"]:
            r = " / ".join(f"{per['bf16'][f'{a}_tok_s'] / per['fp32']['nanoGPT_tok_s']:.2f}x ({a})" for a in acts)
            print(f"{shape}: lmstack bf16 / nanoGPT fp32 = {r}", flush=True)
    return rows


def curves(args):
    """Pretrain llama-mini on the same data and steps once per VARIANT (optimizer:precision); validation loss
    against steps and wall time, as a table and a PNG."""
    import json
    import tempfile
    from pathlib import Path

    from lmstack.train.pretrain import PretrainConfig, run

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"llama-mini, {args.curve_steps} steps, lr {args.curve_lr}, one variant after another")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for variant in args.variants:
            opt, prec, *lr = variant.split(":")
            folder = Path(d) / variant.replace(":", "_")
            t0 = time.time()
            run(PretrainConfig(out=str(folder), data=[args.curves], preset="llama-mini", seq_len=256, micro_batch=16,
                               steps=args.curve_steps, lr=float(lr[0]) if lr else args.curve_lr, warmup=30,
                               eval_interval=max(1, args.curve_steps // 8), eval_batches=20, ckpt_interval=0, seed=0,
                               quiet=True, bars=False, optimizer=opt, precision=prec))
            wall = time.time() - t0
            recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            t_start = recs[0]["time"]
            curve = [(r["step"], round(r["time"] - t_start, 1), round(r["val_loss"], 4)) for r in recs if "val_loss" in r]
            out[variant] = {"wall_s": round(wall, 1), "curve": curve}
            print(f"{variant}: {wall:.0f} s; (step, s, val loss): {curve}", flush=True)
    base = args.variants[0]
    final = out[base]["curve"][-1][2]
    for v in args.variants[1:]:
        reach = next((c for c in out[v]["curve"] if c[2] <= final), None)
        print(f"{v}: final val loss {out[v]['curve'][-1][2]:.4f} vs {base} {final:.4f}; reaches {base}'s final loss "
              + (f"at step {reach[0]}, {reach[1]} s (vs {out[base]['curve'][-1][1]} s)" if reach else "never"))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for v, r in out.items():
            steps, secs, loss = zip(*r["curve"])
            axes[0].plot(steps, loss, marker="o", label=v)
            axes[1].plot(secs, loss, marker="o", label=v)
        for ax, xl in zip(axes, ("step", "wall time (s)")):
            ax.set_xlabel(xl)
            ax.set_ylabel("validation loss")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("llama-mini on the built-in corpus (2-core CPU)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--nanogpt", default=None, help="nanoGPT's model.py (or a checkout holding it)")
    ap.add_argument("--activations", nargs="+", default=["gelu_tanh", "gelu"], choices=["gelu_tanh", "gelu"],
                    help="lmstack's GELU form(s): GPT-2's tanh (the default for gpt2 models) and nanoGPT's erf")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model (nanoGPT's train.py default)")
    ap.add_argument("--transformers", action="store_true", help="also transformers' GPT2LMHeadModel")
    ap.add_argument("--curves", default=None, metavar="TOKENS",
                    help="prepared token data (lmstack data prepare): pretrain once per --variants instead")
    ap.add_argument("--variants", nargs="+", default=["adamw:fp32", "adamw:bf16", "muon:fp32"],
                    help="optimizer:precision[:lr] per run (the first is the baseline; lr: --curve-lr)")
    ap.add_argument("--curve-steps", type=int, default=320)
    ap.add_argument("--curve-lr", type=float, default=3e-3)
    ap.add_argument("--plot", default=None, help="write the curves to this PNG")
    args = ap.parse_args(argv)
    return curves(args) if args.curves else speed(args)


if __name__ == "__main__":
    main()
