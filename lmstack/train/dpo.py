"""Direct preference optimisation (Rafailov et al. 2023), with the IPO and conservative variants.

    lmstack dpo --model runs/sft/model --out runs/dpo                     # on the built-in suite's pairs
    lmstack dpo --model runs/sft/model --loss ipo --beta 0.5 --lora       # IPO, LoRA adapters

No reward model and no sampling: the policy pi is trained directly on chosen/rejected pairs against the
frozen reference (the starting SFT policy), whose log-probabilities are computed once before training.
With z = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) summed over answer tokens:

    sigmoid       -log sigma(beta z)                                       (DPO)
    ipo           (z - 1/(2 beta))^2                                        (Azar et al. 2023)
    conservative  -(1-eps) log sigma(beta z) - eps log sigma(-beta z)       (labels flipped with prob. eps)

beta (log pi - log ref) is the implicit reward; its accuracy and margin on held-out pairs are logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.infer.logprobs import sequence_logprobs
from lmstack.lm import LM, load
from lmstack.train import dist
from lmstack.train.common import (
    bf16_autocast,
    checkpoint_if_due,
    finish_run,
    log_step,
    optimizer_step,
    pad_id,
    resume_point,
    start_run,
    uses_bf16,
)
from lmstack.train.lora import load_adapter_state
from lmstack.train.policy import final_lm, load_policy, reference
from lmstack.train.prefdata import (
    PrefConfig,
    encode_answer,
    fmt_stats,
    load_comparisons,
    preference_files,
    right_pad,
)
from lmstack.train.recipe import Result

LOSSES = ("sigmoid", "ipo", "conservative")


@dataclass
class DPOConfig(PrefConfig):
    out: str = "runs/dpo"  #: run folder (the policy in <out>/model)
    data: list[str] = field(default_factory=list)  #: pairs/rankings JSONL (default: the suite's pairs)
    val_data: list[str] = field(default_factory=list)  #: held-out pairs (default: the suite's pairs_test)
    subset: str = "all"  #: all, helpful or safety: which comparisons to train on
    beta: float = 0.1  #: strength of the implicit KL to the reference (> 0)
    loss: str = "sigmoid"  #: sigmoid, ipo or conservative
    label_smoothing: float = 0.1  #: eps of the conservative loss (probability that a label is flipped)
    #: RPO (Pang et al. 2024; TRL's rpo_alpha): + this x the chosen answers' per-token negative log-likelihood,
    #: which keeps DPO from lowering the likelihood of the chosen answers along with the rejected ones (0: off)
    rpo_alpha: float = 0.0
    epochs: float = 1.0  #: passes over the pairs; > 0 overrides --steps
    max_pairs: int = 0  #: > 0: train on a seeded random subset of this many pairs (their references are precomputed)
    max_val_pairs: int = 0  #: > 0: evaluate on a seeded random subset of the held-out pairs
    micro_batch: int = 8  #: pairs per step
    lr: float = 5e-5
    warmup: int = 5
    schedule: str = "cosine"
    eval_batch: int = 16  #: pairs per batch when computing log-probabilities for evaluation


def dpo_loss(pi_c, pi_r, ref_c, ref_r, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0):
    """Per-pair loss and the implicit rewards beta (log pi - log ref) of chosen and rejected answers."""
    z = (pi_c - ref_c) - (pi_r - ref_r)
    if loss == "sigmoid":
        out = -F.logsigmoid(beta * z)
    elif loss == "ipo":
        out = (z - 1.0 / (2.0 * beta)) ** 2
    elif loss == "conservative":
        out = -(1 - label_smoothing) * F.logsigmoid(beta * z) - label_smoothing * F.logsigmoid(-beta * z)
    else:
        raise LmstackError(f"--loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    return out, beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()


def chosen_nll(chosen_logprob: torch.Tensor, n_tokens: list[int]) -> torch.Tensor:
    """RPO's term: the chosen answers' negative log-likelihood per token (summed log-probs / answer length)."""
    return -chosen_logprob / torch.tensor(n_tokens, device=chosen_logprob.device).clamp(min=1)


def answer_logprobs(model, seqs: list[list[int]], starts: list[int], pad: int, device) -> torch.Tensor:
    """Sum of log p(answer tokens | prompt) per sequence (answer = tokens from `start` on)."""
    ids, lens = right_pad(seqs, pad, device)
    lp, _ = sequence_logprobs(model, ids)
    col = torch.arange(lp.shape[1], device=device)[None]
    st = torch.tensor(starts, device=device)[:, None]
    mask = (col >= st - 1) & (col < lens[:, None] - 1)
    return (lp * mask).sum(1)


def encode_pairs(tok, comps, seq_len: int, overlong: str):
    """[(chosen ids, chosen start, rejected ids, rejected start)] and the count of pairs over seq_len."""
    out, dropped = [], 0
    for c in comps:
        enc = [encode_answer(tok, c.prompt, a) for a in c.answers]
        for w, lo, _ in c.pairs:
            if max(len(enc[w][0]), len(enc[lo][0])) > seq_len:
                if overlong == "error":
                    raise LmstackError(f"comparison {c.id}: prompt + answer exceeds --seq-len {seq_len}")
                dropped += 1
                continue
            out.append((*enc[w], *enc[lo]))
    return out, dropped


@torch.no_grad()
def pair_logprobs(model, pairs, pad, device, batch: int = 16) -> torch.Tensor:
    """[N, 2] (chosen, rejected) summed log-probabilities, in batches."""
    out = []
    for s in range(0, len(pairs), batch):
        b = pairs[s:s + batch]
        lp = answer_logprobs(model, [p[0] for p in b] + [p[2] for p in b], [p[1] for p in b] + [p[3] for p in b],
                             pad, device)
        out.append(torch.stack([lp[: len(b)], lp[len(b):]], 1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 2)


def seeded_subset(items: list, cap: int, seed: int, stats: dict, key: str) -> list:
    if not 0 < cap < len(items):
        return items
    stats[key] = len(items)  # reported in the summary: a subset, never a silent drop
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:cap]
    return [items[i] for i in sorted(keep.tolist())]


@torch.no_grad()
def evaluate_pairs(model, pairs, refs, cfg: DPOConfig, pad, device, pol=None) -> dict:
    """Held-out DPO loss, implicit-reward accuracy and margin; `pol`: the policy's log-probs when already known."""
    if not pairs:
        return {}
    if pol is None:
        was = model.training
        model.eval()
        pol = pair_logprobs(model, pairs, pad, device, cfg.eval_batch)
        model.train(was)
    loss, rc, rr = dpo_loss(pol[:, 0], pol[:, 1], refs[:, 0], refs[:, 1], cfg.beta, cfg.loss, cfg.label_smoothing)
    return {"val_loss": float(loss.mean()), "val_reward_accuracy": float((rc > rr).float().mean()),
            "val_reward_margin": float((rc - rr).mean())}


def run(cfg: DPOConfig, step_hook=None) -> Result:
    """Run (or resume) DPO. step_hook(step) is called after each step (tests)."""
    if cfg.loss not in LOSSES:
        raise LmstackError(f"--loss must be one of {', '.join(LOSSES)}, not {cfg.loss!r}")
    if cfg.beta <= 0:
        raise LmstackError("--beta must be > 0")
    info = dist.init(cfg.device)
    torch.manual_seed(cfg.seed)
    data, val_data = preference_files(cfg, "pairs.jsonl")
    comps, stats = load_comparisons(data, cfg.skip_bad, cfg.subset)
    lm, model, params, _ = load_policy(cfg, info.device, need_reference=False)
    tok = lm.tokenizer
    pairs, stats["dropped_overlong"] = encode_pairs(tok, comps, cfg.seq_len, cfg.overlong)
    if not pairs:
        raise LmstackError(f"dpo: no pair fits --seq-len {cfg.seq_len} ({fmt_stats(stats)})")
    val_pairs = []
    if val_data:
        vcomps, _ = load_comparisons(val_data, cfg.skip_bad, cfg.subset)
        val_pairs, _ = encode_pairs(tok, vcomps, cfg.seq_len, "drop")
    pairs = seeded_subset(pairs, cfg.max_pairs, cfg.seed, stats, "pairs_subsampled_from")
    val_pairs = seeded_subset(val_pairs, cfg.max_val_pairs, cfg.seed, stats, "val_pairs_subsampled_from")
    pad = pad_id(tok)
    # The reference log-probabilities, once: the policy before any update (LoRA: with its adapters off), in the
    # precision the policy trains in, so that policy and reference start equal (bf16 against fp32 would not).
    with reference(model, None if cfg.lora else model) as ref_model, \
            bf16_autocast(uses_bf16(cfg.precision, info.device), info.device):
        ref_model.eval()
        refs = pair_logprobs(ref_model, pairs, pad, info.device)
        val_refs = pair_logprobs(ref_model, val_pairs, pad, info.device)
    resume_from = resume_point(cfg)
    if resume_from is not None:
        if cfg.lora:
            load_adapter_state(model, resume_from)
        else:
            model.load_state_dict(load(resume_from, device=info.device).model.state_dict())
    if cfg.epochs > 0:
        cfg.steps = max(1, math.ceil(cfg.epochs * len(pairs) / (cfg.micro_batch * info.world * cfg.grad_accum)))
    if info.main and not cfg.quiet:
        print(f"dpo ({cfg.loss}, beta {cfg.beta}): {len(pairs)} pairs ({fmt_stats(stats)}), {len(val_pairs)} held out; "
              f"{cfg.steps} steps")
    save_lm = LM(model, tok, lm.generation_config, {})
    run = start_run(cfg, model, info, "dpo", {"parent": cfg.model, "data": data, "data_stats": stats,
                                              "loss": cfg.loss, "beta": cfg.beta, "lora": cfg.lora},
                    params=params, resume_from=resume_from)
    run.release_memory()  # what the reference pass freed
    # Before the first update the policy is the reference (a full copy, or LoRA adapters that start at zero), so
    # its held-out log-probs are the reference's: no second pass over the held-out pairs (minutes at 135M).
    val = evaluate_pairs(model, val_pairs, val_refs, cfg, pad, info.device, pol=val_refs if run.start == 0 else None)
    val0 = dict(val)
    if val:
        run.log.log(run.start, **val)
    per_step = cfg.micro_batch * info.world * cfg.grad_accum
    for step in range(run.start, cfg.steps):
        lr = run.lr(step)
        # Deterministic epoch-wise shuffles, so a resumed run sees the batches it would have seen.
        epoch, off = divmod(step * per_step, len(pairs))
        order = np.concatenate([np.random.default_rng([cfg.seed, e]).permutation(len(pairs)) for e in (epoch, epoch + 1)])
        take = order[off:off + per_step]
        tot = {"loss": 0.0, "acc": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0}
        seq_tokens = 0  # chosen + rejected tokens the policy ran over, for tokens/s
        for k in range(cfg.grad_accum):
            mine = take[k * cfg.micro_batch * info.world:(k + 1) * cfg.micro_batch * info.world][info.rank::info.world]
            b = [pairs[i] for i in mine]
            seq_tokens += sum(len(p[0]) + len(p[2]) for p in b)
            with run.no_sync(k), run.autocast():
                lp = answer_logprobs(run.dmodel, [p[0] for p in b] + [p[2] for p in b],
                                     [p[1] for p in b] + [p[3] for p in b], pad, info.device)
            run.release_memory()  # the forward's transients, before the backward recomputes its checkpoints
            r = refs[mine].to(info.device)
            loss, rc, rr = dpo_loss(lp[: len(b)], lp[len(b):], r[:, 0], r[:, 1], cfg.beta, cfg.loss,
                                    cfg.label_smoothing)
            if cfg.rpo_alpha > 0:
                loss = loss + cfg.rpo_alpha * chosen_nll(lp[: len(b)], [len(p[0]) - p[1] for p in b])
            (loss.mean() / cfg.grad_accum).backward()
            tot["loss"] += loss.mean().item() / cfg.grad_accum
            tot["acc"] += float((rc > rr).float().mean()) / cfg.grad_accum
            tot["margin"] += float((rc - rr).mean()) / cfg.grad_accum
            tot["chosen"] += float(rc.mean()) / cfg.grad_accum
            tot["rejected"] += float(rr.mean()) / cfg.grad_accum
        loss_v = dist.all_mean(tot["loss"], info)
        updated, gnorm = optimizer_step(run, step, loss_v, lr)
        done = step + 1
        if updated:
            tokens = round(dist.all_mean(float(seq_tokens), info) * info.world)
            log_step(run, done, tokens, loss=loss_v, reward_accuracy=tot["acc"], reward_margin=tot["margin"],
                     reward_chosen=tot["chosen"], reward_rejected=tot["rejected"], lr=lr, grad_norm=gnorm)
        if val_pairs and (done == cfg.steps or (cfg.eval_interval and done % cfg.eval_interval == 0)):
            with run.autocast():
                val = evaluate_pairs(model, val_pairs, val_refs, cfg, pad, info.device)
            run.log.log(done, **val)
        run.log.progress(1, loss=loss_v, acc=tot["acc"])
        checkpoint_if_due(run, save_lm, done)
        if step_hook is not None:
            step_hook(done)
    summary = {"steps": cfg.steps, "final_loss": run.last_loss, "data": stats, "val_before": val0, **val}
    finish_run(run, final_lm(lm, model, cfg), summary,
               ["loss", "reward_accuracy", "reward_margin", "val_reward_accuracy"], f"DPO ({cfg.loss})")
    dist.shutdown(info)
    return Result(summary, {"model": str(run.out / "model")})
