"""What the sampling recipes share (PPO, GRPO, rejection sampling): their setup (policy, rewards, prompts),
rollouts through the one generation engine and their per-token log-probabilities, GAE, PPO's clipped
losses, masked statistics, the adaptive KL controller, and the gold score of the rollouts (the suite's
unbiased simulated annotator, logged beside the reward for Gao et al. 2023's over-optimisation curve).

Log-probabilities come from a forward pass with logits divided by the sampling temperature, i.e. of the
very distribution the rollouts were drawn from.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lmstack.errors import LmstackError
from lmstack.infer.engine import generate_rows
from lmstack.infer.logprobs import sequence_logprobs
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load
from lmstack.train import dist
from lmstack.train.common import pad_id, resume_point
from lmstack.train.dist import DistInfo
from lmstack.train.lora import load_adapter_state
from lmstack.train.policy import check_rollout_quantize, load_policy, reference, rollout_model
from lmstack.train.prefdata import PrefConfig, encode_prompts, load_prompts, right_pad, suite_dir, suite_judge
from lmstack.train.rewards import RewardOptions, Rewards, load_rewards
from lmstack.train.state import check_resumable, config_fingerprint, read_trainer_state


@dataclass
class RolloutOptions(RewardOptions):
    """The fields of a config that samples answers to prompts and scores them (with the reward options)."""

    max_new_tokens: int = 48  #: longest sampled answer, in tokens
    temperature: float = 1.0  #: sampling temperature, > 0 (PPO, GRPO: also of every log-probability)
    clusters: list[str] = field(default_factory=list)  #: only prompts of these suite clusters (e.g. arithmetic)
    #: none, int8 or int4: sample rollouts from a weight-only quantised copy of the policy (CPU; faster decoding,
    #: the losses keep the dense policy's log-probabilities)
    rollout_quantize: str = "none"


@dataclass
class GoldOptions:
    """The policy-gradient recipes' (PPO, GRPO) gold-score switch."""

    #: log `gold` per iteration: the built-in suite's unbiased simulated annotator's mean score of the rollouts,
    #: beside the reward models' `reward` (Gao et al. 2023's over-optimisation curve); only logged, never a reward.
    #: Needs reward models (not --reward-rule) and the suite's prompts (not --data)
    log_gold: bool = True


# ---- setup ------------------------------------------------------------------------------------------------------

def rollout_prompts(cfg, tok) -> tuple[list[dict], list[list[int]], dict]:
    """The prompt records (of --clusters) that leave room for a --max-new-tokens answer, their token ids, counts."""
    records, stats = load_prompts(cfg, cfg.clusters or None)
    records, ids, stats["dropped_overlong"] = encode_prompts(tok, records, cfg.seq_len - cfg.max_new_tokens,
                                                             cfg.overlong)
    return records, ids, stats


@dataclass
class Setup:
    """A policy-gradient run's inputs: the process, the policy and its reference, the rewards, the prompts."""

    info: DistInfo
    suite: Path | None  # the built-in suite when the prompts come from it
    lm: object  # the starting checkpoint (its tokenizer and generation config)
    policy: torch.nn.Module
    params: list  # the trainable parameters
    ref: torch.nn.Module | None  # the frozen reference copy (None: LoRA adapters off, or none needed)
    rewards: Rewards
    records: list[dict]
    pids: list[list[int]]
    pstats: dict
    judge: object | None = None  # the gold annotator (see gold_judge); None: no `gold` is logged
    sampler: torch.nn.Module | None = None  # under FSDP2: the whole-weights copy rollouts are decoded with

    @property
    def tok(self):
        return self.lm.tokenizer

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n prompt indices, without repeats unless there are fewer than n prompts."""
        return rng.choice(len(self.records), size=n, replace=len(self.records) < n)

    def sample(self, rows, cfg, seeds: list[int]):
        """Answers to the prompts `rows` (indices, repeats allowed) from the current policy, row j drawn with
        seeds[j]."""
        return sample(self.decoder(), self.tok, [self.pids[i] for i in rows], cfg, seeds)

    def decoder(self) -> torch.nn.Module:
        """What rollouts are decoded with: the policy, or under FSDP2 a whole copy on each process loaded with the
        policy's current weights (the engine decodes token by token: decoding through the shards would gather
        every block's weights at every token)."""
        if self.sampler is None:
            return self.policy
        self.sampler.load_state_dict(get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True)))
        return self.sampler

    def shard_frozen(self) -> None:
        """Under FSDP2, the frozen networks (the reference copy, the reward models) are sharded like the policy
        rather than held whole by every process. Called once the value model has been copied from the reward
        model (PPO)."""
        if self.sampler is None:
            return
        for net in (self.ref, getattr(self.rewards, "helpful", None), getattr(self.rewards, "safety", None)):
            net = getattr(net, "net", net)  # a RewardModel's network
            if net is not None:
                dist.shard(net)

    def gold(self, rows, comps) -> dict:
        """{"gold": the gold annotator's mean score of the answers `comps` to the prompts `rows`}, or {} without a
        judge. Only for logging: it never reaches the training signal."""
        if self.judge is None:
            return {}
        return {"gold": float(np.mean([self.judge.score(self.records[i], c.text) for i, c in zip(rows, comps)]))}


def check_temperature(cfg, stage: str) -> None:
    """PPO and GRPO sample their rollouts and score them with log-probabilities of logits / temperature: 0 (greedy
    decoding) has no such distribution, and would divide by zero."""
    if not cfg.temperature > 0:
        raise LmstackError(f"{stage}: temperature must be > 0, got {cfg.temperature} (rollouts are sampled, and "
                           "their log-probabilities are those of logits / temperature)")


def setup(cfg: PrefConfig, stage: str, rewards: Rewards | None = None, need_reference: bool = True,
          shares: tuple = (), minibatches: tuple[int, int] | None = None) -> Setup:
    """The processes (torchrun's, or one), the seed, the policy (and reference), the rewards (`rewards`, or the
    config's reward options) and the prompts. `shares`: (count, option, what) of each quantity split evenly over
    the processes, and `minibatches`: (rollouts per iteration, --micro-batch), checked before anything loads."""
    check_temperature(cfg, stage)
    check_rollout_quantize(cfg.rollout_quantize)
    if cfg.fsdp and cfg.lora:
        raise LmstackError(f"{stage}: --fsdp with --lora is not supported: LoRA keeps one frozen copy of the weights "
                           "and trains with DDP; --fsdp shards a full fine-tune")
    info = dist.init(cfg.device)
    for n, option, what in shares:
        check_shares(info, stage, n, option, what)
    if minibatches is not None:
        check_minibatches(info, stage, *minibatches)
    torch.manual_seed(cfg.seed)
    suite = suite_dir(cfg) if not cfg.data else None
    lm, policy, params, ref = load_policy(cfg, info.device, need_reference=need_reference)
    if rewards is None:
        rewards = load_rewards(cfg, info.device, suite, lm.tokenizer)
    records, pids, pstats = rollout_prompts(cfg, lm.tokenizer)
    check_unsafe_tags(rewards, records, stage)
    judge = gold_judge(suite, rewards, records) if getattr(cfg, "log_gold", False) else None
    sampler = copy.deepcopy(policy).eval() if cfg.fsdp and info.world > 1 else None  # see Setup.decoder
    return Setup(info, suite, lm, policy, params, ref, rewards, records, pids, pstats, judge, sampler)


def gold_judge(suite: Path | None, rewards: Rewards, records: list[dict]):
    """The suite's unbiased simulated annotator (panel[0], the course evaluation's "unbiased annotator"; rule-based,
    so cheap) as the gold judge of the rollouts, where there is a proxy to compare it with and ground truth to judge
    by: the rewards are reward models (a rule is no proxy: `annotator` is this judge itself, exact_match a
    verifier) and the prompts are the suite's, each record with the `meta` its judgement reads. Else None."""
    if suite is None or getattr(rewards, "rule", None) is not None or not all("meta" in r for r in records):
        return None
    return suite_judge(suite)[0]


# ---- resume ----------------------------------------------------------------------------------------------------

def resume_state(cfg, stage: str, policy, device) -> tuple[Path | None, dict]:
    """With --resume and a checkpoint in --out: (its folder, its trainer state), the policy's weights (or LoRA
    adapters) restored from it; else (None, {}). A checkpoint of another recipe, or one written with other
    options, is refused in one line naming what differs."""
    resume_from = resume_point(cfg)
    if resume_from is None:
        return None, {}
    blob, _ = read_trainer_state(resume_from)
    check_resumable(resume_from, blob.get("recipe"), blob.get("config"), stage, cfg)
    if cfg.lora:
        load_adapter_state(policy, resume_from)
    else:
        policy.load_state_dict(load(resume_from, device=device).model.state_dict())
    return resume_from, blob


def loop_state(cfg, stage: str, rng: np.random.Generator, history: list[dict], **more) -> dict:
    """What a policy-gradient loop carries between iterations beyond weights, optimizer and torch's RNG (which
    every checkpoint holds): the recipe and options, the prompt sampler's state and the logged history."""
    return {"recipe": stage, "config": config_fingerprint(cfg), "prompt_rng": rng.bit_generator.state,
            "history": list(history), **more}


def restore_rng(rng: np.random.Generator, blob: dict) -> None:
    if blob:
        rng.bit_generator.state = blob["prompt_rng"]


def check_unsafe_tags(rewards: Rewards, records: list[dict], stage: str) -> None:
    """Llama 2's rule gives prompts tagged `unsafe` to the safety RM whatever its score; prompts without the tag
    (e.g. --data files without the field) reach it only through a low safety score: said once."""
    if getattr(rewards, "helpful", None) is not None and getattr(rewards, "safety", None) is not None \
            and not any(r.get("unsafe") for r in records):
        warnings.warn(f"{stage}: no prompt is tagged `unsafe`: the safety reward model decides only where its score "
                      "is below --safety-threshold", stacklevel=3)


def check_shares(info: DistInfo, stage: str, n: int, option: str, what: str) -> None:
    """Under torchrun the `n` `what` of an iteration (the value of `option`) are split evenly over the processes:
    one line where they cannot be."""
    if info.world == 1:
        return
    if n < info.world:
        raise LmstackError(f"{stage}: {info.world} processes but {option} {n}: more processes than {what} per "
                           f"iteration; launch at most {n} or raise {option}")
    if n % info.world:
        raise LmstackError(f"{stage}: {option} {n} is not a multiple of the {info.world} processes ({what} are "
                           "split evenly over them)")


def check_minibatches(info: DistInfo, stage: str, n: int, micro_batch: int) -> None:
    """Each update minibatch of --micro-batch rollouts (the last one of an iteration may be smaller) is split evenly
    over the processes: one line where it cannot be."""
    sizes = sorted({min(micro_batch, n - s) for s in range(0, n, micro_batch)})
    if info.world > 1 and any(k % info.world for k in sizes):
        raise LmstackError(f"{stage}: update minibatches of {'/'.join(map(str, sizes))} rollouts ({n} per iteration, "
                           f"--micro-batch {micro_batch}) do not split evenly over {info.world} processes; make "
                           f"--micro-batch and the rollouts per iteration multiples of {info.world}")


def rollout_seed(cfg: PrefConfig, it: int) -> int:
    return cfg.seed * 1_000_003 + it


def row_seeds(cfg: PrefConfig, it: int, first: int, n: int) -> list[int]:
    """The sampling seeds of rollouts first .. first + n - 1 of iteration `it`: one per rollout, so an answer does
    not depend on which process samples it or beside which others (the batch is the same for any world size)."""
    return [(rollout_seed(cfg, it) * 1_000_033 + first + j) % 2**63 for j in range(n)]


# ---- rollouts ---------------------------------------------------------------------------------------------------

SAMPLE_CHUNK = 256  # rows decoded together by `sample`


@torch.no_grad()
def sample(policy, tok, prompt_ids: list[list[int]], cfg, seeds: list[int]):
    """Answers to `prompt_ids`, row j sampled with its own random stream seeds[j]."""
    sps = [SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=sd) for sd in seeds]
    model = rollout_model(policy, getattr(cfg, "rollout_quantize", "none"))
    # Bounded batches: one left-padded batch of thousands of rows (rejection sampling's rounds) pads every row to
    # the longest prompt and holds all their caches at once (4,096 rows: 46 s in one batch, 20 s in chunks of 256,
    # on the course's SFT model here). Each row keeps its own random stream; only float rounding of other paddings
    # differs (2 of 24,476 answer tokens changed in that measurement).
    return generate_rows(model, prompt_ids, sps, tok, SAMPLE_CHUNK)


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

    @classmethod
    def of(cls, prompts: list[list[int]], comps, pad: int, device=None) -> Rollouts:
        """Prompt ids + the sampled answers' ids, right-padded."""
        ids, _ = right_pad([p + c.ids for p, c in zip(prompts, comps)], pad, device)
        return cls(ids, torch.tensor([len(p) for p in prompts], device=device),
                   torch.tensor([len(c.ids) for c in comps], device=device))

    def rows(self, idx) -> Rollouts:
        """A minibatch, trimmed to its own longest row and answer."""
        T = int((self.plen[idx] + self.rlen[idx]).max())
        R = int(self.rlen[idx].max())
        cut = {k: getattr(self, k)[idx][:, :R] for k in ("old_lp", "ref_lp", "values", "adv", "ret")
               if getattr(self, k) is not None}
        return Rollouts(self.ids[idx][:, :T], self.plen[idx], self.rlen[idx], **cut)

    def minibatches(self, epochs: int, size: int) -> Iterator[Rollouts]:
        """`epochs` passes over the rollouts in minibatches of `size`, a fresh random order each pass."""
        n = len(self.ids)
        for _ in range(epochs):
            perm = torch.randperm(n)
            for s in range(0, n, size):
                yield self.rows(perm[s:s + size])


@dataclass
class Batch:
    """An iteration's rollouts, whole on every process."""

    rows: list[int]  # the prompt (record index) of each rollout
    comps: list  # the sampled answers (Completion), in rollout order
    ro: Rollouts  # ids and lengths, the policy's log-probs (old_lp), the reference's, the values, as asked
    parts: dict  # the reward sources' raw scores (Rewards.parts), to be combined over the whole batch
    time_generate: float
    time_score: float


def collect(s: Setup, cfg, rows: list[int], it: int, reference_lp: bool = True,
            values: Callable[[Rollouts], torch.Tensor] | None = None) -> Batch:
    """One iteration's rollouts of the prompts `rows`. Each process samples its contiguous share (every rollout with
    its own seed), scores it with the reward sources and takes the policy's per-token log-probabilities at the
    sampling temperature (and the reference's, and `values(rollouts)`); then every process gathers the whole batch,
    so what follows (rewards combined and whitened over the batch, advantages, minibatch order) is the same on all
    of them and the same as in one process."""
    info = s.info
    mine = dist.share(len(rows), info)
    t0 = time.perf_counter()
    comps = s.sample(rows[mine], cfg, row_seeds(cfg, it, mine.start, mine.stop - mine.start))
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    recs = [s.records[i] for i in rows[mine]]
    parts = s.rewards.parts(recs, [c.text for c in comps], [c.ids for c in comps])
    ro = Rollouts.of([s.pids[i] for i in rows[mine]], comps, pad_id(s.tok), info.device)
    per_token = {}
    with torch.no_grad():
        per_token["old_lp"] = by_length(ro, lambda r: policy_logprobs(s.policy, r, cfg.temperature)[0])
        if reference_lp:
            with reference(s.policy, s.ref) as ref_model:
                per_token["ref_lp"] = by_length(ro, lambda r: policy_logprobs(ref_model, r, cfg.temperature)[0])
        if values is not None:
            per_token["values"] = by_length(ro, values)
    # Each rollout as one picklable row, its per-token tensors cut to its answer's length.
    local = [{"comp": c, "parts": {k: float(v[j]) for k, v in parts.items()},
              **{k: v[j, :len(c.ids)].cpu() for k, v in per_token.items()}} for j, c in enumerate(comps)]
    every = dist.gather_rows(local, info)
    comps = [r["comp"] for r in every]
    ro = Rollouts.of([s.pids[i] for i in rows], comps, pad_id(s.tok), info.device)
    for k in per_token:  # zero-padded after each answer
        setattr(ro, k, torch.nn.utils.rnn.pad_sequence([r[k] for r in every], batch_first=True).to(info.device))
    parts = {k: torch.tensor([r["parts"][k] for r in every]) for k in parts}
    return Batch(list(rows), comps, ro, parts, t_gen, time.perf_counter() - t0)


SCORE_ROWS = 16  # rollouts per no-grad forward in `collect`


def by_length(ro: Rollouts, fn: Callable[[Rollouts], torch.Tensor], rows: int = SCORE_ROWS) -> torch.Tensor:
    """fn(chunk) -> [b, R_chunk] over length-sorted chunks of the rollouts, reassembled as [B, R].

    One right-padded batch pads every rollout to the longest prompt + answer of the iteration: for 64 of the
    course's rollouts (29-138 tokens, median 81) it holds 1.6x their real tokens, length-sorted chunks of 16 hold
    1.14x. A right-padded row's values do not depend on the padding after it (causal attention), so the chunks give
    the same numbers up to float rounding. Entries past a rollout's answer are zero."""
    order = torch.argsort(ro.plen + ro.rlen, stable=True)
    out = None
    for s in range(0, len(order), rows):
        idx = order[s:s + rows]
        r = ro.rows(idx)
        v = fn(r)
        v = v.masked_fill(~response_index(r.plen, r.rlen)[1].to(v.device), 0)
        if out is None:
            out = v.new_zeros(len(order), int(ro.rlen.max()))
        out[idx.to(v.device), :v.shape[1]] = v
    return out


def policy_logprobs(model, ro: Rollouts, temperature: float, entropy: bool = False):
    """[B, R] log pi(response token | prefix) at the sampling temperature (and entropies), with the mask."""
    idx, mask = response_index(ro.plen, ro.rlen)
    lp, ent = sequence_logprobs(model, ro.ids, temperature, entropy)
    return lp.gather(1, idx), (ent.gather(1, idx) if ent is not None else None), mask


def response_index(prompt_lens: torch.Tensor, resp_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a right-padded batch of prompt + response rows: the [B, R] index into the shifted (T-1) axis at
    which response token j of row b is predicted (prompt_len - 1 + j), and the response mask."""
    R = int(resp_lens.max())
    j = torch.arange(R, device=prompt_lens.device)[None]
    mask = j < resp_lens[:, None]
    idx = (prompt_lens[:, None] - 1 + j) * mask  # padding points at 0; masked out anyway
    return idx, mask


# ---- statistics and objectives ----------------------------------------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None, count=None) -> torch.Tensor:
    """The mean of x where mask is set (over `dim`, else over all). `count`: divide the masked sum by this instead
    of the mask's own count (under torchrun, a process's share of a mean over the whole minibatch)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / (m.sum().clamp(min=1) if count is None else count)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


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


def ppo_losses(lp, old_lp, adv, v, old_v, ret, mask, cliprange: float, cliprange_value: float, count=None):
    """The clipped surrogate objective and clipped value loss (PPO, as in InstructGPT / TRL), token means over the
    minibatch; `count`: its token count when these rows are one process's share of it (masked_mean)."""
    ratio = torch.exp(lp - old_lp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cliprange, 1 + cliprange))
    pg_loss = masked_mean(pg, mask, count=count)
    v_clip = old_v + (v - old_v).clamp(-cliprange_value, cliprange_value)
    vf_loss = 0.5 * masked_mean(torch.max((v - ret) ** 2, (v_clip - ret) ** 2), mask, count=count)
    with torch.no_grad():
        stats = {"clip_frac": float(masked_mean(((ratio - 1).abs() > cliprange).float(), mask, count=count)),
                 "approx_kl": float(masked_mean(0.5 * (lp - old_lp) ** 2, mask, count=count)),
                 "value_clip_frac": float(masked_mean(((v - old_v).abs() > cliprange_value).float(), mask,
                                                      count=count))}
    return pg_loss, vf_loss, stats


def summed(stats: dict, info: DistInfo) -> dict:
    """Statistics that are each process's share of a minibatch's mean, summed over the processes (one
    all-reduce)."""
    if info.world == 1:
        return stats
    keys = sorted(stats)
    total = dist.all_sum(torch.tensor([stats[k] for k in keys]), info)
    return {k: float(v) for k, v in zip(keys, total)}


def minibatch_share(mb: Rollouts, info: DistInfo) -> tuple[Rollouts, torch.Tensor, int]:
    """This process's share of a minibatch, the minibatch's response-token count and its number of rollouts (the
    denominators of its means). DDP averages the processes' gradients, so a loss that is a share of the
    minibatch's mean is multiplied by the world size before backward."""
    count = response_index(mb.plen, mb.rlen)[1].sum().clamp(min=1).to(torch.float32)
    return mb.rows(dist.share(len(mb.ids), info)), count, len(mb.ids)


K_BETA = 0.1  # Ziegler et al. 2019's controller gain per iteration


class AdaptiveKL:
    """Ziegler et al. 2019's controller: e = clip(KL/target - 1, -0.2, 0.2), beta <- beta (1 + e n / horizon) after
    n rollouts. With horizon = n / K_beta (n rollouts per iteration) that is the paper's beta (1 + K_beta e) per
    iteration, K_beta = 0.1."""

    def __init__(self, beta: float, target: float, horizon: float):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            err = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
            self.beta *= 1.0 + err * n / self.horizon


def kl_controller(beta: float, target: float, horizon: int, per_iteration: int, iterations: int,
                  stage: str) -> AdaptiveKL:
    """The controller of a run of `iterations` x `per_iteration` rollouts. horizon 0: per_iteration / K_beta
    (10 x the rollout batch), Ziegler et al.'s step. A horizon longer than the whole run leaves beta almost where
    it started (--kl-target then does little): warned, in one line."""
    if horizon < 0:
        raise LmstackError(f"{stage}: kl_horizon must be >= 0 (0: {1 / K_BETA:g} x the rollouts per iteration), "
                           f"got {horizon}")
    if horizon == 0:
        horizon = round(per_iteration / K_BETA)
    elif target > 0 and iterations * per_iteration < horizon:
        most = (1 + 0.2 * per_iteration / horizon) ** iterations - 1
        warnings.warn(f"{stage}: kl_horizon {horizon} is longer than the run ({iterations} x {per_iteration} = "
                      f"{iterations * per_iteration} rollouts): beta can move by {100 * most:.0f}% at most, so "
                      f"--kl-target does little; leave kl_horizon at 0 ({round(per_iteration / K_BETA)} here, "
                      f"Ziegler et al.'s K_beta = {K_BETA})", stacklevel=3)
    return AdaptiveKL(beta, target, horizon)


# ---- logging ----------------------------------------------------------------------------------------------------

def means(acc: dict[str, list[float]]) -> dict[str, float]:
    """The mean of each statistic gathered over an iteration's minibatches."""
    return {k: float(np.mean(v)) for k, v in acc.items()}


def gather(acc: dict[str, list[float]], stats: dict) -> None:
    for k, v in stats.items():
        acc.setdefault(k, []).append(v)


def reward_trend(history: list[dict]) -> dict:
    """The mean reward of the first and last quarter of the iterations, and the last quarter's KL; the same of the
    gold score where it was logged."""
    k = max(1, len(history) // 4)
    out = {"reward_first": float(np.mean([h["reward"] for h in history[:k]])),
           "reward_last": float(np.mean([h["reward"] for h in history[-k:]])),
           "kl_last": float(np.mean([h["kl"] for h in history[-k:]]))}
    if history and all("gold" in h for h in history):
        out.update(gold_first=float(np.mean([h["gold"] for h in history[:k]])),
                   gold_last=float(np.mean([h["gold"] for h in history[-k:]])))
    return out
