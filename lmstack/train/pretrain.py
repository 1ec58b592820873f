"""Pretraining recipe: next-token prediction over token shards (GPT-3 / nanoGPT style).

    lmstack pretrain --data runs/data --preset llama-mini --steps 2000 --out runs/pre
    torchrun --nproc_per_node=8 -m lmstack pretrain ...          # data parallel (DDP)

The loop below is the whole algorithm: sample a batch, predict every next token, cross-entropy,
backward (accumulating micro-batches), clip, AdamW step on a warmup+decay schedule. Around it:
validation perplexity, atomic checkpoints with exact resume, and non-finite-loss protection.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.train import dist
from lmstack.train.log import MetricsLogger, plot_curves, read_metrics
from lmstack.train.optim import lr_at, make_optimizer, set_lr
from lmstack.train.state import latest_checkpoint, read_trainer_state, save_checkpoint, set_rng_state

# Dense bf16 peak FLOP/s by GPU name, for model FLOPs utilisation (MFU).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "4090": 165e12, "3090": 71e12}


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    data: list[str] = field(default_factory=list)  # "DIR" or "name=DIR"
    mix: list[str] = field(default_factory=list)  # "name=weight"
    preset: str = "llama-mini"
    overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"n_layer": 4}
    init_from: str | None = None  # continue pretraining a checkpoint (folder, .gguf, hub name)
    seq_len: int = 256
    micro_batch: int = 16
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    schedule: str = "cosine"
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    dropout: float = 0.0
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False
    grad_checkpoint: bool = False
    fsdp: bool = False
    device: str = "auto"
    seed: int = 0
    eval_interval: int = 200
    eval_batches: int = 20
    ckpt_interval: int = 500
    keep_last: int = 2
    log_interval: int = 10
    max_nonfinite: int = 5  # consecutive non-finite steps before the run stops
    resume: bool = False
    tensorboard: bool = False
    quiet: bool = False


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def open_data(cfg: PretrainConfig, seq_len: int, global_micro_batch: int):
    """Training mixture and validation set from prepared token folders (`lmstack data prepare`)."""
    from lmstack.data.mixture import Mixture, parse_mix
    from lmstack.data.shards import TokenDataset

    if not cfg.data:
        raise LmstackError("pretrain: no --data given (a folder written by `lmstack data prepare`)")
    dirs = {}
    for i, spec in enumerate(cfg.data):
        name, _, path = spec.rpartition("=") if "=" in spec else (f"data{i}" if len(cfg.data) > 1 else "data", "",
                                                                 spec)
        dirs[name] = path
    weights = parse_mix(cfg.mix) if cfg.mix else {n: 1.0 / len(dirs) for n in dirs}
    missing = set(weights) - set(dirs)
    if missing:
        raise LmstackError(f"--mix names {', '.join(sorted(missing))} but --data gives only {', '.join(dirs)}")
    train = {n: TokenDataset(p, "train") for n, p in dirs.items() if n in weights}
    val = TokenDataset(next(iter(dirs.values())), "val")
    mix = Mixture(train, weights, seq_len=seq_len, global_batch=global_micro_batch, seed=cfg.seed)
    return mix, val, train


@torch.no_grad()
def evaluate(model, val, seq_len: int, batch: int, max_batches: int, device, autocast) -> float:
    from lmstack.data.mixture import val_batches

    model.eval()
    total, n = 0.0, 0
    for x, y in val_batches(val, seq_len, batch, max_batches):
        with autocast():
            logits = model(x.to(device))
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n += y.numel()
    model.train()
    return total / max(n, 1)


def pretrain(cfg: PretrainConfig, loss_hook=None, step_hook=None) -> dict:
    """Run (or resume) pretraining. loss_hook(step, loss)->loss and step_hook(step) are for tests/experiments."""
    from lmstack.model.checkpoint import LM, build_model, load, unwrap
    from lmstack.model.config import preset
    from lmstack.tokenizer import Tokenizer

    info = dist.init(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    mix, val, train_sets = open_data(cfg, cfg.seq_len, cfg.micro_batch * info.world)
    manifest = next(iter(train_sets.values())).manifest
    tokenizer = Tokenizer.load(manifest["tokenizer"]) if manifest.get("tokenizer") else None

    resume_from = latest_checkpoint(out) if cfg.resume else None
    if cfg.init_from and not resume_from:
        lm = load(cfg.init_from, device=info.device)
        model, tokenizer = lm.model, lm.tokenizer or tokenizer
    else:
        src = resume_from
        if src is not None:
            lm = load(src, device=info.device)
            model = lm.model
        else:
            mcfg = preset(cfg.preset, **{
                "vocab_size": manifest["vocab_size"], "max_seq_len": cfg.seq_len, "dropout": cfg.dropout,
                "bos_token_id": tokenizer.bos_id if tokenizer else None,
                "eos_token_id": (tokenizer.stop_ids if tokenizer else manifest.get("eos_id")),
                "pad_token_id": tokenizer.pad_id if tokenizer else None, **cfg.overrides})
            model = build_model(mcfg, device=info.device)
    if model.cfg.vocab_size < manifest["vocab_size"]:
        raise LmstackError(f"data vocabulary ({manifest['vocab_size']}) is larger than the model's "
                           f"({model.cfg.vocab_size}); prepare the data with the model's tokenizer")
    if cfg.seq_len > model.cfg.max_seq_len:
        raise LmstackError(f"--seq-len {cfg.seq_len} exceeds the model's context {model.cfg.max_seq_len}")
    model.set_dropout(cfg.dropout)
    model.train()
    model.grad_checkpointing = cfg.grad_checkpoint
    start, counters = 0, {"nonfinite_total": 0, "tokens": 0}
    if resume_from is not None:
        blob, state = read_trainer_state(resume_from, info.rank)
        set_rng_state(blob["rng"])
        start, counters = state["step"], state.get("counters", counters)
        if info.main and not cfg.quiet:
            print(f"resuming from {resume_from} at step {start}")
    dmodel = dist.wrap(model, info, cfg.fsdp)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)  # after FSDP: it must hold the shards
    if resume_from is not None:
        opt.load_state_dict(blob["optimizer"])
    if cfg.compile:
        dmodel = torch.compile(dmodel)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda")

    def autocast():
        if use_bf16:
            return torch.autocast(info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    lm = LM(model, tokenizer, {"eos_token_id": model.cfg.eos_token_id})
    tokens_per_step = cfg.micro_batch * cfg.seq_len * cfg.grad_accum * info.world
    from lmstack.model.info import model_info
    flops_per_token = model_info(model.cfg)["train_flops_per_token"]
    peak = peak_flops(info.device)
    log = MetricsLogger(out, cfg.steps, start, enabled=info.main, console=not cfg.quiet,
                        tensorboard=cfg.tensorboard, desc="pretrain")
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))
        if start == 0 and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
    meta = {"stage": "pretrain", "parent": cfg.init_from, "args": asdict(cfg)}
    consecutive_bad = 0
    val_loss = None
    t_last, tok_last = time.time(), 0
    for step in range(start, cfg.steps):
        lr = lr_at(step, lr=cfg.lr, total=cfg.steps, warmup=cfg.warmup, schedule=cfg.schedule,
                   min_lr_ratio=cfg.min_lr_ratio)
        set_lr(opt, lr)
        loss_sum = torch.zeros((), device=info.device)
        for micro in range(cfg.grad_accum):
            x, y = mix.get_batch(step * cfg.grad_accum + micro, info.rank, info.world)
            x, y = x.to(info.device), y.to(info.device)
            sync = micro == cfg.grad_accum - 1 or info.world == 1 or cfg.fsdp
            ctx = contextlib.nullcontext() if sync else dmodel.no_sync()
            with ctx:
                with autocast():
                    logits = dmodel(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                if loss_hook is not None:
                    loss = loss_hook(step, loss)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach() / cfg.grad_accum
        loss_v = dist.all_mean(loss_sum.item(), info)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else 1e9)
        gnorm_v = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)
        if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
            # Skip the update: a single bad batch must not poison the weights or the Adam moments.
            opt.zero_grad(set_to_none=True)
            consecutive_bad += 1
            counters["nonfinite_total"] += 1
            log.log(step + 1, nonfinite=True, loss=None, lr=lr)
            log.write(f"step {step + 1}: non-finite loss/gradient, update skipped ({consecutive_bad} in a row)")
            if consecutive_bad >= cfg.max_nonfinite:
                last = latest_checkpoint(out)
                log.close()
                raise LmstackError(
                    f"pretrain: {consecutive_bad} non-finite steps in a row at step {step + 1}; stopped. "
                    f"Last good checkpoint: {last or 'none'} (lower --lr or check the data)")
            log.progress(1)
            continue
        consecutive_bad = 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        counters["tokens"] += tokens_per_step
        done = step + 1
        if done % cfg.log_interval == 0 or done == cfg.steps or done == start + 1:
            now = time.time()
            tok_s = (counters["tokens"] - tok_last) / max(now - t_last, 1e-9) if tok_last else None
            t_last, tok_last = now, counters["tokens"]
            rec = dict(loss=loss_v, lr=lr, grad_norm=gnorm_v, tokens=counters["tokens"])
            if tok_s:
                rec["tokens_per_s"] = tok_s
                if peak:
                    rec["mfu"] = tok_s * flops_per_token / (peak * info.world)
            log.log(done, **rec)
        if cfg.eval_interval and (done % cfg.eval_interval == 0 or done == cfg.steps):
            val_loss = dist.all_mean(evaluate(dmodel, val, cfg.seq_len, cfg.micro_batch, cfg.eval_batches,
                                              info.device, autocast), info)
            log.log(done, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50)))
            log.write(f"step {done}: val loss {val_loss:.4f}, perplexity {math.exp(min(val_loss, 50)):.2f}")
        log.progress(1, loss=loss_v, lr=lr)
        if (cfg.ckpt_interval and done % cfg.ckpt_interval == 0) or done == cfg.steps:
            save_checkpoint(lm, out, done, opt, {"counters": counters, "val_loss": val_loss},
                            keep_last=cfg.keep_last, meta=meta, dist_info=info, sharded=cfg.fsdp)
        if step_hook is not None:
            step_hook(done)
    log.close()
    summary = {"steps": cfg.steps, "final_loss": None, "val_loss": val_loss,
               "val_ppl": math.exp(min(val_loss, 50)) if val_loss is not None else None,
               "tokens": counters["tokens"], "nonfinite_skipped": counters["nonfinite_total"],
               "params": unwrap(model).num_params()}
    final_sd = None
    if cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        final_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if info.main:
        recs = read_metrics(out / "metrics.jsonl")
        losses = [r["loss"] for r in recs if r.get("loss") is not None]
        summary["final_loss"] = losses[-1] if losses else None
        rates = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
        summary["tokens_per_s"] = sum(rates) / len(rates) if rates else None
        if recs:
            plot_curves(recs, ["loss", "val_loss", "lr"], out / "loss_curve.png", title="pretraining")
        lm.save(out / "model", state_dict=final_sd, **meta, metrics=summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    dist.barrier(info)
    dist.shutdown(info)
    return summary
