"""Group relative policy optimisation (Shao et al. 2024, DeepSeekMath): PPO without a value model.

    lmstack grpo --model runs/sft/model --reward-rule exact_match --clusters arithmetic --out runs/grpo
    lmstack grpo --model runs/sft/model --reward-model runs/rm/model --group-size 8 --lora

Each iteration samples G answers to each of a batch of prompts (the shared generation engine), scores
them (a reward model, or a rule such as an exact-match verifier), and uses the group-normalised reward
(r - mean_group) / std_group as the advantage of every token of an answer. The loss is PPO's clipped
surrogate, averaged over each answer's tokens then over answers, plus an optional KL penalty to the
reference policy (the unbiased k3 estimator, exp(ref - pi) - (ref - pi) - 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lmstack.errors import LmstackError
from lmstack.train import dist
from lmstack.train.common import finish_run, log_step, optimizer_step, start_run
from lmstack.train.ppo import Rollouts, policy_logprobs, sample
from lmstack.train.prefs import (
    PrefConfig,
    encode_prompts,
    final_lm,
    load_policy,
    load_prompts,
    masked_mean,
    reference,
    right_pad,
    rollout_seed,
    single_process,
    suite_dir,
)


@dataclass
class GRPOConfig(PrefConfig):
    out: str = "runs/grpo"
    steps: int = 30  # iterations
    prompts_per_step: int = 4
    group_size: int = 8  # G answers per prompt
    inner_steps: int = 2  # updates per rollout batch (mu)
    micro_batch: int = 16  # answers per update minibatch
    max_new_tokens: int = 32
    temperature: float = 1.0
    lr: float = 2e-5
    cliprange: float = 0.2
    kl_coef: float = 0.04  # beta of the KL penalty to the reference (0: no reference needed)
    reward_model: str = ""
    safety_reward_model: str = ""
    safety_threshold: float = -1.0
    reward_rule: str = ""  # exact_match | annotator | token:ID
    clusters: list[str] = field(default_factory=list)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), for rewards laid out group by group."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)
    return adv.reshape(-1)


def grpo_loss(lp, old_lp, ref_lp, adv, mask, cliprange: float, kl_coef: float):
    ratio = torch.exp(lp - old_lp)
    a = adv[:, None]
    per_tok = -torch.min(ratio * a, ratio.clamp(1 - cliprange, 1 + cliprange) * a)
    kl = torch.zeros_like(lp)
    if kl_coef > 0:
        d = ref_lp - lp
        kl = torch.exp(d) - d - 1
        per_tok = per_tok + kl_coef * kl
    # 1/|o_i| sum over the answer's tokens, then the mean over answers (GRPO's objective).
    loss = masked_mean(per_tok, mask, dim=1).mean()
    with torch.no_grad():
        stats = {"clip_frac": float(masked_mean(((ratio - 1).abs() > cliprange).float(), mask)),
                 "kl": float(masked_mean(kl, mask, dim=1).mean())}
    return loss, stats


def grpo(cfg: GRPOConfig, rewards=None, step_hook=None) -> dict:
    from lmstack.train.reward import load_rewards

    if cfg.resume:
        raise LmstackError("grpo: --resume is not supported; start again (runs are short)")
    if cfg.group_size < 2:
        raise LmstackError("--group-size must be at least 2 (advantages are relative to the group)")
    info = dist.init(cfg.device)
    single_process(info, "grpo")
    torch.manual_seed(cfg.seed)
    suite = suite_dir(cfg) if not cfg.data else None
    lm, policy, params, ref = load_policy(cfg, info.device, need_reference=cfg.kl_coef > 0)
    tok = lm.tokenizer
    if rewards is None:
        rewards = load_rewards(cfg.reward_model, cfg.safety_reward_model, cfg.safety_threshold, cfg.reward_rule,
                               info.device, suite, tok)
    records, pstats = load_prompts(cfg, cfg.clusters or None)
    records, pids, pstats["dropped_overlong"] = encode_prompts(tok, records, cfg.seq_len - cfg.max_new_tokens,
                                                               cfg.overlong)
    if not cfg.quiet:
        print(f"grpo: {len(records)} prompts ({pstats['dropped_overlong']} too long dropped), {cfg.steps} iterations x "
              f"{cfg.prompts_per_step} prompts x {cfg.group_size} answers")
    run = start_run(cfg, policy, info, "grpo", {"parent": cfg.model, "reward_model": cfg.reward_model,
                                                "reward_rule": cfg.reward_rule, "prompts": pstats, "lora": cfg.lora},
                    params=params)
    pad = tok.pad_id if tok.pad_id is not None else 0
    rng = np.random.default_rng(cfg.seed)
    history = []
    for it in range(cfg.steps):
        lr = run.lr(it)
        t0 = time.perf_counter()
        pick = rng.choice(len(records), size=cfg.prompts_per_step, replace=len(records) < cfg.prompts_per_step)
        rows = [int(i) for i in pick for _ in range(cfg.group_size)]  # G copies of each prompt, group by group
        comps = sample(policy, tok, [pids[i] for i in rows], cfg, rollout_seed(cfg, it))
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, rinfo = rewards([records[i] for i in rows], [c.text for c in comps], [c.ids for c in comps])
        adv = group_advantages(scores.float(), cfg.group_size).to(info.device)
        ids, _ = right_pad([pids[i] + c.ids for i, c in zip(rows, comps)], pad, info.device)
        ro = Rollouts(ids, torch.tensor([len(pids[i]) for i in rows], device=info.device),
                      torch.tensor([len(c.ids) for c in comps], device=info.device))
        with torch.no_grad():
            ro.old_lp, _, _ = policy_logprobs(policy, ro, cfg.temperature)
            if cfg.kl_coef > 0:
                with reference(policy, ref) as ref_model:
                    ro.ref_lp, _, _ = policy_logprobs(ref_model, ro, cfg.temperature)
        ro.adv = adv[:, None].expand_as(ro.old_lp).contiguous()  # one advantage for every token of an answer
        t_score = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc: dict[str, list[float]] = {}
        for _ in range(cfg.inner_steps):
            perm = torch.randperm(len(comps))
            for s in range(0, len(comps), cfg.micro_batch):
                mb = ro.rows(perm[s:s + cfg.micro_batch])
                lp, _, m = policy_logprobs(policy, mb, cfg.temperature)
                ref_lp = mb.ref_lp if mb.ref_lp is not None else lp.detach()
                loss, st = grpo_loss(lp, mb.old_lp, ref_lp, mb.adv[:, 0], m, cfg.cliprange, cfg.kl_coef)
                loss.backward()
                optimizer_step(run, it, loss.item(), lr, params)
                st["loss"] = loss.item()
                for k, v in st.items():
                    acc.setdefault(k, []).append(v)
        t_opt = time.perf_counter() - t0
        rec = {k: float(np.mean(v)) for k, v in acc.items()}
        grp = scores.float().view(-1, cfg.group_size)
        rec.update(reward=float(scores.mean()), reward_best_of_group=float(grp.max(1).values.mean()),
                   reward_group_std=float(grp.std(1, unbiased=False).mean()),
                   response_len=float(ro.rlen.float().mean()), lr=lr, time_generate=t_gen, time_score=t_score,
                   time_optimize=t_opt, **rinfo)
        history.append(rec)
        log_step(run, it + 1, int(ro.rlen.sum()), **rec)
        run.log.progress(1, reward=rec["reward"])
        if step_hook is not None:
            step_hook(it + 1, rec)
    k = max(1, len(history) // 4)
    summary = {"steps": cfg.steps, "reward_first": float(np.mean([h["reward"] for h in history[:k]])),
               "reward_last": float(np.mean([h["reward"] for h in history[-k:]])),
               "kl_last": float(np.mean([h["kl"] for h in history[-k:]])), "prompts": pstats}
    run.last_loss = history[-1]["loss"] if history else None
    finish_run(run, final_lm(lm, policy, cfg), summary, ["reward", "kl", "clip_frac", "response_len"], "GRPO",
               png="grpo_curves.png")
    dist.shutdown(info)
    return summary
