"""FLAN's evaluation protocol (Wei et al. 2022) on task clusters.

    lmstack flan --hold-out nli --out runs/flan

Instruction-tune on every cluster but one, evaluate zero-shot on the held-out cluster's tasks (never
seen in any template), by rank classification over the options' log-likelihoods (FLAN's method) and
by exact match of generated answers. The base model is evaluated the same way, zero-shot and
few-shot. Two studies follow: FLAN's instruction ablation (train with instructions / dataset names /
no instruction, evaluate with instructions or dataset names) and the number of training clusters.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmstack.data.builtin import CLUSTERS
from lmstack.data.defaults import builtin_token_data
from lmstack.data.records import read_instruction_records, write_jsonl
from lmstack.errors import LmstackError
from lmstack.infer.engine import generate
from lmstack.infer.logprobs import loglikelihood
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load
from lmstack.text import normalize
from lmstack.train import pretrain, sft
from lmstack.train.lora import LoraOptions, lora_options
from lmstack.train.recipe import Result


@dataclass
class FlanConfig(LoraOptions):
    out: str = "runs/flan"  #: run folder: base/, sft/<run>/model, flan_report.md, flan_results.json
    base: str = ""  #: pretrained checkpoint (default: pretrain one on the suite)
    suite: str = ""  #: built-in suite folder (default: build one into <out>/data)
    suite_size: str = "tiny"  #: size of the suite built when --suite is not given: tiny, small, medium, large or e.g. 2MB
    hold_out: str = "nli"  #: the cluster kept out of training and evaluated zero-shot
    clusters: list[str] = field(default_factory=list)  #: training clusters (default: all but the held-out one)
    steps: int = 300  #: SFT steps of the main tuning run
    micro_batch: int = 16  #: SFT sequences per step
    lr: float = 2e-3  #: SFT peak learning rate
    seq_len: int = 256  #: tokens per sequence (pretraining and SFT)
    pretrain_steps: int = 800  #: steps of the base model pretrained when --base is not given
    pretrain_preset: str = "llama-mini"  #: model preset of that base model
    eval_items: int = 60  #: test items per held-out task
    few_shot: int = 3  #: examples in the base model's few-shot prompts
    max_new_tokens: int = 12  #: length of generated answers (exact match)
    ablation: bool = True  #: also tune with dataset names / no instructions (FLAN's instruction ablation)
    ablation_steps: int = 0  #: SFT steps of the ablation / cluster-study runs (0: --steps)
    cluster_study: bool = True  #: also tune on 1, 2, 4, ... clusters (accuracy against the number of clusters)
    safety_repeat: int = 0  #: add the suite's safety demonstrations this many times to every tuned mixture
    lora: bool = False  #: tune with LoRA adapters (peft) instead of every weight, e.g. for a real model on a CPU
    seed: int = 0  #: seed of the data, the runs and the evaluation samples
    quiet: bool = True  #: no progress messages from the nested pretraining and SFT runs
    resume: bool = False  #: a tuning run that was killed continues from its last checkpoint
    ckpt_interval: int = 0  #: SFT checkpoint interval (0: only the final model)
    bars: bool = False  #: transient progress bars (how lmstack run displays a stage)


def read_records(suite: Path, split: str, clusters=None, style: str | None = "instruction") -> list[dict]:
    recs = read_instruction_records(suite / "tasks" / f"{split}.jsonl")
    return [r for r in recs if (clusters is None or r["cluster"] in clusters) and (style is None or r["style"] == style)]


def _user(rec: dict) -> str:
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def contexts(lm, recs: list[dict], fmt: str, shots: list[dict] | None = None) -> list[str]:
    """Prompt text per record: the chat template (instruction-tuned models) or plain text (base models),
    with `shots` as in-context examples for few-shot."""
    out = []
    for r in recs:
        if fmt == "chat":
            msgs = []
            for s in shots or []:
                msgs += [{"role": "user", "content": _user(s)}, {"role": "assistant", "content": s["target"]}]
            msgs.append({"role": "user", "content": _user(r)})
            out.append(lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True))
        else:
            demo = "".join(f"{_user(s)}\nAnswer: {s['target']}\n\n" for s in shots or [])
            out.append(f"{demo}{_user(r)}\nAnswer:")
    return out


def evaluate_records(lm, recs: list[dict], fmt: str, shots_pool: list[dict] | None = None, k: int = 0,
                     max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Per-task accuracy by rank classification and by exact match; with k > 0, k random shots from the
    pool of the same task (never the item itself)."""
    rng = random.Random(seed)
    by_task = defaultdict(list)
    for r in shots_pool or []:
        by_task[r["task"]].append(r)
    ctxs = []
    for r in recs:
        pool = [s for s in by_task.get(r["task"], []) if s["id"] != r["id"]]
        shots = rng.sample(pool, min(k, len(pool))) if k else None
        ctxs.append(contexts(lm, [r], fmt, shots)[0])
    sep = "" if fmt == "chat" else " "
    requests, owners = [], []
    for i, (r, c) in enumerate(zip(recs, ctxs)):
        for ch in r["choices"] or []:
            requests.append((c, sep + ch))
            owners.append(i)
    lls = loglikelihood(lm.model, lm.tokenizer, requests) if requests else []
    scores = defaultdict(list)
    for i, res in zip(owners, lls):
        scores[i].append(res.logprob)
    stop = ["\n"] if fmt != "chat" else []
    sp = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop=stop)
    room = lm.config.max_seq_len - max_new_tokens
    # Long few-shot prompts keep their rightmost tokens (the question), as lm-evaluation-harness does.
    gens = generate(lm.model, [lm.tokenizer.encode(c)[-room:] for c in ctxs], sp, lm.tokenizer)
    per_task = defaultdict(lambda: {"n": 0, "rank_correct": 0, "em_correct": 0, "n_choice": 0})
    items = []
    for i, (r, g) in enumerate(zip(recs, gens)):
        t = per_task[r["task"]]
        t["n"] += 1
        pred = None
        if r["choices"]:
            t["n_choice"] += 1
            pred = r["choices"][max(range(len(scores[i])), key=lambda j: scores[i][j])]
            t["rank_correct"] += pred == r["target"]
        em = normalize(g.text) == normalize(r["target"])
        t["em_correct"] += em
        items.append({"id": r["id"], "task": r["task"], "rank_pred": pred, "generated": g.text, "target": r["target"],
                      "rank_correct": pred == r["target"] if pred is not None else None, "em_correct": em})
    tasks = {}
    for name, t in per_task.items():
        tasks[name] = {"n": t["n"], "rank_acc": t["rank_correct"] / t["n_choice"] if t["n_choice"] else None,
                       "em_acc": t["em_correct"] / t["n"]}
    rank = [v["rank_acc"] for v in tasks.values() if v["rank_acc"] is not None]
    return {"tasks": tasks, "rank_acc": sum(rank) / len(rank) if rank else None,
            "em_acc": sum(v["em_acc"] for v in tasks.values()) / max(len(tasks), 1), "items": items}


def _sample(recs: list[dict], per_task: int, seed: int) -> list[dict]:
    by = defaultdict(list)
    for r in recs:
        by[r["task"]].append(r)
    rng = random.Random(seed)
    out = []
    for t in sorted(by):
        items = by[t]
        out += rng.sample(items, min(per_task, len(items)))
    return out


def run(cfg: FlanConfig) -> Result:
    """Base model (pretrained first when --base is empty), instruction tuning without the held-out cluster,
    zero-shot evaluation on it, the ablation and cluster studies; the report in <out>/flan_report.md."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.hold_out not in CLUSTERS:
        raise LmstackError(f"--hold-out {cfg.hold_out!r}: not a cluster of the suite ({', '.join(CLUSTERS)})")
    suite = Path(cfg.suite) if cfg.suite else None
    base = cfg.base
    if not suite or not base:
        tokens = builtin_token_data(out / "data", size=cfg.suite_size, seed=cfg.seed, vocab_size=2048)
        suite = suite or out / "data" / "suite"
        if not base:
            base = str(out / "base" / "model")
            if not Path(base, "config.json").exists():
                _say(cfg, f"pretraining a base model ({cfg.pretrain_preset}, {cfg.pretrain_steps} steps)")
                pretrain.run(pretrain.PretrainConfig(out=str(out / "base"), data=[str(tokens)], preset=cfg.pretrain_preset,
                                        seq_len=cfg.seq_len, micro_batch=16, steps=cfg.pretrain_steps, lr=3e-3,
                                        warmup=50, eval_interval=cfg.pretrain_steps, ckpt_interval=0,
                                        seed=cfg.seed, quiet=cfg.quiet, bars=cfg.bars))
    train_clusters = cfg.clusters or [c for c in CLUSTERS if c != cfg.hold_out]
    if cfg.hold_out in train_clusters:
        raise LmstackError(f"--clusters includes the held-out cluster {cfg.hold_out!r}")
    held = {s: _sample(read_records(suite, "test", [cfg.hold_out], s), cfg.eval_items, cfg.seed)
            for s in ("instruction", "dataset_name", "no_instruction")}
    shots_pool = read_records(suite, "train", [cfg.hold_out], "instruction")
    if not held["instruction"]:
        raise LmstackError(f"{suite}: no test items for cluster {cfg.hold_out!r}")

    def tune(tag: str, clusters: list[str], style: str) -> str:
        path = out / "sft" / tag
        if (path / "model" / "config.json").exists():
            return str(path / "model")
        recs = read_records(suite, "train", clusters, style)
        # Llama 2 collects safety demonstrations on purpose: without them refusals are ~1% of the mixture.
        recs += read_instruction_records(suite / "tasks" / "safety_train.jsonl") * cfg.safety_repeat
        steps = cfg.steps if tag == "instructions" else (cfg.ablation_steps or cfg.steps)
        data = out / "sft_data" / f"{tag}.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(data, [{"messages": r["messages"]} for r in recs])
        _say(cfg, f"instruction tuning '{tag}': {len(recs)} examples from {len(clusters)} clusters ({style})")
        sft.run(sft.SFTConfig(out=str(path), model=base, data=[str(data)], seq_len=cfg.seq_len,
                              micro_batch=cfg.micro_batch, steps=steps, lr=cfg.lr, warmup=max(1, steps // 20),
                              eval_interval=0, ckpt_interval=cfg.ckpt_interval, resume=cfg.resume, seed=cfg.seed,
                              quiet=cfg.quiet, bars=cfg.bars, **lora_options(cfg)))
        return str(path / "model")

    def ev(model_path: str, style: str, fmt: str, k: int = 0) -> dict:
        lm = load(model_path)
        return evaluate_records(lm, held[style], fmt, shots_pool, k, cfg.max_new_tokens, cfg.seed)

    results: dict = {"config": asdict(cfg), "base": base, "suite": str(suite), "train_clusters": train_clusters}
    _say(cfg, f"evaluating the base model on held-out '{cfg.hold_out}' (zero-shot and {cfg.few_shot}-shot)")
    results["base_zero_shot"] = ev(base, "instruction", "plain")
    results["base_few_shot"] = ev(base, "instruction", "plain", cfg.few_shot)
    main = tune("instructions", train_clusters, "instruction")
    results["flan_zero_shot"] = ev(main, "instruction", "chat")
    if cfg.ablation:
        name = tune("dataset_name", train_clusters, "dataset_name")
        none = tune("no_instruction", train_clusters, "no_instruction")
        results["ablation"] = {
            "instructions -> instructions": results["flan_zero_shot"],
            "dataset name -> instructions": ev(name, "instruction", "chat"),
            "dataset name -> dataset name": ev(name, "dataset_name", "chat"),
            "no instruction -> no instruction": ev(none, "no_instruction", "chat"),
        }
    if cfg.cluster_study:
        study = {}
        n = 1
        while n < len(train_clusters):
            study[n] = ev(tune(f"clusters_{n}", train_clusters[:n], "instruction"), "instruction", "chat")
            n *= 2
        study[len(train_clusters)] = results["flan_zero_shot"]
        results["cluster_study"] = study
    slim = _strip_items(results)
    (out / "flan_results.json").write_text(json.dumps(slim, indent=2))
    with open(out / "flan_items.jsonl", "w") as f:
        for key in ("base_zero_shot", "base_few_shot", "flan_zero_shot"):
            for it in results[key]["items"]:
                f.write(json.dumps({"run": key, **it}, ensure_ascii=False) + "\n")
    report = write_report(slim, out)
    artifacts = {"model": main, "base": base, "report": str(report), "results": str(out / "flan_results.json"),
                 "items": str(out / "flan_items.jsonl")}
    if (out / "flan_clusters.png").exists() and "cluster_study" in slim:
        artifacts["clusters_plot"] = str(out / "flan_clusters.png")
    return Result(slim, artifacts)


def _strip_items(d):
    if isinstance(d, dict):
        return {str(k): _strip_items(v) for k, v in d.items() if k != "items"}
    return d


def _say(cfg: FlanConfig, msg):
    if not cfg.bars:  # inside `lmstack run` the stage's own line says it
        print(f"flan: {msg}", flush=True)


def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


def write_report(r: dict, out: Path) -> Path:
    held = r["config"]["hold_out"]
    lines = [f"# FLAN protocol: held-out cluster `{held}`", "",
             f"Instruction-tuned on {len(r['train_clusters'])} clusters ({', '.join(r['train_clusters'])}); evaluated "
             f"zero-shot on the held-out cluster's test items. Rank classification = the option with the highest "
             f"log-likelihood (FLAN's method); exact match = greedy generation after normalisation.", "",
             "| model | rank-classification acc | exact-match acc |", "| --- | --- | --- |"]
    for key, name in (("base_zero_shot", "base, zero-shot"), ("base_few_shot",
                      f"base, {r['config']['few_shot']}-shot"), ("flan_zero_shot", "instruction-tuned, zero-shot")):
        lines.append(f"| {name} | {_pct(r[key]['rank_acc'])} | {_pct(r[key]['em_acc'])} |")
    lines += ["", "Per task:", "", "| task | base 0-shot | base few-shot | tuned 0-shot |", "| --- | --- | --- | --- |"]
    for t in r["flan_zero_shot"]["tasks"]:
        lines.append(f"| {t} | {_pct(r['base_zero_shot']['tasks'][t]['rank_acc'])} | "
                     f"{_pct(r['base_few_shot']['tasks'][t]['rank_acc'])} | "
                     f"{_pct(r['flan_zero_shot']['tasks'][t]['rank_acc'])} |")
    if "ablation" in r:
        paper = {"instructions -> instructions": 55.2, "dataset name -> instructions": 46.6,
                 "dataset name -> dataset name": 47.0, "no instruction -> no instruction": 37.3}
        lines += ["", "## Instruction ablation (FLAN Figure 8 shape)", "",
                  "| fine-tuned with -> evaluated with | rank acc (measured) | exact match (measured) | "
                  "FLAN paper, for comparison |", "| --- | --- | --- | --- |"]
        for k, v in r["ablation"].items():
            lines.append(f"| {k} | {_pct(v['rank_acc'])} | {_pct(v['em_acc'])} | {paper[k]} (paper) |")
    if "cluster_study" in r:
        lines += ["", "## Number of training clusters", "", "| clusters | rank acc | exact match |",
                  "| --- | --- | --- |"]
        xs = sorted(r["cluster_study"], key=int)
        for k in xs:
            v = r["cluster_study"][k]
            lines.append(f"| {k} | {_pct(v['rank_acc'])} | {_pct(v['em_acc'])} |")
        import matplotlib  # optional heavy dependency, only for the plot

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([int(k) for k in xs], [100 * (r["cluster_study"][k]["rank_acc"] or 0) for k in xs], "o-",
                label="rank classification")
        ax.plot([int(k) for k in xs], [100 * r["cluster_study"][k]["em_acc"] for k in xs], "s--", label="exact match")
        ax.axhline(100 * (r["base_zero_shot"]["rank_acc"] or 0), color="gray", ls=":", label="base, zero-shot")
        ax.set_xlabel("training clusters")
        ax.set_ylabel(f"held-out '{held}' accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "flan_clusters.png", dpi=110)
        plt.close(fig)
        lines += ["", "![clusters](flan_clusters.png)"]
    (out / "flan_report.md").write_text("\n".join(lines) + "\n")
    return out / "flan_report.md"
