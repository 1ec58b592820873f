"""Rejection sampling fine-tuning, Llama 2-Chat's method (Touvron et al. 2023, section 3.2.3).

    lmstack rejection-sampling --model runs/sft/model --reward-model runs/rm/model --out runs/rs
    lmstack rejection-sampling --model runs/sft/model --reward-model runs/rm/model \
        --safety-reward-model runs/rm_safe/model --rounds 3 --samples 8

Each round: for every prompt, sample N answers from the current policy (the shared generation engine),
keep the one the reward model(s) score highest, and fine-tune on the kept answers with the SFT recipe.
As in Llama 2, the kept set is the best answer found in any round so far, so a worse round cannot
erase what an earlier one found. The gap between the best-of-N reward and the mean reward is the
improvement a round can distil into the policy; both are logged per round.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmstack.data.records import write_jsonl
from lmstack.errors import LmstackError
from lmstack.lm import load
from lmstack.train import dist, sft
from lmstack.train.common import load_for_training
from lmstack.train.log import MetricsLogger, plot_curves, read_metrics
from lmstack.train.lora import lora_options
from lmstack.train.policy import check_rollout_quantize
from lmstack.train.prefdata import PrefConfig, suite_dir
from lmstack.train.recipe import Result
from lmstack.train.rewards import load_rewards
from lmstack.train.rl import RolloutOptions, check_shares, rollout_prompts, row_seeds, sample
from lmstack.train.state import check_resumable, config_fingerprint


@dataclass
class RejectionConfig(RolloutOptions, PrefConfig):
    out: str = "runs/rejection"  #: run folder: round_N/ (kept answers, tuned model) and the final <out>/model
    rounds: int = 2  #: sample-select-fine-tune rounds
    prompts_per_round: int = 64  #: prompts sampled for each round (0: every prompt)
    samples: int = 4  #: N answers per prompt; the reward model keeps the best
    missing_eos_penalty: float = 1.0  #: an answer cut off at max_new_tokens loses this much reward
    sft_epochs: float = 2.0  #: fine-tuning epochs on the kept answers, per round
    micro_batch: int = 8  #: SFT sequences per step
    lr: float = 1e-4
    warmup: int = 2
    schedule: str = "cosine"


def best_of_n(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For scores laid out prompt by prompt (n each): index of the best answer of each prompt and its score."""
    s = scores.view(-1, n)
    best = s.argmax(1)
    return best, s.max(1).values


def finished_rounds(cfg: RejectionConfig) -> tuple[int, dict]:
    """The rounds a killed run finished (each leaves round_k/state.json last) and the last one's state; a state
    written with other options is refused in one line."""
    out, done = Path(cfg.out), 0
    while done < cfg.rounds and (out / f"round_{done + 1}" / "state.json").exists():
        done += 1
    if not done:
        return 0, {}
    st = json.loads((out / f"round_{done}" / "state.json").read_text())
    check_resumable(out / f"round_{done}", st.get("recipe"), st.get("config"), "rejection-sampling", cfg)
    return done, st


def run(cfg: RejectionConfig, rewards=None) -> Result:
    """Run the rounds. `rewards` (a lmstack.train.rewards.Rewards) overrides the reward options (tests)."""
    if not cfg.model:
        raise LmstackError("rejection-sampling: --model is required (the SFT checkpoint to start from)")
    if cfg.samples < 2:
        raise LmstackError("--samples must be at least 2 (best of N)")
    check_rollout_quantize(cfg.rollout_quantize)
    if not cfg.temperature > 0:
        raise LmstackError(f"rejection-sampling: temperature must be > 0, got {cfg.temperature} (best of N picks "
                           "among N sampled answers; at 0 all N are the same greedy answer)")
    info = dist.init(cfg.device)  # under torchrun: each process samples and scores its share of a round's prompts
    device = info.device
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    suite = suite_dir(cfg) if not cfg.data else None
    lm = load_for_training(cfg.model, device, None, "rejection sampling renders prompts with its chat template")
    if rewards is None:
        # No whitening over a round's batch: the kept answers of different rounds are compared by their scores.
        rewards = load_rewards(cfg, device, suite, lm.tokenizer, whiten=False)
    records, pids, pstats = rollout_prompts(cfg, lm.tokenizer)
    n_p = len(records) if cfg.prompts_per_round <= 0 else min(cfg.prompts_per_round, len(records))
    check_shares(info, "rejection-sampling", n_p, "--prompts-per-round", "prompts")
    check_shares(info, "rejection-sampling", cfg.micro_batch, "--micro-batch", "fine-tuning sequences")
    rng = np.random.default_rng(cfg.seed)
    kept: dict[int, tuple[float, str]] = {}  # prompt index -> best (score, answer) over all rounds
    current = cfg.model
    rounds = []
    done, st = finished_rounds(cfg) if cfg.resume else (0, {})
    if done:  # --resume: continue after the last round whose model and state were written
        rng.bit_generator.state = st["prompt_rng"]
        kept = {int(i): (s, a) for i, s, a in st["kept"]}
        rounds, current = st["rounds"], str(out / f"round_{done}" / "model")
    elif info.main and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    log = MetricsLogger(out, cfg.rounds, start_step=done, enabled=info.main, console=not cfg.quiet,
                        desc="rejection-sampling", bars=cfg.bars)
    for r in range(done, cfg.rounds):
        t0 = time.perf_counter()
        lm = load(current, device=device)
        pick = rng.choice(len(records), size=n_p, replace=False)
        rows = [int(i) for i in pick for _ in range(cfg.samples)]
        # This process's share of the rows (whole prompts), each answer with its own seed; then every process
        # gathers the whole round's answers and raw scores.
        mine = dist.share(len(rows), info)
        comps = sample(lm.model, lm.tokenizer, [pids[i] for i in rows[mine]], cfg,
                       row_seeds(cfg, r, mine.start, mine.stop - mine.start))
        t_gen = time.perf_counter() - t0
        parts = rewards.parts([records[i] for i in rows[mine]], [c.text for c in comps], [c.ids for c in comps])
        every = dist.gather_rows([(c, {k: float(v[j]) for k, v in parts.items()}) for j, c in enumerate(comps)], info)
        comps = [c for c, _ in every]
        scores, rinfo = rewards.combine([records[i] for i in rows],
                                        {k: torch.tensor([p[k] for _, p in every]) for k in parts})
        scores = scores.float() - cfg.missing_eos_penalty * torch.tensor(
            [c.finish_reason != "stop" for c in comps], dtype=torch.float32)
        best, best_score = best_of_n(scores, cfg.samples)
        improved = 0
        for j, i in enumerate(pick.tolist()):
            s, text = float(best_score[j]), comps[j * cfg.samples + int(best[j])].text
            if not text.strip():
                continue
            if i not in kept or s > kept[i][0]:
                improved += i in kept
                kept[i] = (s, text)
        data = out / f"round_{r + 1}" / "best.jsonl"
        if info.main:
            write_jsonl(data, [{"messages": records[i]["prompt"] + [{"role": "assistant", "content": a}],
                                "reward": s} for i, (s, a) in sorted(kept.items())])
        dist.barrier(info)
        rec = {"round": r + 1, "reward_mean": float(scores.mean()), "reward_best_of_n": float(best_score.mean()),
               "reward_kept": float(np.mean([s for s, _ in kept.values()])) if kept else None,
               "kept": len(kept), "replaced": improved, "eos_frac": float(np.mean([c.finish_reason == "stop"
                                                                                   for c in comps])),
               "response_len": float(np.mean([len(c.ids) for c in comps])), "time_generate": t_gen, **rinfo}
        # Fine-tune the current policy on the kept answers (Llama 2 fine-tunes from the previous round's model); under
        # torchrun each process a share of every --micro-batch, with DDP or (--fsdp) FSDP2.
        s = sft.run(sft.SFTConfig(out=str(out / f"round_{r + 1}"), model=current, data=[str(data)],
                                  seq_len=cfg.seq_len, epochs=cfg.sft_epochs, micro_batch=cfg.micro_batch // info.world,
                                  lr=cfg.lr, warmup=cfg.warmup, schedule=cfg.schedule, seed=cfg.seed + r, device=cfg.device,
                                  precision=cfg.precision, fsdp=cfg.fsdp, quiet=True, bars=cfg.bars, ckpt_interval=0, eval_interval=0,
                                  **lora_options(cfg))).summary
        current = str(out / f"round_{r + 1}" / "model")
        rec.update(sft_loss_first=s.get("first_loss"), sft_loss_last=s.get("final_loss"),
                   time_round=time.perf_counter() - t0)
        rounds.append(rec)
        # The round's state, written last and atomically: its presence means the round is whole (--resume).
        if info.main:
            tmp = out / f"round_{r + 1}" / "state.json.tmp"
            tmp.write_text(json.dumps({"recipe": "rejection-sampling", "config": config_fingerprint(cfg),
                                       "prompt_rng": rng.bit_generator.state, "rounds": rounds,
                                       "kept": [[i, s, a] for i, (s, a) in sorted(kept.items())]}, default=str))
            tmp.replace(out / f"round_{r + 1}" / "state.json")
        dist.barrier(info)
        log.log(r + 1, **rec)
        log.progress(1, best=rec["reward_best_of_n"], mean=rec["reward_mean"])
    log.close()
    summary = {"rounds": rounds, "prompts": pstats, "model": str(out / "model")}
    if info.main:
        finish(cfg, out, current, rounds, summary)
    dist.barrier(info)
    dist.shutdown(info)
    return Result(summary, {"model": str(out / "model")})


def finish(cfg: RejectionConfig, out: Path, current: str, rounds: list[dict], summary: dict) -> None:
    """The last round's model as <out>/model, the summary, the curves (the main process)."""
    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(current, final)
    meta_path = final / "lmstack.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update(stage="rejection-sampling", parent=cfg.model, rounds=rounds)
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    recs = read_metrics(out / "metrics.jsonl")
    if recs:
        plot_curves([{**x, "step": x["round"]} for x in recs], ["reward_mean", "reward_best_of_n", "reward_kept"],
                    out / "rejection_curves.png", title="rejection sampling")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
