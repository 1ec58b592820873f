"""What every training recipe shares: the config knobs, loading the starting checkpoint, run setup with
exact resume, the guarded optimizer step, checkpoints and the end-of-run summary.

Recipes keep their own loops (the algorithm of the paper stays visible); these helpers are the
plumbing around them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.model.quant import refuse_quantized
from lmstack.train import dist
from lmstack.train.log import MetricsLogger, plot_curves, read_metrics
from lmstack.train.optim import lr_at, make_optimizer, set_lr
from lmstack.train.state import latest_checkpoint, read_trainer_state, save_checkpoint, set_rng_state


@dataclass
class TrainConfig:
    out: str = "runs/train"  #: run folder: checkpoints/, model/, metrics.jsonl, summary.json
    steps: int = 1000  #: optimizer steps
    micro_batch: int = 16  #: sequences per micro-batch on each process
    grad_accum: int = 1  #: micro-batches accumulated per optimizer step
    lr: float = 3e-3  #: peak learning rate
    min_lr_ratio: float = 0.1  #: final learning rate as a fraction of --lr (cosine/linear decay)
    warmup: int = 50  #: linear warmup steps
    schedule: str = "cosine"  #: learning-rate schedule after warmup: cosine, linear, wsd or constant
    weight_decay: float = 0.1  #: AdamW weight decay (not on norms and biases)
    betas: tuple = (0.9, 0.95)  #: AdamW betas
    optimizer: str = "adamw"  #: adamw, or muon (torch.optim.Muon for hidden matrices, AdamW for the rest)
    grad_clip: float = 1.0  #: clip the gradient norm to this (0: off)
    dropout: float = 0.0  #: dropout probability during training
    precision: str = "auto"  #: auto (bf16 autocast on a GPU or a CPU with AVX-512 BF16/AMX, else fp32), bf16 or fp32
    compile: bool = False  #: torch.compile the model
    grad_checkpoint: bool = False  #: recompute activations in backward; on a CPU also trim the heap each step (less memory)
    fsdp: bool = False  #: shard parameters with FSDP2 under torchrun (default there: DDP)
    device: str = "auto"  #: auto (cuda when available), cpu, cuda or cuda:N
    seed: int = 0  #: seed of weights, data order and sampling
    eval_interval: int = 200  #: evaluate every N steps (0: only where the recipe says)
    eval_batches: int = 20  #: batches per evaluation
    ckpt_interval: int = 500  #: save a resumable checkpoint every N steps (0: only at the end)
    keep_last: int = 2  #: checkpoints kept in <out>/checkpoints
    log_interval: int = 10  #: write metrics every N steps
    max_nonfinite: int = 5  #: consecutive non-finite steps before the run stops
    resume: bool = False  #: continue from the latest checkpoint in --out
    tensorboard: bool = False  #: also log to TensorBoard (<out>/tensorboard)
    quiet: bool = False  #: no progress bar or messages on the console
    bars: bool = False  #: transient progress bars (how lmstack run displays a stage)


@dataclass
class Run:
    """The live state of one training run."""

    cfg: TrainConfig
    info: dist.DistInfo
    model: torch.nn.Module  # the Transformer (weights saved from here)
    dmodel: torch.nn.Module  # what the loop calls: DDP/FSDP/compiled wrapper of model
    opt: torch.optim.Optimizer
    log: MetricsLogger
    out: Path
    meta: dict
    start: int = 0
    counters: dict = field(default_factory=lambda: {"nonfinite_total": 0, "tokens": 0})
    consecutive_bad: int = 0
    use_bf16: bool = False
    t_last: float = field(default_factory=time.time)
    tok_last: int = 0
    last_loss: float | None = None
    flops_per_token: float | None = None  # with peak_flops: model FLOPs utilisation in the logs
    peak_flops: float | None = None
    params: list = field(default_factory=list)  # the trained parameters (after FSDP2 sharding: its DTensors)

    @property
    def main(self) -> bool:
        return self.info.main

    def autocast(self):
        return bf16_autocast(self.use_bf16, self.info.device)

    def no_sync(self, micro: int):
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        last = micro == self.cfg.grad_accum - 1
        if last or self.info.world == 1 or self.cfg.fsdp or not hasattr(self.dmodel, "no_sync"):
            return contextlib.nullcontext()
        return self.dmodel.no_sync()

    def release_memory(self) -> None:
        """Under --grad-checkpoint on a CPU, hand the heap's free pages back to the OS at a phase boundary of the
        step (after the forward, after the backward, after the update); see trim_heap."""
        if self.cfg.grad_checkpoint and torch.device(self.info.device).type == "cpu":
            trim_heap()

    def lr(self, step: int) -> float:
        c = self.cfg
        lr = lr_at(step, lr=c.lr, total=c.steps, warmup=c.warmup, schedule=c.schedule, min_lr_ratio=c.min_lr_ratio)
        set_lr(self.opt, lr)
        return lr


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where there is no glibc (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """glibc's malloc_trim(0): return the C heap's free pages to the OS (a no-op where there is no glibc).

    Why: PyTorch's CPU tensors come from malloc, and glibc serves blocks under its mmap threshold (which grows to
    32 MB as big blocks are freed) from a heap that it rarely shrinks. A training step allocates and frees layer
    activations, checkpointed recomputations and gradients of 1-32 MB in changing orders, so the freed memory is
    kept and scattered: DPO on a 135M model with activation checkpointing held 3.6 GiB resident with 2.6 GiB live.
    Trimming at the step's phase boundaries gives most of that back for ~0.04 s a call (re-faulting the pages as
    they are reused did not slow the step measurably); setting glibc's thresholds so that every block is returned at
    once (MALLOC_TRIM_THRESHOLD_=0) reached 2.6 GiB but made the step 30% slower (docs/benchmarks.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def cpu_runs_bf16() -> bool:
    """Does this CPU multiply bf16 natively (AVX-512 BF16 or AMX tiles)? Measured on a 2-core AVX-512 BF16 VM: bf16
    autocast trains 1.25x fp32's speed at llama-mini, 1.3-1.4x at 4 x 128 and 6 x 256 GPT-2 blocks, 1.9x at GPT-2
    small's shape (docs/benchmarks.md)."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def uses_bf16(precision: str, device) -> bool:
    """--precision: bf16 and fp32 as said; auto is bf16 autocast where the hardware runs it natively."""
    if precision not in ("auto", "bf16", "fp32"):
        raise LmstackError(f"--precision {precision!r}: use auto, bf16 or fp32")
    if precision != "auto":
        return precision == "bf16"
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and cpu_runs_bf16())


def bf16_autocast(enabled: bool, device):
    """bf16 autocast on `device` when enabled, else nothing: the context every training forward runs in."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def load_for_training(path: str, device, seq_len: int | None, why: str) -> LM:
    """The checkpoint a recipe starts from: it must have a tokenizer (`why` says what for) and a context of at
    least `seq_len` tokens."""
    lm = load(path, device=device)
    if lm.tokenizer is None:
        raise LmstackError(f"{path}: no tokenizer; {why}")
    if seq_len is not None and seq_len > lm.config.max_seq_len:
        raise LmstackError(f"--seq-len {seq_len} exceeds the model's context {lm.config.max_seq_len}")
    return lm


def pad_id(tokenizer) -> int:
    """The id right padding uses (0 when the tokenizer has none: padded positions are never read)."""
    return tokenizer.pad_id if tokenizer.pad_id is not None else 0


def resume_point(cfg: TrainConfig) -> Path | None:
    return latest_checkpoint(Path(cfg.out)) if cfg.resume else None


def start_run(cfg: TrainConfig, model: torch.nn.Module, info: dist.DistInfo, stage: str, meta: dict | None = None,
              params=None, resume_from: Path | None = None) -> Run:
    """Wrap for distribution, build AdamW (over `params` if given, e.g. LoRA weights), restore a resumed
    run's optimizer/RNG/step, open the logger. The recipe loads resumed weights itself beforehand."""
    out = Path(cfg.out)
    refuse_quantized(model, stage)
    if hasattr(model, "set_dropout"):
        model.set_dropout(cfg.dropout)
    model.train()
    inner = getattr(model, "base_model", None)
    target = inner.model if inner is not None and hasattr(inner, "model") else model
    if hasattr(target, "grad_checkpointing"):
        target.grad_checkpointing = cfg.grad_checkpoint
    dmodel = dist.wrap(model, info, cfg.fsdp)
    # After FSDP wrapping: sharding replaces the parameters, so the optimizer (and the gradient clipping) must hold
    # the sharded ones; `params` (e.g. LoRA's adapters) are then the trainable parameters of the sharded model.
    own = params is not None and not cfg.fsdp
    params = list(params) if own else [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params if own else model, cfg.lr, cfg.weight_decay, cfg.betas, kind=cfg.optimizer)
    start, counters = 0, {"nonfinite_total": 0, "tokens": 0}
    if resume_from is not None:
        blob, state = read_trainer_state(resume_from, info.rank)
        opt.load_state_dict(blob["optimizer"])
        set_rng_state(blob["rng"])
        start, counters = state["step"], state.get("counters", counters)
        if info.main and not cfg.quiet:
            print(f"resuming from {resume_from} at step {start}")
    if cfg.compile:
        dmodel = torch.compile(dmodel)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stage}_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
        if start == 0 and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
    log = MetricsLogger(out, cfg.steps, start, enabled=info.main, console=not cfg.quiet,
                        tensorboard=cfg.tensorboard, desc=stage, bars=cfg.bars)
    use_bf16 = uses_bf16(cfg.precision, info.device)
    return Run(cfg, info, model, dmodel, opt, log, out, {"stage": stage, "args": asdict(cfg), **(meta or {})},
               start, counters, use_bf16=use_bf16, params=params)


def optimizer_step(run: Run, step: int, loss_value: float, lr: float) -> tuple[bool, float]:
    """Clip the trained parameters' gradient, then step; a non-finite loss or gradient skips the update (counted,
    and too many in a row stop the run with the last good checkpoint named). Returns (updated, grad norm)."""
    cfg = run.cfg
    run.release_memory()  # the backward's freed activations
    gnorm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    gnorm_v = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
    if not (math.isfinite(loss_value) and math.isfinite(gnorm_v)):
        # Skip: one bad batch must not poison the weights or the Adam moments.
        run.opt.zero_grad(set_to_none=True)
        run.consecutive_bad += 1
        run.counters["nonfinite_total"] += 1
        run.log.log(step + 1, nonfinite=True, lr=lr)
        run.log.write(f"step {step + 1}: non-finite loss/gradient, update skipped ({run.consecutive_bad} in a row)")
        if run.consecutive_bad >= cfg.max_nonfinite:
            run.log.close()
            raise LmstackError(
                f"{run.meta['stage']}: {run.consecutive_bad} non-finite steps in a row at step {step + 1}; stopped. "
                f"Last good checkpoint: {latest_checkpoint(run.out) or 'none'} (lower --lr or check the data)")
        return False, gnorm_v
    run.consecutive_bad = 0
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.release_memory()  # the optimizer's temporaries and the freed gradients
    return True, gnorm_v


def log_step(run: Run, done: int, tokens: int, **metrics) -> None:
    """Count tokens; every log_interval steps write the metrics with tokens/s."""
    run.counters["tokens"] += tokens
    run.last_loss = metrics.get("loss", run.last_loss)
    cfg = run.cfg
    if done % cfg.log_interval and done != cfg.steps and done != run.start + 1:
        return
    now = time.time()
    rec = dict(metrics, tokens=run.counters["tokens"])
    if run.tok_last:
        rate = (run.counters["tokens"] - run.tok_last) / max(now - run.t_last, 1e-9)
        rec["tokens_per_s"] = run.log.tokens_per_s = rate  # the progress bar shows the latest rate
        if run.flops_per_token and run.peak_flops:
            rec["mfu"] = rec["tokens_per_s"] * run.flops_per_token / (run.peak_flops * run.info.world)
    run.t_last, run.tok_last = now, run.counters["tokens"]
    run.log.log(done, **rec)


def checkpoint_if_due(run: Run, lm, done: int, extra: dict | None = None, blobs=None) -> None:
    """Save a resumable checkpoint every --ckpt-interval steps and at the end. `blobs`: the recipe's own state
    (see write_trainer_state), or a function returning it (only called when a checkpoint is written)."""
    cfg = run.cfg
    if (cfg.ckpt_interval and done % cfg.ckpt_interval == 0) or done == cfg.steps:
        save_checkpoint(lm, run.out, done, run.opt, {"counters": run.counters, **(extra or {})},
                        keep_last=cfg.keep_last, meta=run.meta, dist_info=run.info, sharded=cfg.fsdp,
                        blobs=blobs() if callable(blobs) else blobs)


def whole_state(module: torch.nn.Module, cfg: TrainConfig) -> dict:
    """A module's state dict with whole tensors (under --fsdp gathered from the shards: every process calls this)."""
    if cfg.fsdp:
        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return module.state_dict()


def finish_run(run: Run, lm, summary: dict, plot_keys: list[str], title: str, png: str = "loss_curve.png") -> dict:
    """Final model folder (run/model), summary.json, a curve PNG; returns the summary."""
    run.log.close()
    # The LM's own network (run.model may hold more, e.g. PPO's value model), gathered from the shards under --fsdp.
    final_sd = whole_state(lm.model, run.cfg) if run.cfg.fsdp and lm is not None else None
    if run.main:
        recs = read_metrics(run.out / "metrics.jsonl")
        rates = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
        summary.setdefault("tokens_per_s", sum(rates) / len(rates) if rates else None)
        summary.setdefault("nonfinite_skipped", run.counters["nonfinite_total"])
        summary.setdefault("tokens", run.counters["tokens"])
        mfu = [r["mfu"] for r in recs if r.get("mfu")]
        if mfu:
            summary.setdefault("mfu", sum(mfu) / len(mfu))
        if recs:
            plot_curves(recs, plot_keys, run.out / png, title=title)
        if lm is not None:
            lm.save(run.out / "model", state_dict=final_sd, **run.meta, metrics=summary)
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    dist.barrier(run.info)
    return summary
