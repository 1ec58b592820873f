"""Group relative policy optimisation (Shao et al. 2024, DeepSeekMath): PPO without a value model.

    lmstack grpo --model runs/sft/model --reward-rule exact_match --clusters arithmetic --out runs/grpo
    lmstack grpo --model runs/sft/model --reward-model runs/rm/model --group-size 8 --lora

Each iteration samples G answers to each of a batch of prompts (the shared generation engine), scores
them (a reward model, or a rule such as an exact-match verifier), and uses the group-normalised reward
(r - mean_group) / std_group as the advantage of every token of an answer. The loss is PPO's clipped
surrogate, averaged over each answer's tokens then over answers, plus an optional KL penalty to the
reference policy (the unbiased k3 estimator, exp(ref - pi) - (ref - pi) - 1). With reward models on the
built-in suite's prompts, the gold score of the answers (the suite's unbiased simulated annotator) is logged
beside the reward, never used in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from lmstack.errors import LmstackError
from lmstack.lm import LM
from lmstack.train import dist
from lmstack.train.common import checkpoint_if_due, finish_run, log_step, optimizer_step, start_run
from lmstack.train.policy import final_lm
from lmstack.train.prefdata import PrefConfig
from lmstack.train.recipe import Result
from lmstack.train.rl import (
    GoldOptions,
    RolloutOptions,
    collect,
    gather,
    loop_state,
    masked_mean,
    means,
    minibatch_share,
    policy_logprobs,
    restore_rng,
    resume_state,
    reward_trend,
    setup,
    summed,
)


@dataclass
class GRPOConfig(GoldOptions, RolloutOptions, PrefConfig):
    out: str = "runs/grpo"  #: run folder (the policy in <out>/model)
    steps: int = 30  #: iterations (one group of answers per prompt + its updates each)
    prompts_per_step: int = 4  #: prompts per iteration
    group_size: int = 8  #: G answers per prompt (advantages are relative to the group)
    inner_steps: int = 2  #: updates per rollout batch (mu)
    micro_batch: int = 16  #: answers per update minibatch
    max_new_tokens: int = 32
    lr: float = 2e-5
    cliprange: float = 0.2  #: ratio clip epsilon
    kl_coef: float = 0.04  #: beta of the KL penalty to the reference (0: no reference needed)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), for rewards laid out group by group."""
    r = rewards.view(-1, group_size)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)
    return adv.reshape(-1)


def grpo_loss(lp, old_lp, ref_lp, adv, mask, cliprange: float, kl_coef: float, count=None, answers: int | None = None):
    """GRPO's objective on a minibatch and its statistics. `count` (response tokens) and `answers`: the
    minibatch's, when these rows are one process's share of it (the loss is then that share of the mean)."""
    answers = len(lp) if answers is None else answers
    ratio = torch.exp(lp - old_lp)
    a = adv[:, None]
    per_tok = -torch.min(ratio * a, ratio.clamp(1 - cliprange, 1 + cliprange) * a)
    kl = torch.zeros_like(lp)
    if kl_coef > 0:
        d = ref_lp - lp
        kl = torch.exp(d) - d - 1
        per_tok = per_tok + kl_coef * kl
    # 1/|o_i| sum over the answer's tokens, then the mean over answers (GRPO's objective).
    loss = masked_mean(per_tok, mask, dim=1).sum() / answers
    with torch.no_grad():
        stats = {"clip_frac": float(masked_mean(((ratio - 1).abs() > cliprange).float(), mask, count=count)),
                 "kl": float(masked_mean(kl, mask, dim=1).sum() / answers)}
    return loss, stats


def run(cfg: GRPOConfig, rewards=None, step_hook=None) -> Result:
    """Run GRPO. `rewards` (a lmstack.train.rewards.Rewards) overrides the reward options (tests, experiments);
    step_hook(iteration, metrics) is called after each iteration."""
    if cfg.group_size < 2:
        raise LmstackError("--group-size must be at least 2 (advantages are relative to the group)")
    s = setup(cfg, "grpo", rewards, need_reference=cfg.kl_coef > 0,
              shares=[(cfg.prompts_per_step, "--prompts-per-step", "prompts (groups)")],
              minibatches=(cfg.prompts_per_step * cfg.group_size, cfg.micro_batch))
    s.shard_frozen()  # FSDP2: the reference and reward models sharded like the policy
    info, policy = s.info, s.policy
    if not cfg.quiet and info.main:
        print(f"grpo: {len(s.records)} prompts ({s.pstats['dropped_overlong']} too long dropped), {cfg.steps} "
              f"iterations x {cfg.prompts_per_step} prompts x {cfg.group_size} answers")
    resume_from, blob = resume_state(cfg, "grpo", policy, info.device)  # --resume: see ppo.run
    run = start_run(cfg, policy, info, "grpo", {"parent": cfg.model, "reward_model": cfg.reward_model,
                                                "reward_rule": cfg.reward_rule, "prompts": s.pstats, "lora": cfg.lora},
                    params=s.params, resume_from=resume_from)
    rng = np.random.default_rng(cfg.seed)
    restore_rng(rng, blob)
    history = list(blob.get("history", []))
    save_lm = LM(policy, s.tok, s.lm.generation_config, {})
    for it in range(run.start, cfg.steps):
        lr = run.lr(it)
        # Rollouts of G copies of each prompt, group by group (each process samples whole groups), their
        # rewards' raw scores and the policy's and reference's log-probs; then the whole batch on every process.
        rows = [int(i) for i in s.draw(rng, cfg.prompts_per_step) for _ in range(cfg.group_size)]
        b = collect(s, cfg, rows, it, reference_lp=cfg.kl_coef > 0)
        t0 = time.perf_counter()
        ro, comps = b.ro, b.comps
        scores, rinfo = s.rewards.combine([s.records[i] for i in rows], b.parts)
        adv = group_advantages(scores.float(), cfg.group_size).to(info.device)
        ro.adv = adv[:, None].expand_as(ro.old_lp).contiguous()  # one advantage for every token of an answer
        t_gen, t_score = b.time_generate, b.time_score + time.perf_counter() - t0
        t0 = time.perf_counter()
        acc: dict[str, list[float]] = {}
        for whole in ro.minibatches(cfg.inner_steps, cfg.micro_batch):
            mb, count, n = minibatch_share(whole, info)  # this process's share (see ppo.run)
            lp, _, m = policy_logprobs(run.dmodel, mb, cfg.temperature)
            ref_lp = mb.ref_lp if mb.ref_lp is not None else lp.detach()
            loss, st = grpo_loss(lp, mb.old_lp, ref_lp, mb.adv[:, 0], m, cfg.cliprange, cfg.kl_coef, count, n)
            (loss * info.world).backward()
            optimizer_step(run, it, loss.item(), lr)
            st["loss"] = loss.item()
            gather(acc, summed(st, info))
        t_opt = time.perf_counter() - t0
        gold = s.gold(rows, comps)  # the gold score of the answers: logged beside the reward, never part of it
        rec = means(acc)
        grp = scores.float().view(-1, cfg.group_size)
        rec.update(reward=rinfo.pop("reward_unwhitened", float(scores.mean())), reward_best_of_group=float(grp.max(1).values.mean()),
                   reward_group_std=float(grp.std(1, unbiased=False).mean()),
                   response_len=float(ro.rlen.float().mean()), lr=lr, time_generate=t_gen, time_score=t_score,
                   time_optimize=t_opt, **rinfo, **gold)
        history.append(rec)
        log_step(run, it + 1, int(ro.rlen.sum()), **rec)
        run.log.progress(1, reward=rec["reward"])
        if cfg.ckpt_interval:
            checkpoint_if_due(run, save_lm, it + 1, blobs=lambda: loop_state(cfg, "grpo", rng, history))
        if step_hook is not None:
            step_hook(it + 1, rec)
    summary = {"steps": cfg.steps, **reward_trend(history), "prompts": s.pstats}
    run.last_loss = history[-1]["loss"] if history else None
    finish_run(run, final_lm(s.lm, policy, cfg), summary, ["reward", "gold", "kl", "clip_frac", "response_len"],
               "GRPO", png="grpo_curves.png")
    dist.shutdown(info)
    return Result(summary, {"model": str(run.out / "model")})
