"""One command for a CUDA machine: the GPU figures of docs/benchmarks.md, in at most 10 minutes.

    python bench/gpu.py                 # on a CUDA machine: writes the section "GPU: <name>" of docs/benchmarks.md
    python bench/gpu.py --dry-run       # every step, a couple of iterations, tiny shapes, on the CPU (a test runs it)

No hub access is needed: the data is the built-in suite and the models are random weights of real shapes.

1. pretrain   gpt3-small (124M) from scratch, bf16 autocast, torch.compile, SDPA (flash attention on CUDA):
              tokens/s and model FLOPs utilisation;
2. lora-sft   LoRA SFT steps on a Qwen2-0.5B-shaped model (24 x 896, 151,936-token vocabulary), bf16;
3. lora-dpo   LoRA DPO steps on the same model and the suite's pairs;
4. ppo        full-fine-tuning PPO iterations on the same model: rollouts through the engine, an exact-match
              reward on arithmetic prompts, the time split generate / score / optimise;
5. decode     the engine against transformers' `generate` on the same weights, batch 1 and 32, bf16;
6. serve      `lmstack serve` at 32 concurrent streaming clients (bench/serve.py's client): tokens/s, TTFT, TPOT.

A step that fails is reported with its error and the others still run. The default pipeline for a GPU is sized,
not measured, until this has run: check it with `time lmstack run small-gpu --out runs/small-gpu` (target: 15
minutes on one H100); the command is printed at the end with the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

# (full run on a GPU, --dry-run on a CPU)
SIZES = {
    "pretrain": ({"preset": "gpt3-small", "seq_len": 1024, "micro_batch": 16, "steps": 300},
                 {"preset": "gpt2-tiny", "seq_len": 64, "micro_batch": 4, "steps": 3}),
    "qwen": ({"n_layer": 24, "d_model": 896, "n_head": 14, "n_kv_head": 2, "d_ff": 4864, "vocab_size": 151936},
             {"n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2, "d_ff": 128, "vocab_size": 4096}),
    "tune": ({"steps": 20, "seq_len": 512, "micro_batch": 8, "pairs": 160},
             {"steps": 2, "seq_len": 128, "micro_batch": 2, "pairs": 8}),
    "ppo": ({"steps": 4, "rollout_batch": 32, "micro_batch": 8, "max_new_tokens": 64},
            {"steps": 2, "rollout_batch": 4, "micro_batch": 2, "max_new_tokens": 8}),
    "decode": ({"batches": [1, 32], "prompt_len": 64, "new_tokens": 128, "reps": 3},
               {"batches": [1, 4], "prompt_len": 8, "new_tokens": 8, "reps": 1}),
    "serve": ({"concurrency": 32, "max_tokens": 64, "requests_per_client": 3},
              {"concurrency": 2, "max_tokens": 4, "requests_per_client": 1}),
}


def size(name: str, dry: bool) -> dict:
    return SIZES[name][1 if dry else 0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prepare(out: Path, dry: bool) -> dict:
    """The built-in suite and its token shards, and the Qwen2-shaped random model every later step uses."""
    from lmstack.data.defaults import builtin_token_data
    from lmstack.lm import LM
    from lmstack.model.config import ModelConfig
    from lmstack.model.transformer import Transformer
    from lmstack.tokenizer import Tokenizer

    tokens = builtin_token_data(out / "data", size="tiny" if dry else "small", vocab_size=2048)
    suite = out / "data" / "suite"
    tok = Tokenizer.load(out / "data" / "tokenizer")
    qwen = out / "qwen2-0.5b-shape"
    if not (qwen / "config.json").exists():
        torch.manual_seed(0)
        cfg = ModelConfig(arch="qwen2", max_seq_len=2048, qkv_bias=True, tie_embeddings=True,
                          bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                          **size("qwen", dry))
        LM(Transformer(cfg).eval(), tok, {}).save(qwen, stage="bench")
    return {"tokens": str(tokens), "suite": str(suite), "qwen": str(qwen)}


def step_pretrain(out: Path, inp: dict, dry: bool, device: str) -> dict:
    from lmstack.train.pretrain import PretrainConfig, run

    s = size("pretrain", dry)
    t = time.perf_counter()
    res = run(PretrainConfig(out=str(out / "pretrain"), data=[inp["tokens"]], preset=s["preset"], seq_len=s["seq_len"],
                             micro_batch=s["micro_batch"], steps=s["steps"], lr=6e-4, warmup=min(30, s["steps"]),
                             precision="bf16" if not dry else "auto", compile=not dry, device=device,
                             eval_interval=0, ckpt_interval=0, log_interval=max(1, s["steps"] // 6), quiet=True))
    return {"model": s["preset"], "steps": s["steps"], "tokens_per_step": s["seq_len"] * s["micro_batch"],
            "tokens_per_s": res.summary.get("tokens_per_s"), "mfu": res.summary.get("mfu"),
            "final_loss": res.summary.get("final_loss"), "wall_s": time.perf_counter() - t}


def step_lora_sft(out: Path, inp: dict, dry: bool, device: str) -> dict:
    from lmstack.train.sft import SFTConfig, run

    s = size("tune", dry)
    t = time.perf_counter()
    res = run(SFTConfig(out=str(out / "lora_sft"), model=inp["qwen"],
                        data=[str(Path(inp["suite"]) / "tasks" / "train.jsonl")], lora=True, lora_r=16, lora_alpha=32,
                        steps=s["steps"], seq_len=s["seq_len"], micro_batch=s["micro_batch"], lr=2e-4, warmup=0,
                        precision="bf16" if not dry else "auto", device=device, eval_interval=0, ckpt_interval=0,
                        quiet=True))
    wall = time.perf_counter() - t
    return {"steps": s["steps"], "sequences_per_step": s["micro_batch"], "tokens_per_s": res.summary.get("tokens_per_s"),
            "final_loss": res.summary.get("final_loss"), "wall_s": wall}


def step_lora_dpo(out: Path, inp: dict, dry: bool, device: str) -> dict:
    from lmstack.train.dpo import DPOConfig, run

    s = size("tune", dry)
    marks: list[float] = []
    t = time.perf_counter()
    res = run(DPOConfig(out=str(out / "lora_dpo"), model=inp["qwen"],
                        data=[str(Path(inp["suite"]) / "preferences" / "pairs.jsonl")], lora=True, lora_r=16,
                        lora_alpha=32, epochs=0, steps=s["steps"], max_pairs=s["pairs"], micro_batch=s["micro_batch"],
                        seq_len=s["seq_len"], lr=5e-6, precision="bf16" if not dry else "auto", device=device,
                        quiet=True), step_hook=lambda _: (sync(device), marks.append(time.perf_counter())))
    gaps = [b - a for a, b in zip(marks, marks[1:])] or [time.perf_counter() - t]
    step_s = sorted(gaps)[len(gaps) // 2]
    return {"steps": s["steps"], "pairs_per_step": s["micro_batch"], "step_s": step_s,
            "pairs_per_s": s["micro_batch"] / step_s, "final_loss": res.summary.get("final_loss"),
            "wall_s": time.perf_counter() - t}


def step_ppo(out: Path, inp: dict, dry: bool, device: str) -> dict:
    from lmstack.train.ppo import PPOConfig, run

    s = size("ppo", dry)
    t = time.perf_counter()
    res = run(PPOConfig(out=str(out / "ppo"), model=inp["qwen"], suite=inp["suite"], reward_rule="exact_match",
                        clusters=["arithmetic"], steps=s["steps"], rollout_batch=s["rollout_batch"],
                        micro_batch=s["micro_batch"], max_new_tokens=s["max_new_tokens"], seq_len=512,
                        precision="bf16" if not dry else "auto", device=device, log_gold=False, quiet=True))
    split = res.summary["time_split"]
    return {"iterations": s["steps"], "rollouts": s["rollout_batch"], "new_tokens": s["max_new_tokens"],
            "iteration_s": sum(split.values()) / s["steps"],
            **{f"{k}_s": v / s["steps"] for k, v in split.items()}, "wall_s": time.perf_counter() - t}


def step_decode(out: Path, inp: dict, dry: bool, device: str) -> dict:
    import lmstack
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    s = size("decode", dry)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    lm = lmstack.load(inp["qwen"], device=device, dtype="bf16" if dtype == torch.bfloat16 else "fp32")
    try:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(inp["qwen"], dtype=dtype).to(device).eval()
    except ImportError:
        hf = None
    rows = {}
    for b in s["batches"]:
        prompts = torch.randint(0, 2048, (b, s["prompt_len"]))
        sp = SamplingParams(max_new_tokens=s["new_tokens"], temperature=0, ignore_eos=True)

        def timed(fn, b=b):
            fn()
            sync(device)
            t = time.perf_counter()
            for _ in range(s["reps"]):
                fn()
            sync(device)
            return s["reps"] * b * s["new_tokens"] / (time.perf_counter() - t)

        ours = timed(lambda p=prompts.tolist(), sp=sp: generate(lm.model, p, sp))
        theirs = None
        if hf is not None:
            x = prompts.to(device)

            def hf_generate(x=x):
                with torch.inference_mode():
                    hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=s["new_tokens"],
                                min_new_tokens=s["new_tokens"], do_sample=False, pad_token_id=0)

            theirs = timed(hf_generate)
        rows[b] = {"lmstack_tok_s": ours, "transformers_tok_s": theirs,
                   "ratio": ours / theirs if theirs else None}
    return {"dtype": str(dtype).replace("torch.", ""), "prompt_len": s["prompt_len"], "new_tokens": s["new_tokens"],
            "batches": rows}


def step_serve(out: Path, inp: dict, dry: bool, device: str) -> dict:
    s = size("serve", dry)
    js = out / "serve.json"
    cmd = [sys.executable, str(ROOT / "bench" / "serve.py"), "--model", inp["qwen"], "--concurrency",
           str(s["concurrency"]), "--max-tokens", str(s["max_tokens"]), "--requests-per-client",
           str(s["requests_per_client"]), "--json", str(js)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"bench/serve.py failed: {r.stderr[-1500:]}")
    row = json.loads(js.read_text())["rows"][-1]
    return {k: row[k] for k in ("concurrency", "requests", "out_tok_s", "ttft_ms_median", "ttft_ms_p99",
                                "tpot_ms_median")}


STEPS = {"pretrain": step_pretrain, "lora-sft": step_lora_sft, "lora-dpo": step_lora_dpo, "ppo": step_ppo,
         "decode": step_decode, "serve": step_serve}


def fmt(v, digits=1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def report(res: dict, device_name: str, dry: bool, wall: float, argv: list[str]) -> str:
    L = [f"## GPU: {device_name} (`bench/gpu.py`)", "",
         f"`python bench/gpu.py {' '.join(argv)}`{' (dry run: tiny shapes on the CPU, not a measurement)' if dry else ''}"
         f" — torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {wall / 60:.1f} minutes in all.", "",
         "| step | figures |", "| --- | --- |"]
    for name, r in res.items():
        if "error" in r:
            L.append(f"| {name} | **failed**: {r['error']} |")
            continue
        if name == "pretrain":
            txt = (f"{r['model']}, {r['steps']} steps x {r['tokens_per_step']:,} tokens: {fmt(r['tokens_per_s'], 0)} "
                   f"tokens/s, MFU {fmt(r['mfu'] and 100 * r['mfu']) + '%' if r['mfu'] else '— (CPU)'}, final loss "
                   f"{fmt(r['final_loss'], 3)}")
        elif name == "lora-sft":
            txt = f"{r['steps']} steps x {r['sequences_per_step']} sequences: {fmt(r['tokens_per_s'], 0)} tokens/s"
        elif name == "lora-dpo":
            txt = f"{r['steps']} steps x {r['pairs_per_step']} pairs: {fmt(r['step_s'], 3)} s/step, {fmt(r['pairs_per_s'])} pairs/s"
        elif name == "ppo":
            txt = (f"{r['rollouts']} rollouts x {r['new_tokens']} tokens: {fmt(r['iteration_s'], 2)} s/iteration "
                   f"(generate {fmt(r['generate_s'], 2)}, score {fmt(r['score_s'], 2)}, optimise {fmt(r['optimize_s'], 2)})")
        elif name == "decode":
            txt = "; ".join(f"batch {b}: {fmt(x['lmstack_tok_s'], 0)} tok/s vs transformers {fmt(x['transformers_tok_s'], 0)} "
                            f"({fmt(x['ratio'], 2)}x)" for b, x in r["batches"].items()) + f" ({r['dtype']})"
        else:
            txt = (f"{r['concurrency']} clients: {fmt(r['out_tok_s'], 0)} output tok/s, TTFT median "
                   f"{fmt(r['ttft_ms_median'], 0)} ms (p99 {fmt(r['ttft_ms_p99'], 0)}), TPOT {fmt(r['tpot_ms_median'], 1)} ms")
        L.append(f"| {name} | {txt} |")
    L += ["", "The default GPU pipeline: `time lmstack run small-gpu --out runs/small-gpu` (sized for 15 minutes on one "
          "H100; record its time here when measured).", ""]
    return "\n".join(L)


def write_section(md: str, path: Path) -> None:
    """Replace the section with the same heading in `path`, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head = md.splitlines()[0]
    pat = re.compile(rf"^{re.escape(head)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pat.sub(md + "\n", text) if pat.search(text) else text.rstrip("\n") + "\n\n" + md + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, a couple of iterations, on the CPU")
    ap.add_argument("--out", default="runs/gpu-bench", help="working folder (data, models, runs)")
    ap.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    ap.add_argument("--report", default=None, help="write the section here (default: docs/benchmarks.md on a GPU, "
                    "<out>/gpu.md in a dry run)")
    a = ap.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py: no CUDA device; --dry-run runs every step on the CPU")
    device = "cpu" if a.dry_run else "cuda"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"none (dry run on {platform.machine()} CPU)"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inp = prepare(out, a.dry_run)
    res = {}
    for step in a.steps:
        t = time.perf_counter()
        try:
            res[step] = STEPS[step](out, inp, a.dry_run, device)
        except Exception as e:  # noqa: BLE001 - one failing step must not lose the others' figures
            traceback.print_exc()
            res[step] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
        print(f"[{step}] {time.perf_counter() - t:.1f} s: {json.dumps(res[step], default=str)}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    md = report(res, name, a.dry_run, time.perf_counter() - t0, argv)
    target = Path(a.report) if a.report else (out / "gpu.md" if a.dry_run else BENCHMARKS)
    write_section(md, target)
    (out / "gpu.json").write_text(json.dumps(res, indent=2, default=str))
    print(md)
    print(f"wrote {target}")
    return 1 if any("error" in r for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
