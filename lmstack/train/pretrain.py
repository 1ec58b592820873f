"""Pretraining recipe: next-token prediction over token shards (GPT-3 / nanoGPT style).

    lmstack pretrain --data runs/data --preset llama-mini --steps 2000 --out runs/pre
    torchrun --nproc_per_node=8 -m lmstack pretrain ...          # data parallel (DDP); --fsdp shards

The loop below is the whole algorithm: sample a batch, predict every next token, cross-entropy,
backward (accumulating micro-batches), clip, AdamW step on a warmup+decay schedule. Around it:
validation perplexity, atomic checkpoints with exact resume, and non-finite-loss protection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmstack.data.mixture import Mixture, parse_mix, val_batches
from lmstack.data.shards import TokenDataset
from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.model.checkpoint import build_model
from lmstack.model.config import preset
from lmstack.model.info import model_info
from lmstack.tokenizer import Tokenizer
from lmstack.train import dist
from lmstack.train.common import (
    TrainConfig,
    checkpoint_if_due,
    finish_run,
    log_step,
    optimizer_step,
    resume_point,
    start_run,
)
from lmstack.train.recipe import Result

# Dense bf16 peak FLOP/s by GPU name, for model FLOPs utilisation (MFU).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "4090": 165e12, "3090": 71e12}


@dataclass
class PretrainConfig(TrainConfig):
    out: str = "runs/pretrain"  #: run folder (the model in <out>/model, checkpoints in <out>/checkpoints)
    data: list[str] = field(default_factory=list)  #: prepared token folders: DIR or NAME=DIR (repeatable)
    mix: list[str] = field(default_factory=list)  #: sampling weights by source, NAME=WEIGHT ... (GPT-3 style: by weight, not size)
    preset: str = "llama-mini"  #: model preset (lmstack presets)
    overrides: dict = field(default_factory=dict)  #: ModelConfig fields over the preset, e.g. n_layer=4
    init_from: str | None = None  #: start from this checkpoint instead of random weights (folder, .gguf, hub name)
    seq_len: int = 256  #: tokens per training sequence


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def open_data(cfg: PretrainConfig, seq_len: int, global_micro_batch: int):
    """Training mixture and validation set from prepared token folders (`lmstack data prepare`)."""
    if not cfg.data:
        raise LmstackError("pretrain: no --data given (a folder written by `lmstack data prepare`)")
    dirs = {}
    for i, spec in enumerate(cfg.data):
        if "=" in spec:
            name, path = spec.split("=", 1)
        else:
            name, path = (f"data{i}" if len(cfg.data) > 1 else "data"), spec
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
def evaluate(run, val, seq_len: int) -> float:
    run.dmodel.eval()
    total, n = 0.0, 0
    for x, y in val_batches(val, seq_len, run.cfg.micro_batch, run.cfg.eval_batches):
        with run.autocast():
            logits = run.dmodel(x.to(run.info.device))
        total += F.cross_entropy(logits.float().flatten(0, 1), y.to(run.info.device).flatten(),
                                 reduction="sum").item()
        n += y.numel()
    run.dmodel.train()
    return dist.all_mean(total / max(n, 1), run.info)


def build_or_load(cfg: PretrainConfig, manifest: dict, tokenizer, device, resume_from):
    src = resume_from or cfg.init_from
    if src is not None:
        lm = load(src, device=device)
        return lm.model, lm.tokenizer or tokenizer
    mcfg = preset(cfg.preset, **{
        "vocab_size": manifest["vocab_size"], "max_seq_len": cfg.seq_len,
        "bos_token_id": tokenizer.bos_id if tokenizer else None,
        "eos_token_id": tokenizer.stop_ids if tokenizer else manifest.get("eos_id"),
        "pad_token_id": tokenizer.pad_id if tokenizer else None, **cfg.overrides})
    return build_model(mcfg, device=device), tokenizer


def run(cfg: PretrainConfig, loss_hook=None, step_hook=None) -> Result:
    """Run (or resume) pretraining. loss_hook(step, loss)->loss and step_hook(step) are for tests/experiments."""
    info = dist.init(cfg.device)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    mix, val, train_sets = open_data(cfg, cfg.seq_len, cfg.micro_batch * info.world)
    manifest = next(iter(train_sets.values())).manifest
    tokenizer = Tokenizer.load(manifest["tokenizer"]) if manifest.get("tokenizer") else None
    resume_from = resume_point(cfg)
    model, tokenizer = build_or_load(cfg, manifest, tokenizer, info.device, resume_from)
    if model.cfg.vocab_size < manifest["vocab_size"]:
        raise LmstackError(f"data vocabulary ({manifest['vocab_size']}) is larger than the model's "
                           f"({model.cfg.vocab_size}); prepare the data with the model's tokenizer")
    if cfg.seq_len > model.cfg.max_seq_len:
        raise LmstackError(f"--seq-len {cfg.seq_len} exceeds the model's context {model.cfg.max_seq_len}")
    run = start_run(cfg, model, info, "pretrain", {"parent": cfg.init_from}, resume_from=resume_from)
    run.flops_per_token, run.peak_flops = model_info(model.cfg)["train_flops_per_token"], peak_flops(info.device)
    lm = LM(model, tokenizer, {"eos_token_id": model.cfg.eos_token_id})
    tokens_per_step = cfg.micro_batch * cfg.seq_len * cfg.grad_accum * info.world
    val_loss = None
    for step in range(run.start, cfg.steps):
        lr = run.lr(step)
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = mix.get_batch(step * cfg.grad_accum + micro, info.rank, info.world)
            x, y = x.to(info.device), y.to(info.device)
            with run.no_sync(micro):
                with run.autocast():
                    logits = run.dmodel(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                if loss_hook is not None:
                    loss = loss_hook(step, loss)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
        loss_v = dist.all_mean(loss_sum, info)
        updated, gnorm = optimizer_step(run, step, loss_v, lr)
        done = step + 1
        if updated:
            log_step(run, done, tokens_per_step, loss=loss_v, lr=lr, grad_norm=gnorm)
        if cfg.eval_interval and (done % cfg.eval_interval == 0 or done == cfg.steps):
            val_loss = evaluate(run, val, cfg.seq_len)
            run.log.log(done, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 50)))
            run.log.write(f"step {done}: val loss {val_loss:.4f}, perplexity {math.exp(min(val_loss, 50)):.2f}")
        run.log.progress(1, loss=loss_v, lr=lr)
        checkpoint_if_due(run, lm, done, {"val_loss": val_loss})
        if step_hook is not None:
            step_hook(done)
    summary = {"steps": cfg.steps, "val_loss": val_loss, "final_loss": run.last_loss,
               "val_ppl": math.exp(min(val_loss, 50)) if val_loss is not None else None,
               "params": model.num_params()}
    finish_run(run, lm, summary, ["loss", "val_loss", "lr"], "pretraining")
    dist.shutdown(info)
    return Result(summary, {"model": str(run.out / "model"), "metrics": str(run.out / "metrics.jsonl")})
