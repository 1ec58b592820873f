"""Supervised fine-tuning (instruction tuning) recipe, FLAN / InstructGPT step 1.

    lmstack sft --model runs/pre/model --data tasks.jsonl --out runs/sft            # full fine-tuning
    lmstack sft --model smollm2.gguf --data alpaca.json --lora --lora-r 8 ...        # LoRA (peft)

Conversations are rendered through the checkpoint's chat template; the loss is next-token
cross-entropy on assistant tokens only (the template's mask) unless --train-on all. Examples are
packed into sequences with position ids reset per example and attention kept inside each example
(document masking), or padded one per row (--no-packing) for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from lmstack.data.instructions import load_conversations
from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.train import dist
from lmstack.train.common import (
    TrainConfig,
    checkpoint_if_due,
    finish_run,
    load_for_training,
    log_step,
    optimizer_step,
    pad_id,
    resume_point,
    start_run,
)
from lmstack.train.log import read_metrics
from lmstack.train.lora import LoraOptions, apply_lora, load_adapter_state
from lmstack.train.recipe import Result


@dataclass
class SFTConfig(LoraOptions, TrainConfig):
    out: str = "runs/sft"  #: run folder (the model in <out>/model, with --lora also <out>/adapter)
    model: str = ""  #: checkpoint to fine-tune (folder, .gguf, hub name)
    data: list[str] = field(default_factory=list)  #: instruction data: JSONL/JSON (messages, Alpaca, ShareGPT) or hf:NAME[:CONFIG][:SPLIT]
    val_data: list[str] = field(default_factory=list)  #: held-out instruction data, for the validation loss
    seq_len: int = 512  #: longest conversation, in tokens
    packing: bool = True  #: pack examples into sequences with document-masked attention (--no-packing pads)
    train_on: str = "assistant"  #: assistant (the chat template's mask) or all
    overlong: str = "truncate"  #: truncate, or reject (drop, counted): a conversation longer than --seq-len
    skip_bad: bool = False  #: count and skip malformed records instead of stopping
    epochs: float = 0.0  #: passes over the data; > 0 overrides --steps
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    eval_interval: int = 100
    ckpt_interval: int = 200


@dataclass
class Example:
    ids: list[int]
    mask: list[int]  # 1 where the token is a training target


def tokenize_conversations(tokenizer, convs: list[dict], seq_len: int, train_on: str = "assistant",
                           overlong: str = "truncate") -> tuple[list[Example], dict]:
    """Render and mask; returns examples and counts (truncated, rejected, no-target)."""
    if train_on not in ("assistant", "all"):
        raise LmstackError(f"--train-on must be 'assistant' or 'all', not {train_on!r}")
    if overlong not in ("truncate", "reject"):
        raise LmstackError(f"--overlong must be 'truncate' or 'reject', not {overlong!r}")
    stats = {"examples": 0, "truncated": 0, "rejected_overlong": 0, "dropped_no_target": 0, "target_tokens": 0}
    out = []
    for c in convs:
        ids, mask = tokenizer.encode_chat(c["messages"], tools=c.get("tools"))
        if train_on == "all":
            mask = [1] * len(ids)
        if len(ids) > seq_len:
            if overlong == "reject":
                stats["rejected_overlong"] += 1
                continue
            ids, mask = ids[:seq_len], mask[:seq_len]
            stats["truncated"] += 1
        if not any(mask[1:]):  # the first token is never a target
            stats["dropped_no_target"] += 1
            continue
        out.append(Example(ids, mask))
        stats["target_tokens"] += sum(mask[1:])
    stats["examples"] = len(out)
    return out, stats


def pack(examples: list[Example], seq_len: int, packing: bool, seed: int) -> list[list[Example]]:
    """Group examples into rows: greedy packing up to seq_len tokens per row, or one example per row."""
    order = np.random.default_rng(seed).permutation(len(examples))
    if not packing:
        return [[examples[i]] for i in order]
    rows, cur, n = [], [], 0
    for i in order:
        ex = examples[i]
        if cur and n + len(ex.ids) > seq_len:
            rows.append(cur)
            cur, n = [], 0
        cur.append(ex)
        n += len(ex.ids)
    if cur:
        rows.append(cur)
    return rows


def collate(rows: list[list[Example]], pad_id: int, packing: bool):
    """Tensors for a batch of rows: inputs, targets, loss mask, positions, and the attention mask
    (document-masked causal for packed rows; None for padded rows, where causal attention suffices)."""
    T = max(sum(len(e.ids) for e in r) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    tmask = torch.zeros((B, T), dtype=torch.bool)
    pos = torch.zeros((B, T), dtype=torch.long)
    doc = torch.full((B, T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        o = 0
        for d, e in enumerate(r):
            n = len(e.ids)
            ids[b, o:o + n] = torch.tensor(e.ids)
            tmask[b, o:o + n] = torch.tensor(e.mask, dtype=torch.bool)
            tmask[b, o] = False  # the first token of an example has nothing before it in its example
            pos[b, o:o + n] = torch.arange(n)
            doc[b, o:o + n] = d
            o += n
    x, y = ids[:, :-1], ids[:, 1:]
    loss_mask = tmask[:, 1:]
    attn = None
    if packing:
        dq = doc[:, :-1]
        causal = torch.ones(T - 1, T - 1, dtype=torch.bool).tril()
        attn = ((dq[:, :, None] == dq[:, None, :]) & causal)[:, None]
    return x, y, loss_mask, pos[:, :-1], attn


class Batches:
    """Deterministic batches from (seed, step): the same rows for a resumed or a data-parallel run."""

    def __init__(self, rows, micro_batch: int, world: int, seed: int):
        if not rows:
            raise LmstackError("sft: no training examples left after filtering")
        self.rows, self.mb, self.world, self.seed = rows, micro_batch, world, seed
        self._orders: dict[int, np.ndarray] = {}

    def _row(self, i: int):
        epoch, j = divmod(i, len(self.rows))
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return self.rows[self._orders[epoch][j]]

    def get(self, micro_index: int, rank: int):
        base = micro_index * self.mb * self.world + rank * self.mb
        return [self._row(base + r) for r in range(self.mb)]


def nll_sum(model, batch, device, autocast):
    """Sum of target-token negative log-likelihoods, and their count."""
    x, y, m, pos, attn = (t.to(device) if t is not None else None for t in batch)
    with autocast():  # the chunked log-prob kernel: no full-vocabulary logits (masked targets clamped, weight 0)
        lp, _ = model(x, positions=pos, attn_mask=attn, targets=y.clamp(min=0))
    return -(lp * m).sum(), m.sum()


def run(cfg: SFTConfig, step_hook=None) -> Result:
    """Run (or resume) supervised fine-tuning. step_hook(step) is called after each step (tests)."""
    if not cfg.model:
        raise LmstackError("sft: --model is required (the checkpoint to fine-tune)")
    if not cfg.data:
        raise LmstackError("sft: --data is required")
    info = dist.init(cfg.device)
    torch.manual_seed(cfg.seed)
    resume_from = resume_point(cfg)
    lm = load_for_training(cfg.model, info.device, cfg.seq_len, "SFT renders conversations with its chat template")
    tok = lm.tokenizer
    convs, report = load_conversations(cfg.data, skip_bad=cfg.skip_bad)
    examples, stats = tokenize_conversations(tok, convs, cfg.seq_len, cfg.train_on, cfg.overlong)
    stats.update(records_read=report.read, records_skipped=len(report.skipped))
    rows = pack(examples, cfg.seq_len, cfg.packing, cfg.seed)
    if cfg.epochs > 0:
        cfg.steps = max(1, math.ceil(cfg.epochs * len(rows) / (cfg.micro_batch * info.world * cfg.grad_accum)))
    batches = Batches(rows, cfg.micro_batch, info.world, cfg.seed)
    val_rows = None
    if cfg.val_data:
        vconv, _ = load_conversations(cfg.val_data, skip_bad=cfg.skip_bad)
        vex, _ = tokenize_conversations(tok, vconv, cfg.seq_len, cfg.train_on, cfg.overlong)
        val_rows = pack(vex, cfg.seq_len, cfg.packing, cfg.seed)
    if info.main and not cfg.quiet:
        print(f"sft: {stats['examples']} examples in {len(rows)} rows ({'packed' if cfg.packing else 'padded'}), "
              f"{stats['target_tokens']:,} target tokens; truncated {stats['truncated']}, rejected "
              f"{stats['rejected_overlong']}, no target {stats['dropped_no_target']}, bad records skipped "
              f"{stats['records_skipped']}")
        for s in report.skipped[:5]:
            print(f"  skipped {s['where']}: {s['reason']}")
    model = lm.model
    params = None
    if cfg.lora:
        model = apply_lora(model, cfg)
        if resume_from is not None:
            load_adapter_state(model, resume_from)
        params = [p for p in model.parameters() if p.requires_grad]
    elif resume_from is not None:
        model = load(resume_from, device=info.device).model
    lm = LM(model, tok, lm.generation_config, {})
    run = start_run(cfg, model, info, "sft", {"parent": cfg.model, "data": cfg.data, "data_stats": stats,
                                               "lora": cfg.lora}, params=params, resume_from=resume_from)
    pad = pad_id(tok)
    val_loss = None
    for step in range(run.start, cfg.steps):
        lr = run.lr(step)
        parts = [batches.get(step * cfg.grad_accum + k, info.rank) for k in range(cfg.grad_accum)]
        micro = [collate(rows, pad, cfg.packing) for rows in parts]
        # Normalise by the step's total target tokens over every micro-batch and rank, so the gradient is the mean
        # over tokens however they fall into micro-batches. Progress counts the tokens the step runs the model over
        # (as pretraining, DPO and TRL's num_tokens do), not only those targets: tokens/s and MFU are throughput.
        # Both sums in one collective.
        seen, total = dist.all_sum(torch.tensor([sum(len(e.ids) for rows in parts for r in rows for e in r),
                                                 sum(int(b[2].sum()) for b in micro)]), info).tolist()
        loss_sum = 0.0
        for k, b in enumerate(micro):
            with run.no_sync(k):
                s, n = nll_sum(run.dmodel, b, info.device, run.autocast)
                (s * info.world / max(total, 1.0)).backward()
            loss_sum += s.item()
        loss_v = dist.all_mean(loss_sum, info) * info.world / max(total, 1.0)
        updated, gnorm = optimizer_step(run, step, loss_v, lr)
        done = step + 1
        if updated:
            log_step(run, done, int(seen), loss=loss_v, lr=lr, grad_norm=gnorm, target_tokens=int(total))
        if val_rows and cfg.eval_interval and (done % cfg.eval_interval == 0 or done == cfg.steps):
            val_loss = evaluate_rows(run, val_rows, pad)
            run.log.log(done, val_loss=val_loss)
        run.log.progress(1, loss=loss_v, lr=lr)
        checkpoint_if_due(run, lm, done, {"val_loss": val_loss})
        if step_hook is not None:
            step_hook(done)
    summary = {"steps": cfg.steps, "final_loss": run.last_loss, "val_loss": val_loss, "data": stats,
               "first_loss": _first_loss(run)}
    final = lm
    artifacts = {"model": str(run.out / "model")}
    if cfg.lora:
        artifacts["adapter"] = str(run.out / "adapter")
        if info.main:
            lm.save(run.out / "adapter", **run.meta)
            final = LM(model.merge_and_unload(), tok, lm.generation_config, {})
    finish_run(run, final, summary, ["loss", "val_loss", "lr"], "instruction tuning")
    dist.shutdown(info)
    return Result(summary, artifacts)


def _first_loss(run):
    recs = [r for r in read_metrics(run.out / "metrics.jsonl") if r.get("loss") is not None]
    return recs[0]["loss"] if recs else None


@torch.no_grad()
def evaluate_rows(run, rows, pad, max_batches: int | None = None) -> float:
    run.dmodel.eval()
    tot, n = 0.0, 0
    mb = run.cfg.micro_batch
    limit = max_batches or run.cfg.eval_batches
    for i in range(0, min(len(rows), mb * limit), mb):
        s, c = nll_sum(run.dmodel, collate(rows[i:i + mb], pad, run.cfg.packing), run.info.device, run.autocast)
        tot += s.item()
        n += int(c)
    run.dmodel.train()
    return tot / max(n, 1)
