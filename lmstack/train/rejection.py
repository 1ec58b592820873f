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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmstack.errors import LmstackError
from lmstack.train.prefs import PrefConfig, encode_prompts, load_prompts, rollout_seed, suite_dir


@dataclass
class RejectionConfig(PrefConfig):
    out: str = "runs/rejection"
    rounds: int = 2
    prompts_per_round: int = 64  # 0: every prompt
    samples: int = 4  # N answers per prompt
    temperature: float = 1.0
    max_new_tokens: int = 48
    missing_eos_penalty: float = 1.0  # an answer cut off at max_new_tokens loses this much reward
    reward_model: str = ""
    safety_reward_model: str = ""
    safety_threshold: float = -1.0
    reward_rule: str = ""
    clusters: list[str] = field(default_factory=list)
    sft_epochs: float = 2.0  # fine-tuning on the kept answers, per round
    micro_batch: int = 8
    lr: float = 1e-4
    warmup: int = 2
    schedule: str = "cosine"


def best_of_n(scores: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For scores laid out prompt by prompt (n each): index of the best answer of each prompt and its score."""
    s = scores.view(-1, n)
    best = s.argmax(1)
    return best, s.max(1).values


def rejection_sampling(cfg: RejectionConfig, rewards=None) -> dict:
    import lmstack
    from lmstack.data.records import write_jsonl
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.train.log import MetricsLogger, plot_curves, read_metrics
    from lmstack.train.reward import load_rewards
    from lmstack.train.sft import SFTConfig, sft

    if not cfg.model:
        raise LmstackError("rejection-sampling: --model is required (the SFT checkpoint to start from)")
    if cfg.samples < 2:
        raise LmstackError("--samples must be at least 2 (best of N)")
    if cfg.resume:
        raise LmstackError("rejection-sampling: --resume is not supported; start again")
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto"
                                                                                  else cfg.device)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    suite = suite_dir(cfg) if not cfg.data else None
    lm = lmstack.load(cfg.model, device=device)
    if lm.tokenizer is None:
        raise LmstackError(f"{cfg.model}: no tokenizer")
    if rewards is None:
        rewards = load_rewards(cfg.reward_model, cfg.safety_reward_model, cfg.safety_threshold, cfg.reward_rule,
                               device, suite, lm.tokenizer)
    records, pstats = load_prompts(cfg, cfg.clusters or None)
    records, pids, pstats["dropped_overlong"] = encode_prompts(lm.tokenizer, records,
                                                               cfg.seq_len - cfg.max_new_tokens, cfg.overlong)
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    log = MetricsLogger(out, cfg.rounds, enabled=True, console=not cfg.quiet, desc="rejection-sampling")
    rng = np.random.default_rng(cfg.seed)
    kept: dict[int, tuple[float, str]] = {}  # prompt index -> best (score, answer) over all rounds
    current = cfg.model
    rounds = []
    for r in range(cfg.rounds):
        t0 = time.perf_counter()
        lm = lmstack.load(current, device=device)
        n_p = len(records) if cfg.prompts_per_round <= 0 else min(cfg.prompts_per_round, len(records))
        pick = rng.choice(len(records), size=n_p, replace=False)
        rows = [int(i) for i in pick for _ in range(cfg.samples)]
        sp = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            seed=rollout_seed(cfg, r))
        with torch.no_grad():
            comps = generate(lm.model, [pids[i] for i in rows], sp, lm.tokenizer)
        t_gen = time.perf_counter() - t0
        scores, rinfo = rewards([records[i] for i in rows], [c.text for c in comps], [c.ids for c in comps])
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
        write_jsonl(data, [{"messages": records[i]["prompt"] + [{"role": "assistant", "content": a}],
                            "reward": s} for i, (s, a) in sorted(kept.items())])
        rec = {"round": r + 1, "reward_mean": float(scores.mean()), "reward_best_of_n": float(best_score.mean()),
               "reward_kept": float(np.mean([s for s, _ in kept.values()])) if kept else None,
               "kept": len(kept), "replaced": improved, "eos_frac": float(np.mean([c.finish_reason == "stop"
                                                                                   for c in comps])),
               "response_len": float(np.mean([len(c.ids) for c in comps])), "time_generate": t_gen, **rinfo}
        # Fine-tune the current policy on the kept answers (Llama 2 fine-tunes from the previous round's model).
        s = sft(SFTConfig(out=str(out / f"round_{r + 1}"), model=current, data=[str(data)], seq_len=cfg.seq_len,
                          epochs=cfg.sft_epochs, micro_batch=cfg.micro_batch, lr=cfg.lr, warmup=cfg.warmup,
                          schedule=cfg.schedule, seed=cfg.seed + r, device=cfg.device, quiet=True,
                          ckpt_interval=0, eval_interval=0, lora=cfg.lora, lora_r=cfg.lora_r,
                          lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          lora_targets=list(cfg.lora_targets)))
        current = str(out / f"round_{r + 1}" / "model")
        rec.update(sft_loss_first=s.get("first_loss"), sft_loss_last=s.get("final_loss"),
                   time_round=time.perf_counter() - t0)
        rounds.append(rec)
        log.log(r + 1, **rec)
        log.progress(1, best=rec["reward_best_of_n"], mean=rec["reward_mean"])
    log.close()
    final = out / "model"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(current, final)
    meta_path = final / "lmstack.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update(stage="rejection-sampling", parent=cfg.model, rounds=rounds)
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    summary = {"rounds": rounds, "prompts": pstats, "model": str(final)}
    recs = read_metrics(out / "metrics.jsonl")
    if recs:
        plot_curves([{**x, "step": x["round"]} for x in recs], ["reward_mean", "reward_best_of_n", "reward_kept"],
                    out / "rejection_curves.png", title="rejection sampling")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
