"""PPO RLHF recipe, InstructGPT step 3 (with PPO-ptx and Llama 2's two reward models).

    lmstack ppo --model runs/sft/model --reward-model runs/rm/model --out runs/ppo
    lmstack ppo --model runs/sft/model --reward-model runs/rm/model --safety-reward-model runs/rm_safe/model
    lmstack ppo --model runs/sft/model --reward-rule exact_match --clusters arithmetic --kl-target 2

Each iteration:
  1. rollout: sample answers to a batch of prompts with the shared generation engine (KV cache, batched);
  2. score: reward model(s) on the final token; per-token KL penalty -beta (log pi - log pi_ref) against the
     frozen SFT policy; a penalty for answers cut off without an end-of-sequence token; values from the
     value model; generalised advantage estimation (gamma, lambda);
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

import numpy as np
import torch
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.infer.logprobs import sequence_logprobs
from lmstack.train import dist
from lmstack.train.common import finish_run, log_step, optimizer_step, start_run
from lmstack.train.prefs import (
    PrefConfig,
    encode_prompts,
    final_lm,
    generation_model,
    load_policy,
    load_prompts,
    masked_mean,
    reference,
    response_index,
    right_pad,
    rollout_seed,
    single_process,
    suite_dir,
    whiten,
)


@dataclass
class PPOConfig(PrefConfig):
    out: str = "runs/ppo"
    steps: int = 40  # PPO iterations (one rollout batch + its updates each)
    rollout_batch: int = 16  # prompts per iteration
    micro_batch: int = 8  # rollouts per PPO minibatch
    ppo_epochs: int = 2
    max_new_tokens: int = 48
    temperature: float = 1.0  # sampling temperature, also applied to every log-probability
    lr: float = 2e-5
    grad_clip: float = 1.0
    reward_model: str = ""
    safety_reward_model: str = ""  # with reward_model: Llama 2's combination rule
    safety_threshold: float = -1.0
    reward_rule: str = ""  # exact_match | annotator | token:ID, instead of reward models
    clusters: list[str] = field(default_factory=list)  # only prompts of these suite clusters
    kl_coef: float = 0.05  # beta (initial value when adaptive)
    kl_target: float = 0.0  # > 0: adaptive controller towards this KL (nats per answer)
    kl_horizon: int = 10000
    missing_eos_penalty: float = 1.0  # subtracted from the score of an answer cut off at max_new_tokens
    reward_clip: float = 10.0  # |score| clipped to this (0: off)
    whiten_rewards: bool = False  # divide scores by their batch std
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.5
    whiten_advantages: bool = True
    value_init: str = "auto"  # reward (from the reward model) | policy (the SFT backbone, new head) | auto
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining loss
    ptx_data: list[str] = field(default_factory=list)  # text files (default: the suite's corpus)
    ptx_seq_len: int = 128
    ptx_batch: int = 4


class AdaptiveKL:
    """Ziegler et al.'s controller: beta <- beta (1 + clip(KL/target - 1, -0.2, 0.2) n / horizon)."""

    def __init__(self, beta: float, target: float, horizon: int):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            err = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
            self.beta *= 1.0 + err * n / self.horizon


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over response tokens [B, R]; returns (advantages, returns)."""
    B, R = rewards.shape
    m = mask.to(rewards.dtype)
    adv = torch.zeros_like(rewards)
    last = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(R)):
        nxt = m[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        next_v = values[:, t + 1] * nxt if t + 1 < R else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * nxt * last
        adv[:, t] = last
    adv = adv * m
    return adv, (adv + values) * m


@dataclass
class Rollouts:
    ids: torch.Tensor  # [B, T] prompt + response, right-padded
    plen: torch.Tensor  # [B]
    rlen: torch.Tensor  # [B]
    old_lp: torch.Tensor | None = None  # [B, R]
    ref_lp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    adv: torch.Tensor | None = None
    ret: torch.Tensor | None = None

    def rows(self, idx) -> Rollouts:
        """A minibatch, trimmed to its own longest row and answer."""
        T = int((self.plen[idx] + self.rlen[idx]).max())
        R = int(self.rlen[idx].max())
        cut = {k: getattr(self, k)[idx][:, :R] for k in ("old_lp", "ref_lp", "values", "adv", "ret")
               if getattr(self, k) is not None}
        return Rollouts(self.ids[idx][:, :T], self.plen[idx], self.rlen[idx], **cut)


def policy_logprobs(model, ro: Rollouts, temperature: float, entropy: bool = False):
    """[B, R] log pi(response token | prefix) at the sampling temperature (and entropies), with the mask."""
    idx, mask = response_index(ro.plen, ro.rlen)
    lp, ent = sequence_logprobs(model, ro.ids, temperature, entropy)
    return lp.gather(1, idx), (ent.gather(1, idx) if ent is not None else None), mask


def state_values(value_net, ro: Rollouts):
    """V(s) before each response token: the value head at the position that predicts it."""
    idx, _ = response_index(ro.plen, ro.rlen)
    return value_net.per_token(ro.ids)[:, :-1].gather(1, idx)


def ppo_losses(lp, old_lp, adv, v, old_v, ret, mask, cliprange: float, cliprange_value: float):
    """The clipped surrogate objective and clipped value loss (PPO, as in InstructGPT / TRL)."""
    ratio = torch.exp(lp - old_lp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cliprange, 1 + cliprange))
    pg_loss = masked_mean(pg, mask)
    v_clip = old_v + (v - old_v).clamp(-cliprange_value, cliprange_value)
    vf_loss = 0.5 * masked_mean(torch.max((v - ret) ** 2, (v_clip - ret) ** 2), mask)
    with torch.no_grad():
        stats = {"clip_frac": float(masked_mean(((ratio - 1).abs() > cliprange).float(), mask)),
                 "approx_kl": float(masked_mean(0.5 * (lp - old_lp) ** 2, mask)),
                 "value_clip_frac": float(masked_mean(((v - old_v).abs() > cliprange_value).float(), mask))}
    return pg_loss, vf_loss, stats


class PtxData:
    """Random windows of pretraining text for PPO-ptx, tokenised once with the policy's tokenizer."""

    def __init__(self, files: list[str], tok, seq_len: int, seed: int, max_chars: int = 2_000_000):
        from pathlib import Path

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
    import lmstack
    from lmstack.train.reward import RewardNet, same_tokenizer

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
        backbone = lmstack.load(cfg.model, device=device).model
        net = RewardNet(backbone, backbone.cfg.d_model)
        with torch.no_grad():
            net.head.weight.zero_()  # values start at 0: no made-up advantages before the first update
    else:
        raise LmstackError(f"--value-init must be auto, reward or policy, not {cfg.value_init!r}")
    net.set_dropout(0.0)
    for p in net.parameters():
        p.requires_grad_(True)
    return net.train(), choice


@torch.no_grad()
def sample(policy, tok, prompt_ids: list[list[int]], cfg, seed: int):
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    sp = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
    return generate(generation_model(policy), prompt_ids, sp, tok)


def ppo(cfg: PPOConfig, rewards=None, step_hook=None) -> dict:
    """Run PPO. `rewards` (a lmstack.train.reward.Rewards) overrides the reward options (tests, experiments)."""
    import torch.nn as nn

    from lmstack.train.reward import load_rewards

    if cfg.resume:
        raise LmstackError("ppo: --resume is not supported; start again (runs are short)")
    info = dist.init(cfg.device)
    single_process(info, "ppo")
    torch.manual_seed(cfg.seed)
    suite = suite_dir(cfg) if not cfg.data else None
    lm, policy, params, ref = load_policy(cfg, info.device)
    tok = lm.tokenizer
    if rewards is None:
        rewards = load_rewards(cfg.reward_model, cfg.safety_reward_model, cfg.safety_threshold, cfg.reward_rule,
                               info.device, suite, tok)
    value, value_from = make_value_net(cfg, rewards, tok, info.device)
    records, pstats = load_prompts(cfg, cfg.clusters or None)
    records, pids, dropped = encode_prompts(tok, records, cfg.seq_len - cfg.max_new_tokens, cfg.overlong)
    pstats["dropped_overlong"] = dropped
    ptx = None
    if cfg.ptx_coef > 0:
        files = cfg.ptx_data or ([str(suite / "corpus" / "train.txt")] if suite else [])
        if not files:
            raise LmstackError("--ptx-coef needs --ptx-data (pretraining text files)")
        ptx = PtxData(files, tok, cfg.ptx_seq_len, cfg.seed)
    if not cfg.quiet:
        print(f"ppo: {len(records)} prompts ({dropped} longer than {cfg.seq_len - cfg.max_new_tokens} tokens dropped), "
              f"{cfg.steps} iterations x {cfg.rollout_batch} rollouts, value model from the {value_from}")
    both = nn.ModuleDict({"policy": policy, "value": value})
    train_params = params + list(value.parameters())
    run = start_run(cfg, both, info, "ppo", {"parent": cfg.model, "reward_model": cfg.reward_model,
                                             "safety_reward_model": cfg.safety_reward_model,
                                             "reward_rule": cfg.reward_rule, "prompts": pstats, "lora": cfg.lora},
                    params=train_params)
    kl_ctl = AdaptiveKL(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    pad = tok.pad_id if tok.pad_id is not None else 0
    rng = np.random.default_rng(cfg.seed)
    history = []
    for it in range(cfg.steps):
        lr = run.lr(it)
        # 1. Rollouts through the generation engine.
        t0 = time.perf_counter()
        pick = rng.choice(len(records), size=cfg.rollout_batch, replace=len(records) < cfg.rollout_batch)
        batch = [records[i] for i in pick]
        comps = sample(policy, tok, [pids[i] for i in pick], cfg, rollout_seed(cfg, it))
        t_gen = time.perf_counter() - t0

        # 2. Scores, reference log-probs, values, token rewards, advantages.
        t0 = time.perf_counter()
        scores, rinfo = rewards(batch, [c.text for c in comps], [c.ids for c in comps])
        ended = torch.tensor([c.finish_reason == "stop" for c in comps])
        ids, _ = right_pad([pids[i] + c.ids for i, c in zip(pick, comps)], pad, info.device)
        ro = Rollouts(ids, torch.tensor([len(pids[i]) for i in pick], device=info.device),
                      torch.tensor([len(c.ids) for c in comps], device=info.device))
        with torch.no_grad():
            ro.old_lp, _, mask = policy_logprobs(policy, ro, cfg.temperature)
            with reference(policy, ref) as ref_model:
                ro.ref_lp, _, _ = policy_logprobs(ref_model, ro, cfg.temperature)
            ro.values = state_values(value, ro) * mask
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
        t_score = time.perf_counter() - t0

        # 3. PPO epochs over minibatches.
        t0 = time.perf_counter()
        acc: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(len(comps))
            for s in range(0, len(comps), cfg.micro_batch):
                mb = ro.rows(perm[s:s + cfg.micro_batch])
                lp, ent, m = policy_logprobs(policy, mb, cfg.temperature, entropy=True)
                v = state_values(value, mb)
                pg_loss, vf_loss, st = ppo_losses(lp, mb.old_lp, mb.adv, v, mb.values, mb.ret, m,
                                                  cfg.cliprange, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if ptx is not None:
                    # PPO-ptx: keep the pretraining distribution's likelihood up (InstructGPT's fix for regressions).
                    x, y = ptx.batch(cfg.ptx_batch, info.device)
                    ptx_loss = F.cross_entropy(policy(x).float().flatten(0, 1), y.flatten())
                    loss = loss + cfg.ptx_coef * ptx_loss
                    st["ptx_loss"] = ptx_loss.item()
                loss.backward()
                optimizer_step(run, it, loss.item(), lr, train_params)
                st.update(policy_loss=pg_loss.item(), value_loss=vf_loss.item(), entropy=float(masked_mean(ent.detach(), m)))
                for k, val in st.items():
                    acc.setdefault(k, []).append(val)
        t_opt = time.perf_counter() - t0
        kl_ctl.update(kl, len(comps))

        rec = {k: float(np.mean(v)) for k, v in acc.items()}
        rec.update(reward=float(scores.mean()), score=float(score.mean()), kl=kl, kl_coef=kl_ctl.beta,
                   response_len=float(ro.rlen.float().mean()), eos_frac=float(ended.float().mean()), lr=lr,
                   time_generate=t_gen, time_score=t_score, time_optimize=t_opt, **rinfo)
        history.append(rec)
        done = it + 1
        log_step(run, done, int(ro.rlen.sum()), **rec)
        run.log.progress(1, reward=rec["reward"], kl=kl)
        if step_hook is not None:
            step_hook(done, rec)
    k = max(1, len(history) // 4)
    summary = {"steps": cfg.steps, "reward_first": float(np.mean([h["reward"] for h in history[:k]])),
               "reward_last": float(np.mean([h["reward"] for h in history[-k:]])),
               "kl_last": float(np.mean([h["kl"] for h in history[-k:]])), "kl_coef_final": kl_ctl.beta,
               "time_split": {p: float(np.sum([h[f"time_{p}"] for h in history]))
                              for p in ("generate", "score", "optimize")},
               "prompts": pstats}
    run.last_loss = history[-1].get("policy_loss") if history else None
    finish_run(run, final_lm(lm, policy, cfg), summary,
               ["reward", "kl", "kl_coef", "entropy", "clip_frac", "value_loss", "approx_kl", "response_len"],
               "PPO", png="ppo_curves.png")
    dist.shutdown(info)
    return summary
