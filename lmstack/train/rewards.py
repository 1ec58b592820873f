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


SAFETY_RULES = ("llama2", "llama2-zscore")
LLAMA2_SAFETY_THRESHOLD = 0.15  # Llama 2's threshold on the sigmoid scale (Touvron et al. 2023, Sec. 3.2.2)
ZSCORE_SAFETY_THRESHOLD = -1.0  # the llama2-zscore rule's default, in standard deviations of SFT's answers


def llama2_reward(helpful: torch.Tensor, safety: torch.Tensor, unsafe, threshold: float = LLAMA2_SAFETY_THRESHOLD,
                  whiten: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama 2's reward (Touvron et al. 2023, Sec. 3.2.2) without its KL term, and the rows the safety RM decided:

        R_c = R_s  if IS_SAFETY(p) or R_s < threshold,  else R_h;      reward = WHITEN(LOGIT(R_c))

    R_s = sigmoid(safety score) and R_h = sigmoid(helpfulness score) are the probability-like scores the paper
    thresholds (0.15); lmstack's scores are the RMs' normalised outputs, so R = 0.5 is an answer as good as the
    SFT policy's average one, and 0.15 is 1.73 standard deviations below it. IS_SAFETY(p) is `unsafe`: the prompt
    is tagged as one that may elicit unsafe answers (the suite's harmful requests, not its harmless look-alikes).
    LOGIT(sigmoid(x)) = x, so LOGIT(R_c) is the chosen score itself (exact where a float sigmoid saturates).
    WHITEN: mean 0, std 1 over the batch (a batch of one is left as it is)."""
    if not 0.0 < threshold < 1.0:
        raise LmstackError(f"safety_threshold {threshold}: under the llama2 rule it is a score on the sigmoid scale, "
                           f"in (0, 1) (Llama 2: {LLAMA2_SAFETY_THRESHOLD}); a threshold in standard deviations of "
                           "the normalised scores needs safety_rule llama2-zscore")
    unsafe = torch.as_tensor(unsafe, dtype=torch.bool, device=helpful.device)
    use_safety = unsafe | (safety < math.log(threshold / (1.0 - threshold)))  # sigmoid(s) < t  <=>  s < logit(t)
    out = torch.where(use_safety, safety, helpful).float()
    if whiten and out.numel() > 1:
        out = (out - out.mean()) / torch.sqrt(out.var(unbiased=False) + 1e-8)
    return out, use_safety


def llama2_zscore_reward(helpful: torch.Tensor, safety: torch.Tensor, unsafe,
                         threshold: float = ZSCORE_SAFETY_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """The `llama2-zscore` rule (lmstack's earlier reading of Llama 2): the safety score where the prompt is tagged
    unsafe or the normalised safety score is below `threshold` standard deviations, the helpfulness score elsewhere;
    no logit, no whitening. Returns the rewards and the rows the safety RM decided."""
    unsafe = torch.as_tensor(unsafe, dtype=torch.bool, device=helpful.device)
    use_safety = unsafe | (safety < threshold)
    return torch.where(use_safety, safety, helpful), use_safety


def safety_combination(rule: str, helpful: torch.Tensor, safety: torch.Tensor, unsafe, threshold: float | None = None,
                       whiten: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Helpfulness and safety scores combined by `rule` (SAFETY_RULES); threshold None: the rule's default.
    Returns the rewards and the rows the safety RM decided."""
    if rule == "llama2":
        return llama2_reward(helpful, safety, unsafe, LLAMA2_SAFETY_THRESHOLD if threshold is None else threshold,
                             whiten)
    if rule == "llama2-zscore":
        return llama2_zscore_reward(helpful, safety, unsafe, ZSCORE_SAFETY_THRESHOLD if threshold is None else threshold)
    raise LmstackError(f"safety_rule {rule!r}: expected one of {', '.join(SAFETY_RULES)}")


def check_safety_rule(rule: str, threshold: float | None) -> None:
    """A one-line error for an unknown rule or a threshold outside the rule's scale."""
    safety_combination(rule, torch.zeros(1), torch.zeros(1), [False], threshold)


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
    reward models with a combination rule (`safety_rule`, see `safety_combination`), one reward model, or a rule
    (a verifier, the suite's simulated annotator, the count of a token, any Python function of (record, text, ids)).

    `whiten`: the llama2 rule's WHITEN over each call's batch (PPO's reward); off where scores of different
    batches are compared (rejection sampling keeps the best answer over rounds).
    Calling it returns the scores (a CPU tensor) and the per-source means for logging."""

    def __init__(self, helpful: RewardModel | None = None, safety: RewardModel | None = None,
                 threshold: float | None = None, rule=None, safety_rule: str = "llama2", whiten: bool = True):
        if helpful is None and safety is None and rule is None:
            raise LmstackError("no reward: give --reward-model (and --safety-reward-model) or --reward-rule")
        if helpful is not None and safety is not None:  # a bad rule or threshold fails here, before any rollout
            check_safety_rule(safety_rule, threshold)
        self.helpful, self.safety, self.threshold, self.rule = helpful, safety, threshold, rule
        self.safety_rule, self.whiten = safety_rule, whiten

    def __call__(self, records: list[dict], texts: list[str], ids: list[list[int]] | None = None):
        return self.combine(records, self.parts(records, texts, ids))

    def parts(self, records: list[dict], texts: list[str], ids: list[list[int]] | None = None) -> dict:
        """Each source's raw scores of the answers (CPU tensors): `rule`, or `helpful` and/or `safety`. The costly
        half (reward-model forwards): under torchrun each process scores its own share of a batch, then the parts
        are gathered and combined over the whole batch (whitening is a statistic of the batch)."""
        ids = ids if ids is not None else [[] for _ in texts]
        if self.rule is not None:
            return {"rule": torch.tensor([float(self.rule(r, t, i)) for r, t, i in zip(records, texts, ids)])}
        prompts = [r["prompt"] for r in records]
        out = {}
        if self.helpful is not None:
            out["helpful"] = self.helpful.score(prompts, texts)
        if self.safety is not None:
            out["safety"] = self.safety.score(prompts, texts)
        return out

    def combine(self, records: list[dict], parts: dict) -> tuple[torch.Tensor, dict]:
        """The rewards of a batch from its `parts`, and the per-source means for logging."""
        if "rule" in parts:
            return parts["rule"], {"rule": float(parts["rule"].mean())}
        h, s = parts.get("helpful"), parts.get("safety")
        info = {}
        if h is not None:
            info["reward_helpful"] = float(h.mean())
        if s is not None:
            info["reward_safety"] = float(s.mean())
        if h is not None and s is not None:
            unsafe = [bool(r.get("unsafe", False)) for r in records]  # IS_SAFETY(p): the prompt's `unsafe` tag
            out, used = safety_combination(self.safety_rule, h, s, unsafe, self.threshold, self.whiten)
            info["safety_used"] = float(used.float().mean())
            if self.whiten:  # a whitened batch has mean 0: log the proxy reward itself, before WHITEN
                info["reward_unwhitened"] = float(safety_combination(self.safety_rule, h, s, unsafe, self.threshold,
                                                                     whiten=False)[0].mean())
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
    #: safety reward model: Llama 2's rule picks it for prompts tagged unsafe or low safety scores
    safety_reward_model: str = ""
    #: how the two reward models combine: llama2 (the paper: the safety RM where the prompt is tagged unsafe or
    #: sigmoid(safety score) < --safety-threshold, else the helpfulness RM; then logit and whitening over the batch)
    #: or llama2-zscore (the same choice with the threshold in standard deviations of the normalised safety score;
    #: no logit, no whitening)
    safety_rule: str = "llama2"
    #: the safety RM decides below this (None: the rule's own): llama2: a sigmoid-scale score in (0, 1), 0.15 as in
    #: Llama 2; llama2-zscore: standard deviations of the normalised safety score, -1.0
    safety_threshold: float | None = None
    reward_rule: str = ""  #: a rule instead of reward models: exact_match, annotator, token:ID


def load_rewards(opts: RewardOptions, device="cpu", suite: Path | None = None, policy_tokenizer=None,
                 whiten: bool = True) -> Rewards:
    """Rewards from a config's reward options. A reward model with another tokenizer than the policy's is fine:
    answers are passed as text and re-tokenised (reported once). `whiten`: see `Rewards`."""
    if opts.reward_rule:
        if opts.reward_model or opts.safety_reward_model:
            raise LmstackError("give either --reward-rule or reward models, not both")
        return Rewards(rule=rule_reward(opts.reward_rule, suite))
    if opts.safety_reward_model and opts.reward_model:  # a bad rule or threshold fails before the models load
        check_safety_rule(opts.safety_rule, opts.safety_threshold)
    help_rm = load_reward_model(opts.reward_model, device) if opts.reward_model else None
    safe_rm = load_reward_model(opts.safety_reward_model, device) if opts.safety_reward_model else None
    for name, rm in (("reward model", help_rm), ("safety reward model", safe_rm)):
        if rm is not None and policy_tokenizer is not None and not same_tokenizer(rm.tokenizer, policy_tokenizer):
            print(f"note: the {name} has a different tokenizer from the policy; answers are re-tokenised as text")
    return Rewards(help_rm, safe_rm, opts.safety_threshold, safety_rule=opts.safety_rule, whiten=whiten)


def reward_model_scorer(spec, device="cpu") -> RewardModel | None:
    """The reward model in folder `spec` (or in `spec`/model, a `lmstack reward` run folder) as a judge,
    `rm(prompt_messages, answer) -> float` (batched by `rm.score`); None when `spec` is not a folder. For
    `lmstack eval winrate|safety --judge reward --reward-fn DIR` (lmstack.evaluate takes scorers, it never
    imports train)."""
    path = Path(spec)
    if not path.is_dir():
        return None
    if not (path / HEAD_FILE).exists() and (path / "model" / HEAD_FILE).exists():
        path = path / "model"
    return load_reward_model(path, device)


def same_tokenizer(a, b) -> bool:
    try:
        return a.backend.get_vocab() == b.backend.get_vocab()
    except AttributeError:
        return a is b
