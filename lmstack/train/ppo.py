"""PPO RLHF recipe, InstructGPT step 3 (with PPO-ptx and Llama 2's two reward models).

    lmstack ppo --model runs/sft/model --reward-model runs/rm/model --out runs/ppo
    lmstack ppo --model runs/sft/model --reward-model runs/rm/model --safety-reward-model runs/rm_safe/model
    lmstack ppo --model runs/sft/model --reward-rule exact_match --clusters arithmetic --kl-target 2

Each iteration:
  1. rollout: sample answers to a batch of prompts with the shared generation engine (KV cache, batched);
  2. score: reward model(s) on the final token; per-token KL penalty -beta (log pi - log pi_ref) against the
     frozen SFT policy; a penalty for answers cut off without an end-of-sequence token; values from the
     value model; generalised advantage estimation (gamma, lambda); with reward models on the built-in
     suite's prompts, the gold score (the suite's unbiased simulated annotator) of the rollouts, only logged;
  3. optimise: several PPO epochs over minibatches of the clipped policy objective and the clipped value
     loss (plus, for PPO-ptx, a language-modelling loss on pretraining text); then the adaptive KL
     controller (Ziegler et al. 2019) moves beta towards the target KL.
Log-probabilities come from a forward pass with logits divided by the sampling temperature, i.e. of
the very distribution the rollouts were drawn from. Dropout is off throughout.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.train import dist
from lmstack.train.common import (
    checkpoint_if_due,
    finish_run,
    log_step,
    optimizer_step,
    start_run,
    whole_state,
)
from lmstack.train.policy import final_lm
from lmstack.train.prefdata import PrefConfig
from lmstack.train.recipe import Result
from lmstack.train.rewards import RewardNet, same_tokenizer
from lmstack.train.rl import (
    GoldOptions,
    RolloutOptions,
    Rollouts,
    collect,
    gae,
    gather,
    kl_controller,
    loop_state,
    masked_mean,
    means,
    minibatch_share,
    policy_logprobs,
    ppo_losses,
    response_index,
    restore_rng,
    resume_state,
    reward_trend,
    setup,
    summed,
    whiten,
)


@dataclass
class PPOConfig(GoldOptions, RolloutOptions, PrefConfig):
    out: str = "runs/ppo"  #: run folder (the policy in <out>/model)
    steps: int = 40  #: PPO iterations (one rollout batch + its updates each)
    rollout_batch: int = 16  #: prompts per iteration
    micro_batch: int = 8  #: rollouts per PPO minibatch
    ppo_epochs: int = 2  #: passes over each rollout batch
    lr: float = 2e-5
    grad_clip: float = 1.0
    kl_coef: float = 0.05  #: beta of the per-token KL penalty (initial value when adaptive)
    kl_target: float = 0.0  #: adaptive KL controller target in nats per answer (0: fixed beta)
    #: the adaptive controller's horizon, in rollouts (0: 10 x --rollout-batch, so that beta moves by Ziegler et
    #: al.'s K_beta = 0.1 x the clipped error per iteration)
    kl_horizon: int = 0
    missing_eos_penalty: float = 1.0  #: subtracted from the score of an answer cut off at max_new_tokens
    reward_clip: float = 10.0  #: |score| clipped to this (0: off)
    whiten_rewards: bool = False  #: divide scores by their batch std
    gamma: float = 1.0  #: GAE discount
    lam: float = 0.95  #: GAE lambda
    cliprange: float = 0.2  #: PPO ratio clip epsilon
    cliprange_value: float = 0.2  #: value clip, around the rollout's values
    vf_coef: float = 0.5  #: weight of the value loss
    whiten_advantages: bool = True  #: normalise advantages to mean 0, std 1 per batch
    value_init: str = "auto"  #: auto, reward (from the RM) or policy (the SFT backbone, new head)
    ptx_coef: float = 0.0  #: PPO-ptx: weight of the pretraining loss (0: off)
    ptx_data: list[str] = field(default_factory=list)  #: pretraining text files (default: the suite's corpus)
    ptx_seq_len: int = 128  #: tokens per pretraining window
    ptx_batch: int = 4  #: pretraining windows per minibatch


class PolicyValue(nn.Module):
    """The two networks PPO trains behind one forward (a minibatch's log-probs, entropies and values): what DDP
    wraps under torchrun, since it synchronises the gradients of a module's forward."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, ro: Rollouts, temperature: float):
        lp, ent, mask = policy_logprobs(self.policy, ro, temperature, entropy=True)
        return lp, ent, mask, state_values(self.value, ro)


def state_values(value_net, ro: Rollouts):
    """V(s) before each response token: the value head at the position that predicts it."""
    idx, _ = response_index(ro.plen, ro.rlen)
    return value_net.per_token(ro.ids)[:, :-1].gather(1, idx)


class PtxData:
    """Random windows of pretraining text for PPO-ptx, tokenised once with the policy's tokenizer."""

    def __init__(self, files: list[str], tok, seq_len: int, seed: int, max_chars: int = 2_000_000):
        text = ""
        for f in files:
            try:
                text += Path(f).read_text(encoding="utf-8")[: max_chars - len(text)] + "\n\n"
            except OSError as e:
                raise LmstackError(f"--ptx-data {f}: cannot read ({e.strerror})") from None
            if len(text) >= max_chars:
                break
        self.ids = torch.tensor(tok.encode(text), dtype=torch.long)
        if len(self.ids) <= seq_len + 1:
            raise LmstackError(f"--ptx-data: only {len(self.ids)} tokens, fewer than --ptx-seq-len {seq_len}")
        self.seq_len = seq_len
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, n: int, device):
        starts = torch.randint(0, len(self.ids) - self.seq_len - 1, (n,), generator=self.gen)
        x = torch.stack([self.ids[s:s + self.seq_len + 1] for s in starts.tolist()]).to(device)
        return x[:, :-1], x[:, 1:]


def make_value_net(cfg: PPOConfig, rewards, policy_tok, device):
    """InstructGPT initialises the value function from the reward model; the SFT backbone with a fresh head is
    the alternative (and the only one for rule rewards or an RM with another tokenizer)."""
    rm = rewards.helpful or rewards.safety
    choice = cfg.value_init
    if choice == "auto":
        choice = "reward" if rm is not None and same_tokenizer(rm.tokenizer, policy_tok) else "policy"
    if choice == "reward":
        if rm is None:
            raise LmstackError("--value-init reward needs --reward-model")
        if not same_tokenizer(rm.tokenizer, policy_tok):
            raise LmstackError("--value-init reward: the reward model's tokenizer differs from the policy's, so its "
                               "network cannot read the policy's tokens; use --value-init policy")
        net = copy.deepcopy(rm.net)
        # The RM's normalisation is folded into the head, so values start on the scale of the rewards.
        with torch.no_grad():
            net.head.weight.mul_(rm.gain)
            net.head.bias.mul_(rm.gain).add_(rm.bias)
    elif choice == "policy":
        backbone = load(cfg.model, device=device).model
        net = RewardNet(backbone, backbone.cfg.d_model)
        with torch.no_grad():
            net.head.weight.zero_()  # values start at 0: no made-up advantages before the first update
    else:
        raise LmstackError(f"--value-init must be auto, reward or policy, not {cfg.value_init!r}")
    net.set_dropout(0.0)
    for p in net.parameters():
        p.requires_grad_(True)
    return net.train(), choice


def run(cfg: PPOConfig, rewards=None, step_hook=None) -> Result:
    """Run PPO. `rewards` (a lmstack.train.rewards.Rewards) overrides the reward options (tests, experiments);
    step_hook(iteration, metrics) is called after each iteration."""
    kl_ctl = kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon, cfg.rollout_batch, cfg.steps, "ppo")
    shares = [(cfg.rollout_batch, "--rollout-batch", "rollouts")]
    if cfg.ptx_coef > 0:
        shares.append((cfg.ptx_batch, "--ptx-batch", "pretraining windows"))
    s = setup(cfg, "ppo", rewards, shares=shares, minibatches=(cfg.rollout_batch, cfg.micro_batch))
    info, policy, tok, rewards = s.info, s.policy, s.tok, s.rewards
    value, value_from = make_value_net(cfg, rewards, tok, info.device)
    s.shard_frozen()  # FSDP2: the reference and reward models sharded (after the value model's copy of the RM)
    ptx = None
    if cfg.ptx_coef > 0:
        files = cfg.ptx_data or ([str(s.suite / "corpus" / "train.txt")] if s.suite else [])
        if not files:
            raise LmstackError("--ptx-coef needs --ptx-data (pretraining text files)")
        ptx = PtxData(files, tok, cfg.ptx_seq_len, cfg.seed)
    if not cfg.quiet and info.main:
        print(f"ppo: {len(s.records)} prompts ({s.pstats['dropped_overlong']} longer than "
              f"{cfg.seq_len - cfg.max_new_tokens} tokens dropped), {cfg.steps} iterations x {cfg.rollout_batch} "
              f"rollouts, value model from the {value_from}")
    both = PolicyValue(policy, value)
    train_params = s.params + list(value.parameters())
    # --resume: weights, value model, KL coefficient, prompt sampler, PTX sampler and history from the checkpoint;
    # start_run restores the optimizer, torch's RNG (minibatch order) and the iteration.
    resume_from, blob = resume_state(cfg, "ppo", policy, info.device)
    if blob:
        value.load_state_dict(blob["value"])
        kl_ctl.beta = blob["kl_beta"]
        if ptx is not None:
            ptx.gen.set_state(blob["ptx"])
    run = start_run(cfg, both, info, "ppo", {"parent": cfg.model, "reward_model": cfg.reward_model,
                                             "safety_reward_model": cfg.safety_reward_model,
                                             "reward_rule": cfg.reward_rule, "prompts": s.pstats, "lora": cfg.lora},
                    params=train_params, resume_from=resume_from)
    rng = np.random.default_rng(cfg.seed)
    restore_rng(rng, blob)
    history = list(blob.get("history", []))
    save_lm = LM(policy, tok, s.lm.generation_config, {})
    for it in range(run.start, cfg.steps):
        lr = run.lr(it)
        # 1. Rollouts through the generation engine (each process its share), their rewards' raw scores, the
        #    policy's and reference's log-probs and the values; then the whole batch on every process.
        b = collect(s, cfg, [int(i) for i in s.draw(rng, cfg.rollout_batch)], it,
                    values=lambda r: state_values(value, r))
        ro, comps = b.ro, b.comps

        # 2. Scores, token rewards, advantages.
        t0 = time.perf_counter()
        scores, rinfo = rewards.combine([s.records[i] for i in b.rows], b.parts)
        ended = torch.tensor([c.finish_reason == "stop" for c in comps])
        with torch.no_grad():
            _, mask = response_index(ro.plen, ro.rlen)
            score = scores.clone().float()
            score = score - cfg.missing_eos_penalty * (~ended).float()
            if cfg.whiten_rewards and len(score) > 1:
                score = score / (score.std() + 1e-8)
            if cfg.reward_clip > 0:
                score = score.clamp(-cfg.reward_clip, cfg.reward_clip)
            kl_tok = (ro.old_lp - ro.ref_lp) * mask
            tok_rewards = -kl_ctl.beta * kl_tok
            last = ro.rlen - 1
            tok_rewards[torch.arange(len(comps)), last] += score.to(info.device)
            ro.adv, ro.ret = gae(tok_rewards, ro.values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                ro.adv = whiten(ro.adv, mask)
        kl = float(kl_tok.sum(1).mean())
        t_gen, t_score = b.time_generate, b.time_score + time.perf_counter() - t0

        # 3. PPO epochs over minibatches (under torchrun each process takes its share of every minibatch).
        t0 = time.perf_counter()
        acc: dict[str, list[float]] = {}
        for whole in ro.minibatches(cfg.ppo_epochs, cfg.micro_batch):
            mb, count, _ = minibatch_share(whole, info)
            lp, ent, m, v = run.dmodel(mb, cfg.temperature)
            pg_loss, vf_loss, st = ppo_losses(lp, mb.old_lp, mb.adv, v, mb.values, mb.ret, m,
                                              cfg.cliprange, cfg.cliprange_value, count)
            loss = pg_loss + cfg.vf_coef * vf_loss
            if ptx is not None:
                # PPO-ptx: keep the pretraining distribution's likelihood up (InstructGPT's fix for regressions).
                # Every process draws the same --ptx-batch windows and trains on its share of them.
                x, y = ptx.batch(cfg.ptx_batch, info.device)
                part = dist.share(len(x), info)
                ptx_loss = F.cross_entropy(policy(x[part]).float().flatten(0, 1), y[part].flatten()) / info.world
                loss = loss + cfg.ptx_coef * ptx_loss
                st["ptx_loss"] = ptx_loss.item()
            (loss * info.world).backward()
            optimizer_step(run, it, loss.item(), lr)
            st.update(policy_loss=pg_loss.item(), value_loss=vf_loss.item(),
                      entropy=float(masked_mean(ent.detach(), m, count=count)))
            gather(acc, summed(st, info))
        t_opt = time.perf_counter() - t0
        kl_ctl.update(kl, len(comps))
        gold = s.gold(b.rows, comps)  # the gold score of the rollouts: logged beside the reward, never part of it

        rec = means(acc)
        # `reward`: the proxy's mean before any whitening (Llama 2's rule whitens each batch to mean 0).
        rec.update(reward=rinfo.pop("reward_unwhitened", float(scores.mean())), score=float(score.mean()), kl=kl, kl_coef=kl_ctl.beta,
                   response_len=float(ro.rlen.float().mean()), eos_frac=float(ended.float().mean()), lr=lr,
                   time_generate=t_gen, time_score=t_score, time_optimize=t_opt, **rinfo, **gold)
        history.append(rec)
        done = it + 1
        log_step(run, done, int(ro.rlen.sum()), **rec)
        run.log.progress(1, reward=rec["reward"], kl=kl)
        if cfg.ckpt_interval:
            checkpoint_if_due(run, save_lm, done, blobs=lambda: loop_state(
                cfg, "ppo", rng, history, value=whole_state(value, cfg), kl_beta=kl_ctl.beta,
                ptx=ptx.gen.get_state() if ptx is not None else None))
        if step_hook is not None:
            step_hook(done, rec)
    summary = {"steps": cfg.steps, **reward_trend(history), "kl_coef_final": kl_ctl.beta,
               "kl_horizon": kl_ctl.horizon,
               "time_split": {p: float(np.sum([h[f"time_{p}"] for h in history]))
                              for p in ("generate", "score", "optimize")},
               "prompts": s.pstats}
    run.last_loss = history[-1].get("policy_loss") if history else None
    finish_run(run, final_lm(s.lm, policy, cfg), summary,
               ["reward", "gold", "kl", "kl_coef", "entropy", "clip_frac", "value_loss", "approx_kl", "response_len"],
               "PPO", png="ppo_curves.png")
    dist.shutdown(info)
    return Result(summary, {"model": str(run.out / "model")})
