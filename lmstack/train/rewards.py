"""Reward sources for the stages that consume rewards (PPO, GRPO, rejection sampling, the course evaluation):
a trained reward model (backbone + scalar head, scoring text), Llama 2's helpfulness + safety combination,
and rule rewards (an exact-match verifier, the suite's simulated annotator, a token count).

A reward model checkpoint is a normal model folder of the backbone, plus reward_head.safetensors and
`"reward_model": true, "reward_gain", "reward_bias"` in lmstack.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from lmstack.errors import LmstackError
from lmstack.lm import LM, load
from lmstack.model.checkpoint import is_peft, save
from lmstack.text import last_number, normalize
from lmstack.train.common import pad_id
from lmstack.train.prefdata import encode_answer, prompt_messages, right_pad, suite_judge

HEAD_FILE = "reward_head.safetensors"


class RewardNet(nn.Module):
    """Backbone + scalar head. `forward` reads the head at each row's last token; `per_token` everywhere
    (PPO's value model is the same network)."""

    def __init__(self, backbone: nn.Module, d_model: int, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        if head is None:
            head = nn.Linear(d_model, 1)
            # Stiennon et al. / InstructGPT: N(0, 1/(d_model+1)), so the initial rewards have unit scale.
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(d_model + 1))
            nn.init.zeros_(head.bias)
        self.head = head.to(next(backbone.parameters()).device)

    def set_dropout(self, p: float) -> None:
        self.backbone.set_dropout(p)

    def per_token(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.backbone.hidden_states(ids)
        return self.head(h.float())[..., 0]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.backbone.hidden_states(ids)  # right-padded rows: causal attention ignores the padding
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
        return self.head(last.float())[:, 0]


class RewardModel:
    """A trained reward model: scores text, so a policy with another tokenizer can use it (re-tokenised).

    `rm(prompt_messages, answer) -> float` makes it a judge; `rm.score(prompts, answers)` batches."""

    def __init__(self, net: RewardNet, tokenizer, gain: float = 1.0, bias: float = 0.0, meta: dict | None = None):
        if tokenizer is None:
            raise LmstackError("a reward model needs its tokenizer (it re-tokenises prompt and answer text)")
        self.net, self.tokenizer, self.gain, self.bias = net, tokenizer, gain, bias
        self.meta = meta or {}
        self.truncated = 0  # inputs longer than the context, scored on their last tokens (counted)

    @property
    def device(self):
        return next(self.net.parameters()).device

    def encode(self, prompt, answer: str) -> list[int]:
        if isinstance(prompt, dict):  # a prompt record
            prompt = prompt.get("prompt", prompt.get("messages"))
        ids, _ = encode_answer(self.tokenizer, prompt_messages(prompt), answer)
        ctx = self.net.backbone.cfg.max_seq_len
        if len(ids) > ctx:
            self.truncated += 1
            ids = ids[-ctx:]
        return ids

    @torch.no_grad()
    def score(self, prompts, answers: list[str], batch_size: int = 32, normalized: bool = True) -> torch.Tensor:
        """Scores of answers to prompts (message lists, records or strings) as a CPU float tensor."""
        if len(prompts) != len(answers):
            raise LmstackError(f"reward model: {len(prompts)} prompts but {len(answers)} answers")
        seqs = [self.encode(p, a) for p, a in zip(prompts, answers)]
        pad = pad_id(self.tokenizer)
        was = self.net.training
        self.net.eval()
        out = torch.empty(len(seqs))
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # longest first: little padding
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, lens = right_pad([seqs[i] for i in idx], pad, self.device)
            out[idx] = self.net(ids, lens).float().cpu()
        self.net.train(was)
        return out * self.gain + self.bias if normalized else out

    def __call__(self, prompt, answer: str) -> float:
        return float(self.score([prompt], [answer])[0])


def combine_rewards(helpful: torch.Tensor, safety: torch.Tensor, unsafe, threshold: float = -1.0) -> torch.Tensor:
    """Llama 2's rule: the safety score where the prompt is tagged unsafe or the safety score is below the
    threshold (the answer looks unsafe whatever the prompt), the helpfulness score elsewhere.
    With normalised RMs the threshold is in standard deviations of the SFT policy's answers."""
    unsafe = torch.as_tensor(unsafe, dtype=torch.bool, device=helpful.device)
    return torch.where(unsafe | (safety < threshold), safety, helpful)


def load_reward_model(path, device="cpu") -> RewardModel:
    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise LmstackError(f"{path}: not a reward model (no {HEAD_FILE}); train one with `lmstack reward`")
    lm = load(path, device=device)
    if lm.tokenizer is None:
        raise LmstackError(f"{path}: reward model without a tokenizer")
    sd = load_file(str(path / HEAD_FILE))
    head = nn.Linear(lm.config.d_model, 1)
    head.load_state_dict(sd)
    net = RewardNet(lm.model, lm.config.d_model, head).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return RewardModel(net, lm.tokenizer, float(lm.meta.get("reward_gain", 1.0)), float(lm.meta.get("reward_bias", 0.0)),
                       lm.meta)


def save_reward_model(rm: RewardModel, path, **meta) -> Path:
    backbone = rm.net.backbone
    if is_peft(backbone):
        backbone = backbone.merge_and_unload()
        rm.net.backbone = backbone
    head = {k: v.detach().float().cpu().contiguous() for k, v in rm.net.head.state_dict().items()}
    lm = LM(backbone, rm.tokenizer, {}, {})
    return save(lm, path, writer=lambda tmp: save_file(head, str(tmp / HEAD_FILE)),
                **{**meta, "reward_model": True, "reward_gain": rm.gain, "reward_bias": rm.bias})


# ---- rewards of answers -----------------------------------------------------------------------------------------

def exact_match(record: dict, text: str) -> float:
    """A rule-based verifier: 1 if the answer is the record's target (the last number for numeric targets,
    as on the suite's arithmetic cluster; normalised exact match otherwise), else 0."""
    target = str(record.get("target") or "")
    if not target:
        raise LmstackError(f"exact-match reward: record {record.get('id', '?')} has no 'target'")
    meta = record.get("meta") or {}
    if meta.get("check") == "number" or target.lstrip("-").isdigit():
        n = last_number(text)
        return float(n is not None and str(n) == target.strip())
    return float(normalize(text) == normalize(target))


class Rewards:
    """The reward of an answer to a prompt record, whatever its source: Llama 2's helpfulness + safety
    reward models with the combination rule, one reward model, or a rule (a verifier, the suite's
    simulated annotator, the count of a token, any Python function of (record, text, ids)).

    Calling it returns the scores (a CPU tensor) and the per-source means for logging."""

    def __init__(self, helpful: RewardModel | None = None, safety: RewardModel | None = None,
                 threshold: float = -1.0, rule=None):
        if helpful is None and safety is None and rule is None:
            raise LmstackError("no reward: give --reward-model (and --safety-reward-model) or --reward-rule")
        self.helpful, self.safety, self.threshold, self.rule = helpful, safety, threshold, rule

    def __call__(self, records: list[dict], texts: list[str], ids: list[list[int]] | None = None):
        ids = ids if ids is not None else [[] for _ in texts]
        if self.rule is not None:
            s = torch.tensor([float(self.rule(r, t, i)) for r, t, i in zip(records, texts, ids)])
            return s, {"rule": float(s.mean())}
        prompts = [r["prompt"] for r in records]
        info = {}
        h = self.helpful.score(prompts, texts) if self.helpful is not None else None
        s = self.safety.score(prompts, texts) if self.safety is not None else None
        if h is not None:
            info["reward_helpful"] = float(h.mean())
        if s is not None:
            info["reward_safety"] = float(s.mean())
        if h is not None and s is not None:
            unsafe = [bool(r.get("unsafe", False)) for r in records]
            out = combine_rewards(h, s, unsafe, self.threshold)
            info["safety_used"] = float((torch.tensor(unsafe) | (s < self.threshold)).float().mean())
            return out, info
        return (h if h is not None else s), info


def rule_reward(spec: str, suite: Path | None = None):
    """A named rule: exact_match, annotator (the suite's unbiased simulated annotator's score),
    token:ID (how often token ID occurs in the answer: a toy problem with a known optimum)."""
    if spec == "exact_match":
        return lambda rec, text, ids: exact_match(rec, text)
    if spec.startswith("token:"):
        tid = int(spec.split(":", 1)[1])
        return lambda rec, text, ids: float(sum(1 for t in ids if t == tid))
    if spec == "annotator":
        if suite is None:
            raise LmstackError("--reward-rule annotator needs the built-in suite (its world and records)")
        judge = suite_judge(suite)[0]  # the panel's annotator without length bias
        return lambda rec, text, ids: judge.score(rec, text)
    raise LmstackError(f"--reward-rule {spec!r}: expected exact_match, annotator or token:ID")


@dataclass
class RewardOptions:
    """The reward fields of a config (PPO, GRPO, rejection sampling): reward models or a rule."""

    reward_model: str = ""  #: reward model folder (lmstack reward)
    safety_reward_model: str = ""  #: safety reward model: Llama 2's rule picks it for unsafe prompts or low safety scores
    safety_threshold: float = -1.0  #: safety score below which the safety RM decides (normalised units)
    reward_rule: str = ""  #: a rule instead of reward models: exact_match, annotator, token:ID


def load_rewards(opts: RewardOptions, device="cpu", suite: Path | None = None, policy_tokenizer=None) -> Rewards:
    """Rewards from a config's reward options. A reward model with another tokenizer than the policy's is fine:
    answers are passed as text and re-tokenised (reported once)."""
    if opts.reward_rule:
        if opts.reward_model or opts.safety_reward_model:
            raise LmstackError("give either --reward-rule or reward models, not both")
        return Rewards(rule=rule_reward(opts.reward_rule, suite))
    help_rm = load_reward_model(opts.reward_model, device) if opts.reward_model else None
    safe_rm = load_reward_model(opts.safety_reward_model, device) if opts.safety_reward_model else None
    for name, rm in (("reward model", help_rm), ("safety reward model", safe_rm)):
        if rm is not None and policy_tokenizer is not None and not same_tokenizer(rm.tokenizer, policy_tokenizer):
            print(f"note: the {name} has a different tokenizer from the policy; answers are re-tokenised as text")
    return Rewards(help_rm, safe_rm, opts.safety_threshold)


def same_tokenizer(a, b) -> bool:
    try:
        return a.backend.get_vocab() == b.backend.get_vocab()
    except AttributeError:
        return a is b
