"""Reward model recipe, InstructGPT step 2 (with Llama 2's margins and its two reward models).

    lmstack reward --model runs/sft/model --out runs/rm                       # on the built-in suite
    lmstack reward --model runs/sft/model --subset safety --out runs/rm_safe  # Llama 2's safety RM
    lmstack reward --model runs/sft/model --data prefs.jsonl --margin-scale 0.1

A Transformer (from an SFT or base checkpoint) with a scalar head read at the last token of the answer.
Each prompt's K ranked answers are scored in one forward pass and all C(K,2) comparisons of the prompt
form one batch element (InstructGPT), loss -log sigma(r_chosen - r_rejected - margin). After training
the scores are normalised with a gain and bias so that the SFT policy's own answers have mean 0 and
std 1, which makes thresholds (Llama 2's safety rule) and PPO's KL coefficient meaningful across RMs.

The checkpoint is a normal model folder of the backbone, plus reward_head.safetensors and
`"reward_model": true, "reward_gain", "reward_bias"` in lmstack.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmstack.errors import LmstackError
from lmstack.train import dist
from lmstack.train.common import finish_run, log_step, optimizer_step, start_run
from lmstack.train.prefs import (
    Comparison,
    PrefConfig,
    _fmt_stats,
    encode_answer,
    load_comparisons,
    preference_files,
    right_pad,
    suite_dir,
)

HEAD_FILE = "reward_head.safetensors"


@dataclass
class RewardConfig(PrefConfig):
    out: str = "runs/reward"
    val_data: list[str] = field(default_factory=list)  # held-out comparisons (suite: preferences/pairs_test.jsonl)
    subset: str = "all"  # all | helpful | safety (Llama 2 trains one RM on each)
    margin_scale: float = 0.0  # > 0: Llama 2's margin = scale x rating gap
    epochs: float = 2.0  # > 0: overrides --steps
    micro_batch: int = 8  # prompts per step (each with all its answers)
    lr: float = 3e-4
    warmup: int = 5
    schedule: str = "cosine"
    normalize: bool = True  # gain/bias so that the SFT policy's answers score mean 0, std 1
    norm_policy: str = ""  # whose answers define the normalisation (default: --model)
    norm_prompts: int = 64
    norm_max_new_tokens: int = 48
    sample_rankings: int = 0  # > 0: InstructGPT's labelling: K answers sampled from --model per suite prompt,
    #                           ranked by the suite's simulated annotators, added to the training data
    sample_prompts: int = 256  # train prompts to sample for (and a quarter as many test prompts, held out)
    sample_max_new_tokens: int = 32


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


def _as_messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, dict):
        prompt = prompt.get("prompt", prompt.get("messages"))
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


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
        ids, _ = encode_answer(self.tokenizer, _as_messages(prompt), answer)
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
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
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
    from safetensors.torch import load_file

    import lmstack

    path = Path(path)
    if not (path / HEAD_FILE).exists():
        raise LmstackError(f"{path}: not a reward model (no {HEAD_FILE}); train one with `lmstack reward`")
    lm = lmstack.load(path, device=device)
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
    from safetensors.torch import save_file

    from lmstack.model.checkpoint import LM, is_peft, save

    backbone = rm.net.backbone
    if is_peft(backbone):
        backbone = backbone.merge_and_unload()
        rm.net.backbone = backbone
    head = {k: v.detach().float().cpu().contiguous() for k, v in rm.net.head.state_dict().items()}
    lm = LM(backbone, rm.tokenizer, {}, {})
    return save(lm, path, writer=lambda tmp: save_file(head, str(tmp / HEAD_FILE)),
                **{**meta, "reward_model": True, "reward_gain": rm.gain, "reward_bias": rm.bias})


# ---- training ------------------------------------------------------------------------------------------------------

@dataclass
class EncodedComparison:
    seqs: list[list[int]]  # one per answer
    pairs: list[tuple[int, int, float]]


def encode_comparisons(tok, comps: list[Comparison], seq_len: int, overlong: str) -> tuple[list[EncodedComparison], dict]:
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
            out.append(EncodedComparison(seqs, pairs))
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


def sft_answers(policy_path: str, prompts: list[list[dict]], max_new_tokens: int, seed: int, device) -> list[str]:
    """Answers the SFT policy samples for prompts (the normalisation set)."""
    import lmstack
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    lm = lmstack.load(policy_path, device=device)
    ids = [lm.tokenizer.encode_chat(p, add_generation_prompt=True)[0] for p in prompts]
    ctx = lm.config.max_seq_len
    ids = [i[-(ctx - max_new_tokens):] for i in ids]
    outs = generate(lm.model, ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed),
                    lm.tokenizer)
    return [o.text for o in outs]


def sample_rankings(model_path: str, records: list[dict], k: int, panel, max_new_tokens: int, seed: int,
                    device, split: str = "train") -> tuple[list[dict], dict]:
    """InstructGPT's labelling step with simulated labelers: k answers sampled from the policy for each prompt,
    ranked best to worst by one annotator of the panel (rotating). Answers the annotator calls a tie form one
    tied group of the ranking (no comparison inside it); prompts with fewer than two distinct answers are
    counted, not ranked."""
    from tqdm import tqdm

    import lmstack
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams
    from lmstack.train import log
    from lmstack.train.prefs import encode_prompts

    lm = lmstack.load(model_path, device=device)
    records, ids, dropped = encode_prompts(lm.tokenizer, records, lm.config.max_seq_len - max_new_tokens)
    rows = [i for i in range(len(records)) for _ in range(k)]
    outs = []
    chunk = 256  # a bounded batch (and a progress bar) however many prompts are labelled
    for s in tqdm(range(0, len(rows), chunk), desc=f"  sampling {split}", leave=False, disable=not log.PIPELINE_BARS):
        sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed + s)
        outs += generate(lm.model, [ids[i] for i in rows[s:s + chunk]], sp, lm.tokenizer)
    stats = {"prompts": len(records), "dropped_overlong": dropped, "one_distinct_answer": 0}
    out = []
    for n, rec in enumerate(records):
        answers = list(dict.fromkeys(o.text.strip() for o in outs[n * k:(n + 1) * k] if o.text.strip()))
        if len(answers) < 2:
            stats["one_distinct_answer"] += 1
            continue
        ann = panel[n % len(panel)]
        order = ann.rank(rec, answers)
        groups = [[order[0]]]
        for i in order[1:]:
            if ann.compare(rec, answers[groups[-1][-1]], answers[i]) == "tie":
                groups[-1].append(i)
            else:
                groups.append([i])
        out.append({"id": f"sampled-{split}-{n:05d}", "prompt": rec["prompt"], "answers": answers,
                    "ranking": [g if len(g) > 1 else g[0] for g in groups], "annotator": ann.name,
                    "unsafe": bool(rec.get("unsafe")), "cluster": rec.get("cluster", ""),
                    "scores": [round(ann.score(rec, a), 3) for a in answers], "source": "policy_samples"})
    return out, stats


def reward(cfg: RewardConfig) -> dict:
    import lmstack

    if not cfg.model:
        raise LmstackError("reward: --model is required (the SFT or base checkpoint to start from)")
    if cfg.resume:
        raise LmstackError("reward: --resume is not supported (runs are minutes long); start again")
    info = dist.init(cfg.device)
    torch.manual_seed(cfg.seed)
    data, val_data = preference_files(cfg, "rankings.jsonl")
    sampled_val = []
    if cfg.sample_rankings > 0:
        data, sampled_val = _sampled_data(cfg, data, info)
    comps, stats = load_comparisons(data, cfg.skip_bad, cfg.subset, cfg.margin_scale)
    lm = lmstack.load(cfg.model, device=info.device)
    tok = lm.tokenizer
    if tok is None:
        raise LmstackError(f"{cfg.model}: no tokenizer; the reward model renders prompt + answer with it")
    if cfg.seq_len > lm.config.max_seq_len:
        raise LmstackError(f"--seq-len {cfg.seq_len} exceeds the model's context {lm.config.max_seq_len}")
    train, tstats = encode_comparisons(tok, comps, cfg.seq_len, cfg.overlong)
    stats.update(tstats)
    if not train:
        raise LmstackError(f"reward: no comparison fits --seq-len {cfg.seq_len} ({_fmt_stats(stats)})")
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
        print(f"reward: {len(train)} prompts, {sum(len(c.pairs) for c in train)} comparisons ({_fmt_stats(stats)}); "
              f"held out {sum(len(c.pairs) for c in val)} pairs")
        for b in stats["bad"][:5]:
            print(f"  skipped {b}")

    backbone = lm.model
    params = None
    if cfg.lora:
        from lmstack.train.sft import apply_lora
        backbone = apply_lora(backbone, cfg)
    net = RewardNet(backbone, lm.config.d_model)
    if cfg.lora:
        params = [p for p in net.parameters() if p.requires_grad]
    run = start_run(cfg, net, info, "reward", {"parent": cfg.model, "data": data, "data_stats": stats,
                                                "subset": cfg.subset, "lora": cfg.lora}, params=params)
    pad = tok.pad_id if tok.pad_id is not None else 0
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    val_metrics, sampled_metrics = {}, {}
    for step in range(cfg.steps):
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
        updated, gnorm = optimizer_step(run, step, loss_v, lr, params)
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

    rm = RewardModel(net, tok)
    norm = {}
    if cfg.normalize:
        # Normalise on answers the SFT policy itself writes, so that 0 means "as good as SFT" and one unit is
        # the spread of SFT's answers (Llama 2 thresholds and PPO's beta then mean the same for every RM).
        prompts = [c.prompt for c in comps]
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
    return summary


def _sampled_data(cfg: RewardConfig, data: list[str], info) -> tuple[list[str], list[str]]:
    """Rankings of the policy's own samples for train prompts (added to the data) and test prompts (held out)."""
    from lmstack.data.records import write_jsonl
    from lmstack.train.prefs import load_prompts, suite_judge

    suite = suite_dir(cfg)
    panel = suite_judge(suite)
    suite_cfg = RewardConfig(**{**cfg.__dict__, "data": []})
    paths, out = {}, Path(cfg.out)
    for split, n in (("train", cfg.sample_prompts), ("test", max(1, cfg.sample_prompts // 4))):
        recs, _ = load_prompts(suite_cfg, split=split)
        pick = np.random.default_rng([cfg.seed, len(split)]).permutation(len(recs))[:n]
        ranks, st = sample_rankings(cfg.model, [recs[i] for i in pick], cfg.sample_rankings, panel,
                                    cfg.sample_max_new_tokens, cfg.seed, info.device, split)
        paths[split] = out / f"sampled_rankings_{split}.jsonl"
        if info.main:
            write_jsonl(paths[split], ranks)
            if not cfg.quiet:
                print(f"reward: {len(ranks)} rankings of {cfg.sample_rankings} policy samples on {split} prompts "
                      f"({st['one_distinct_answer']} prompts with one distinct answer, {st['dropped_overlong']} too long)")
        dist.barrier(info)
    return data + [str(paths["train"])], [str(paths["test"])]


# ---- rewards for the stages that consume them (PPO, GRPO, rejection sampling) --------------------------------------

def exact_match(record: dict, text: str) -> float:
    """A rule-based verifier: 1 if the answer is the record's target (the last number for numeric targets,
    as on the suite's arithmetic cluster; normalised exact match otherwise), else 0."""
    from lmstack.text import last_number, normalize

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
        from lmstack.train.prefs import suite_judge

        judge = suite_judge(suite)[0]  # the panel's annotator without length bias
        return lambda rec, text, ids: judge.score(rec, text)
    raise LmstackError(f"--reward-rule {spec!r}: expected exact_match, annotator or token:ID")


def load_rewards(reward_model: str = "", safety_reward_model: str = "", threshold: float = -1.0,
                 rule: str = "", device="cpu", suite: Path | None = None, policy_tokenizer=None) -> Rewards:
    """Rewards from command-line options. A reward model with another tokenizer than the policy's is fine:
    answers are passed as text and re-tokenised (reported once)."""
    if rule:
        if reward_model or safety_reward_model:
            raise LmstackError("give either --reward-rule or reward models, not both")
        return Rewards(rule=rule_reward(rule, suite))
    help_rm = load_reward_model(reward_model, device) if reward_model else None
    safe_rm = load_reward_model(safety_reward_model, device) if safety_reward_model else None
    for name, rm in (("reward model", help_rm), ("safety reward model", safe_rm)):
        if rm is not None and policy_tokenizer is not None and not same_tokenizer(rm.tokenizer, policy_tokenizer):
            print(f"note: the {name} has a different tokenizer from the policy; answers are re-tokenised as text")
    return Rewards(help_rm, safe_rm, threshold)


def same_tokenizer(a, b) -> bool:
    try:
        return a.backend.get_vocab() == b.backend.get_vocab()
    except AttributeError:
        return a is b
