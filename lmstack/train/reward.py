"""Reward model recipe, InstructGPT step 2 (with Llama 2's margins and its two reward models).

    lmstack reward --model runs/sft/model --out runs/rm                       # on the built-in suite
    lmstack reward --model runs/sft/model --subset safety --out runs/rm_safe  # Llama 2's safety RM
    lmstack reward --model runs/sft/model --data prefs.jsonl --margin-scale 0.1

A Transformer (from an SFT or base checkpoint) with a scalar head read at the last token of the answer.
Each prompt's K ranked answers are scored in one forward pass and all C(K,2) comparisons of the prompt
form one batch element (InstructGPT), loss -log sigma(r_chosen - r_rejected - margin). After training
the scores are normalised with a gain and bias so that the SFT policy's own answers have mean 0 and
std 1, which makes thresholds (Llama 2's safety rule) and PPO's KL coefficient meaningful across RMs.

The checkpoint is a reward model folder (lmstack.train.rewards: the network, loading and saving). With
--sample-rankings, InstructGPT's labelling (lmstack.train.labelling) adds rankings of the policy's own
samples to the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmstack.data.records import write_jsonl
from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.train import dist
from lmstack.train.common import (
    checkpoint_if_due,
    finish_run,
    load_for_training,
    log_step,
    optimizer_step,
    pad_id,
    resume_point,
    start_run,
)
from lmstack.train.labelling import sample_rankings, sft_answers
from lmstack.train.lora import apply_lora, load_adapter_state
from lmstack.train.prefdata import (
    Comparison,
    PrefConfig,
    encode_answer,
    fmt_stats,
    load_comparisons,
    load_prompts,
    preference_files,
    right_pad,
    suite_dir,
    suite_judge,
)
from lmstack.train.recipe import Result
from lmstack.train.rewards import RewardModel, RewardNet, save_reward_model
from lmstack.train.state import check_resumable, config_fingerprint, read_trainer_state


@dataclass
class RewardConfig(PrefConfig):
    out: str = "runs/reward"  #: run folder (the reward model in <out>/model)
    data: list[str] = field(default_factory=list)  #: rankings/pairs JSONL (default: the suite's rankings)
    val_data: list[str] = field(default_factory=list)  #: held-out comparisons (default: the suite's pairs_test)
    subset: str = "all"  #: all, helpful or safety (Llama 2's two reward models)
    margin_scale: float = 0.0  #: Llama 2 margin = scale x rating gap (0: off)
    epochs: float = 2.0  #: passes over the comparisons; > 0 overrides --steps
    micro_batch: int = 8  #: prompts per step (each with all its answers)
    lr: float = 3e-4
    warmup: int = 5
    schedule: str = "cosine"
    normalize: bool = True  #: gain/bias so that the SFT policy's answers score 0 +- 1
    norm_policy: str = ""  #: whose answers define the normalisation (default: --model)
    norm_prompts: int = 64  #: prompts the normalisation samples answers for
    norm_max_new_tokens: int = 48  #: length of those answers
    #: > 0: InstructGPT's labelling: this many answers sampled from --model per suite prompt, ranked by the
    #: suite's simulated annotators, added to the training data
    sample_rankings: int = 0
    sample_prompts: int = 256  #: train prompts to sample for (and a quarter as many test prompts, held out)
    sample_max_new_tokens: int = 32  #: length of the sampled answers
    #: the labelers call two sampled answers whose scores differ by less than this a tie (Llama 2's
    #: "negligibly better / unsure"; unset: the suite's annotators' own margin)
    tie_margin: float | None = None
    #: with sampled rankings, train on the suite's rankings too (off: on the policy's ranked samples only,
    #: as InstructGPT's RM; the suite's held-out pairs still measure it)
    suite_rankings: bool = True


@dataclass
class EncodedComparison:
    seqs: list[list[int]]  # one per answer that is in a pair (the answers forwarded)
    pairs: list[tuple[int, int, float]]  # (better, worse, margin), indices into seqs


def encode_comparisons(tok, comps: list[Comparison], seq_len: int, overlong: str) -> tuple[list[EncodedComparison], dict]:
    """Token ids of each comparison's answers (prompt + answer) and its pairs. An answer longer than `seq_len` is
    counted (`overlong_answers`) with the pairs it was in (`pairs_lost_overlong`), and is not kept: only answers of
    the remaining pairs are forwarded (`--overlong error`: a one-line error instead)."""
    stats = {"overlong_answers": 0, "pairs_lost_overlong": 0}
    out = []
    for c in comps:
        seqs = [encode_answer(tok, c.prompt, a)[0] for a in c.answers]
        bad = {i for i, s in enumerate(seqs) if len(s) > seq_len}
        if bad:
            if overlong == "error":
                raise LmstackError(f"comparison {c.id}: prompt + answer of {max(len(seqs[i]) for i in bad)} tokens "
                                   f"exceeds --seq-len {seq_len} (raise it, or --overlong drop)")
            stats["overlong_answers"] += len(bad)
        pairs = [p for p in c.pairs if p[0] not in bad and p[1] not in bad]
        stats["pairs_lost_overlong"] += len(c.pairs) - len(pairs)
        if pairs:
            used = sorted({i for a, b, _ in pairs for i in (a, b)})
            new = {old: k for k, old in enumerate(used)}
            out.append(EncodedComparison([seqs[i] for i in used], [(new[a], new[b], m) for a, b, m in pairs]))
    return out, stats


def comparison_loss(net, batch: list[EncodedComparison], pad: int, device):
    """Mean over prompts of the mean over the prompt's pairs of -log sigma(r_w - r_l - margin); each answer is
    scored once. Returns loss, correct pairs, pairs, sum of (r_w - r_l)."""
    seqs, offs = [], []
    for c in batch:
        offs.append(len(seqs))
        seqs += c.seqs
    ids, lens = right_pad(seqs, pad, device)
    r = net(ids, lens)
    losses, correct, n, gap = [], 0, 0, 0.0
    for o, c in zip(offs, batch):
        w = torch.tensor([o + a for a, _, _ in c.pairs], device=device)
        lo = torch.tensor([o + b for _, b, _ in c.pairs], device=device)
        m = torch.tensor([mm for _, _, mm in c.pairs], device=device, dtype=r.dtype)
        d = r[w] - r[lo]
        losses.append(-F.logsigmoid(d - m).mean())
        correct += int((d > 0).sum())
        n += len(c.pairs)
        gap += float(d.detach().sum())
    return torch.stack(losses).mean(), correct, n, gap


@torch.no_grad()
def evaluate_comparisons(net, comps: list[EncodedComparison], pad: int, device, batch: int = 16) -> dict:
    """Held-out accuracy (r_chosen > r_rejected) and mean margin r_chosen - r_rejected."""
    was = net.training
    net.eval()
    correct = n = 0
    gap = 0.0
    for s in range(0, len(comps), batch):
        _, c, k, g = comparison_loss(net, comps[s:s + batch], pad, device)
        correct, n, gap = correct + c, n + k, gap + g
    net.train(was)
    return {"accuracy": correct / max(n, 1), "margin": gap / max(n, 1), "pairs": n}


def run(cfg: RewardConfig) -> Result:
    if not cfg.model:
        raise LmstackError("reward: --model is required (the SFT or base checkpoint to start from)")
    info = dist.init(cfg.device)
    torch.manual_seed(cfg.seed)
    data, val_data = preference_files(cfg, "rankings.jsonl")
    sampled = {}
    if cfg.sample_rankings > 0:
        sampled = sample_data(cfg, info)
        data = (data if cfg.suite_rankings or cfg.data else []) + [sampled["sampled_rankings"]]
    sampled_val = [sampled["sampled_rankings_test"]] if sampled else []
    comps, stats = load_comparisons(data, cfg.skip_bad, cfg.subset, cfg.margin_scale)
    lm = load_for_training(cfg.model, info.device, cfg.seq_len, "the reward model renders prompt + answer with it")
    tok = lm.tokenizer
    train, tstats = encode_comparisons(tok, comps, cfg.seq_len, cfg.overlong)
    stats.update(tstats)
    if not train:
        raise LmstackError(f"reward: no comparison fits --seq-len {cfg.seq_len} ({fmt_stats(stats)})")
    val, vstats = [], {}
    if val_data:
        vcomps, vstats = load_comparisons(val_data, cfg.skip_bad, cfg.subset, 0.0)
        val, vt = encode_comparisons(tok, vcomps, cfg.seq_len, cfg.overlong)
        vstats.update(vt)
    sval = []
    if sampled_val:
        try:
            scomps, _ = load_comparisons(sampled_val, cfg.skip_bad, cfg.subset, 0.0)
            sval, _ = encode_comparisons(tok, scomps, cfg.seq_len, "drop")
        except LmstackError as e:  # e.g. every held-out sample tied: nothing to score, training goes on
            if info.main and not cfg.quiet:
                print(f"reward: no held-out sampled comparisons ({e})")
    if cfg.epochs > 0:
        cfg.steps = max(1, math.ceil(cfg.epochs * len(train) / (cfg.micro_batch * info.world)))
    if info.main and not cfg.quiet:
        print(f"reward: {len(train)} prompts, {sum(len(c.pairs) for c in train)} comparisons ({fmt_stats(stats)}); "
              f"held out {sum(len(c.pairs) for c in val)} pairs")
        for b in stats["bad"][:5]:
            print(f"  skipped {b}")

    backbone = lm.model
    params = None
    if cfg.lora:
        backbone = apply_lora(backbone, cfg)
    net = RewardNet(backbone, lm.config.d_model)
    if cfg.lora:
        params = [p for p in net.parameters() if p.requires_grad]
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    # --resume: the backbone (or its adapters) from the checkpoint's model folder, the head and the data order from
    # its trainer state; start_run restores the optimizer, the RNG and the step.
    resume_from = resume_point(cfg)
    if resume_from is not None:
        blob, _ = read_trainer_state(resume_from, info.rank)
        check_resumable(resume_from, blob.get("recipe"), blob.get("config"), "reward", cfg)
        if cfg.lora:
            load_adapter_state(backbone, resume_from)
        else:
            backbone.load_state_dict(load(resume_from, device=info.device).model.state_dict())
        net.head.load_state_dict(blob["head"])
        rng.bit_generator.state, order = blob["order_rng"], list(blob["order"])
    run = start_run(cfg, net, info, "reward", {"parent": cfg.model, "data": data, "data_stats": stats,
                                                "subset": cfg.subset, "lora": cfg.lora}, params=params,
                    resume_from=resume_from)
    pad = pad_id(tok)
    save_lm = LM(backbone, tok, lm.generation_config, {})
    val_metrics, sampled_metrics = {}, {}
    for step in range(run.start, cfg.steps):
        lr = run.lr(step)
        # Each batch element is one prompt with all its comparisons (never split across batches).
        need = cfg.micro_batch * info.world
        while len(order) < need:
            order += rng.permutation(len(train)).tolist()
        take, order = order[:need], order[need:]
        batch = [train[i] for i in take[info.rank::info.world]]
        loss, correct, n, gap = comparison_loss(run.dmodel, batch, pad, info.device)
        loss.backward()
        loss_v = dist.all_mean(loss.item(), info)
        updated, gnorm = optimizer_step(run, step, loss_v, lr)
        done = step + 1
        if updated:
            log_step(run, done, sum(len(s) for c in batch for s in c.seqs), loss=loss_v, accuracy=correct / max(n, 1),
                     margin=gap / max(n, 1), lr=lr, grad_norm=gnorm)
        if val and (done == cfg.steps or (cfg.eval_interval and done % cfg.eval_interval == 0)):
            val_metrics = evaluate_comparisons(net, val, pad, info.device)
            run.log.log(done, val_accuracy=val_metrics["accuracy"], val_margin=val_metrics["margin"])
        if sval and done == cfg.steps:
            sampled_metrics = evaluate_comparisons(net, sval, pad, info.device)
        run.log.progress(1, loss=loss_v, acc=correct / max(n, 1))
        if cfg.ckpt_interval:
            checkpoint_if_due(run, save_lm, done, blobs=lambda order=order: {
                "recipe": "reward", "config": config_fingerprint(cfg), "head": net.head.state_dict(),
                "order_rng": rng.bit_generator.state, "order": list(order)})

    rm = RewardModel(net, tok)
    norm = {}
    if cfg.normalize:
        # Normalise on answers the SFT policy itself writes, so that 0 means "as good as SFT" and one unit is
        # the spread of SFT's answers (Llama 2 thresholds and PPO's beta then mean the same for every RM).
        # The prompts are those of every subset, the distribution PPO rewards: a safety RM normalised on safety
        # prompts alone scored the helpful prompts' average answer 1.6 SD low, so Llama 2's 0.15 threshold
        # handed half of PPO's helpful rollouts to the safety RM.
        norm_comps = comps if cfg.subset == "all" else load_comparisons(data, cfg.skip_bad, "all", 0.0)[0]
        prompts = [c.prompt for c in norm_comps]
        pick = np.random.default_rng(cfg.seed + 1).permutation(len(prompts))[: cfg.norm_prompts]
        ps = [prompts[i] for i in pick]
        answers = sft_answers(cfg.norm_policy or cfg.model, ps, cfg.norm_max_new_tokens, cfg.seed, info.device)
        raw = rm.score(ps, answers, normalized=False)
        std = float(raw.std()) if len(raw) > 1 else 1.0
        rm.gain = 1.0 / max(std, 1e-6)
        rm.bias = -float(raw.mean()) * rm.gain
        norm = {"gain": rm.gain, "bias": rm.bias, "raw_mean": float(raw.mean()), "raw_std": std, "n": len(raw)}
    summary = {"steps": cfg.steps, "final_loss": run.last_loss, "data": stats, "val_data": vstats,
               "val_accuracy": val_metrics.get("accuracy"), "val_margin": val_metrics.get("margin"),
               "val_pairs": val_metrics.get("pairs"), "normalization": norm, "subset": cfg.subset,
               "val_sampled_accuracy": sampled_metrics.get("accuracy"), "val_sampled_pairs": sampled_metrics.get("pairs")}
    finish_run(run, None, summary, ["loss", "accuracy", "val_accuracy", "margin"], "reward model")
    if info.main:
        save_reward_model(rm, run.out / "model", **run.meta, metrics=summary)
    dist.shutdown(info)
    return Result(summary, {"model": str(run.out / "model"), **sampled})


def sample_data(cfg: RewardConfig, info) -> dict[str, str]:
    """Rankings of the policy's own samples for train prompts (training data) and test prompts (held out):
    {"sampled_rankings": train file, "sampled_rankings_test": test file}."""
    suite = suite_dir(cfg)
    panel = suite_judge(suite)
    if cfg.tie_margin is not None:
        if cfg.tie_margin < 0:
            raise LmstackError(f"reward: tie_margin {cfg.tie_margin} must be >= 0")
        panel = [replace(a, tie_margin=cfg.tie_margin) for a in panel]
    suite_cfg = replace(cfg, data=[])
    paths, out = {}, Path(cfg.out)
    for split, n in (("train", cfg.sample_prompts), ("test", max(1, cfg.sample_prompts // 4))):
        paths[split] = out / f"sampled_rankings_{split}.jsonl"
        if cfg.resume and paths[split].exists():  # written whole (atomically) by the run being resumed
            continue
        recs, _ = load_prompts(suite_cfg, split=split)
        pick = np.random.default_rng([cfg.seed, len(split)]).permutation(len(recs))[:n]
        ranks, st = sample_rankings(cfg.model, [recs[i] for i in pick], cfg.sample_rankings, panel,
                                    cfg.sample_max_new_tokens, cfg.seed, info.device, split, cfg.bars)
        if info.main:
            write_jsonl(paths[split], ranks)
            if not cfg.quiet:
                print(f"reward: {len(ranks)} rankings of {cfg.sample_rankings} policy samples on {split} prompts "
                      f"({st['one_distinct_answer']} prompts with one distinct answer, {st['dropped_overlong']} too long)")
        dist.barrier(info)
    return {"sampled_rankings": str(paths["train"]), "sampled_rankings_test": str(paths["test"])}
