"""FLAN's evaluation protocol (Wei et al. 2022) on task clusters.

    lmstack flan --hold-out nli --out runs/flan
    lmstack flan --hold-out nli commonsense --out runs/flan

Instruction-tune on every cluster but the held-out ones (fixed in advance; one tuning run leaves all of
them out), evaluate zero-shot on each held-out cluster's tasks (never seen in any template), by rank
classification over the options' log-likelihoods (FLAN's method) and by exact match of generated
answers. The base model is evaluated the same way, zero-shot and few-shot. Exact match is also measured
on test items of the training clusters (seen tasks, unseen items), where it separates a model that
learned the task format from one that did not. Two studies follow: FLAN's instruction ablation
(`ABLATION`: tuned with instructions, with dataset names or with no template, evaluated as in the
paper's Figure 8) and the number of training clusters.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmstack.data.builtin import CLUSTERS
from lmstack.data.builtin.applications import rag_demonstrations, tool_demonstrations
from lmstack.data.defaults import builtin_token_data
from lmstack.data.records import read_instruction_records, write_jsonl
from lmstack.data.retrieval import Retriever
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
    #: the held-out cluster(s), fixed in advance: kept out of every tuning run and evaluated zero-shot (one
    #: name, or several: --hold-out nli commonsense; in YAML `hold_out: nli` or `hold_out: [nli, commonsense]`)
    hold_out: str | list[str] = "nli"
    clusters: list[str] = field(default_factory=list)  #: training clusters (default: all but the held-out ones)
    steps: int = 300  #: SFT steps of the main tuning run
    micro_batch: int = 16  #: SFT sequences per step
    lr: float = 2e-3  #: SFT peak learning rate
    seq_len: int = 256  #: tokens per sequence (pretraining and SFT)
    pretrain_steps: int = 800  #: steps of the base model pretrained when --base is not given
    pretrain_preset: str = "llama-mini"  #: model preset of that base model
    eval_items: int = 60  #: test items per held-out task
    few_shot: int = 3  #: examples in the base model's few-shot prompts
    max_new_tokens: int = 12  #: length of generated answers (exact match)
    seen_eval: bool = True  #: also evaluate base (zero-shot) and tuned model on test items of the training clusters
    seen_items: int = 10  #: test items per task of each training cluster in that evaluation (--seen-eval)
    ablation: bool = True  #: also tune with dataset names / no template (FLAN's instruction ablation, Figure 8)
    ablation_steps: int = 0  #: SFT steps of the ablation / cluster-study runs (0: --steps)
    cluster_study: bool = True  #: also tune on 1, 2, 4, ... clusters (accuracy against the number of clusters)
    safety_repeat: int = 0  #: add the suite's safety demonstrations this many times to every tuned mixture
    #: add calculator demonstrations (the training arithmetic items answered through the calculator tool) this many
    #: times to every tuned mixture that trains on the arithmetic cluster
    tool_repeat: int = 0
    #: add retrieval demonstrations (training closed-book questions with the passages `rag_index` finds for them)
    #: this many times to every tuned mixture that trains on the closed_book_qa cluster
    rag_repeat: int = 0
    rag_index: str = ""  #: BM25 index folder of the retrieval demonstrations (`lmstack eval index`)
    rag_k: int = 2  #: passages per retrieval demonstration
    lora: bool = False  #: tune with LoRA adapters (peft) instead of every weight, e.g. for a real model on a CPU
    seed: int = 0  #: seed of the data, the runs and the evaluation samples
    quiet: bool = True  #: no progress messages from the nested pretraining and SFT runs
    resume: bool = False  #: a tuning run that was killed continues from its last checkpoint
    ckpt_interval: int = 0  #: SFT checkpoint interval (0: only the final model)
    bars: bool = False  #: transient progress bars (how lmstack run displays a stage)
    precision: str = "auto"  #: of the pretraining and tuning runs: auto (bf16 where the hardware runs it), bf16, fp32


# FLAN's instruction ablation (Wei et al., "Finetuned Language Models Are Zero-Shot Learners", Section 4.3,
# Figure 8): a row per (finetuning format -> evaluation format), as record styles of the suite. The
# no-template model (inputs and outputs only) is evaluated with instructions, since its own format names no
# task and so cannot pose an unseen one; the dataset-name model with instructions and with dataset names.
ABLATION = {
    "instructions -> instructions": ("instruction", "instruction"),
    "dataset name -> instructions": ("dataset_name", "instruction"),
    "dataset name -> dataset name": ("dataset_name", "dataset_name"),
    "no template -> instructions": ("no_instruction", "instruction"),
}
# FLAN 137B's average zero-shot accuracy on the held-out clusters in Figure 8, for comparison (not measured).
ABLATION_PAPER = {"instructions -> instructions": 55.2, "dataset name -> instructions": 46.6,
                  "dataset name -> dataset name": 47.0, "no template -> instructions": 37.3}
# The tuning run (sft/<tag>) of each finetuning format.
_TUNE_TAG = {"instruction": "instructions", "dataset_name": "dataset_name", "no_instruction": "no_instruction"}


def held_out(cfg: FlanConfig) -> list[str]:
    """The held-out clusters of `cfg` as a list, in the order given (a single name is one cluster)."""
    names = [cfg.hold_out] if isinstance(cfg.hold_out, str) else cfg.hold_out
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) for c in names):
        raise LmstackError(f"--hold-out {cfg.hold_out!r}: expected a cluster name or a list of them")
    bad = [c for c in names if c not in CLUSTERS]
    if bad:
        raise LmstackError(f"--hold-out {', '.join(map(repr, bad))}: not a cluster of the suite ({', '.join(CLUSTERS)})")
    return list(dict.fromkeys(names))


def read_records(suite: Path, split: str, clusters=None, style: str | None = "instruction") -> list[dict]:
    recs = read_instruction_records(suite / "tasks" / f"{split}.jsonl")
    return [r for r in recs if (clusters is None or r["cluster"] in clusters) and (style is None or r["style"] == style)]


def _user(rec: dict) -> str:
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


def contexts(lm, recs: list[dict], fmt: str, shots: list[dict] | None = None) -> list[str]:
    """Prompt text per record: the chat template (instruction-tuned models) or plain text (base models),
    with `shots` as in-context examples for few-shot. A rendered chat prompt keeps the BOS its template
    writes, if any; `Tokenizer.encode` (scoring and generation alike) adds no second one."""
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


def pooled(items: list[dict]) -> dict:
    """Accuracies pooled over items, so each item counts once whatever its task or cluster: rank_acc over the
    n items with options, em_acc over all n_em items (the standard error of p over n is sqrt(p(1-p)/n))."""
    ranked = [it["rank_correct"] for it in items if it["rank_correct"] is not None]
    return {"rank_acc": sum(ranked) / len(ranked) if ranked else None,
            "em_acc": sum(it["em_correct"] for it in items) / len(items) if items else None,
            "n": len(ranked), "n_em": len(items)}


def by_cluster(evals: dict[str, dict], clusters: list[str]) -> dict:
    """{cluster: {evaluation: pooled accuracies over that cluster's items}} for `evaluate_records` results."""
    return {c: {k: pooled([it for it in v["items"] if it["cluster"] == c]) for k, v in evals.items()}
            for c in clusters}


def evaluate_records(lm, recs: list[dict], fmt: str, shots_pool: list[dict] | None = None, k: int = 0,
                     max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Accuracy by rank classification and by exact match, pooled over items (`pooled`) and per task;
    with k > 0, k random shots from the pool of the same task (never the item itself)."""
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
    items = []
    for i, (r, g) in enumerate(zip(recs, gens)):
        pred = None
        if r["choices"]:
            pred = r["choices"][max(range(len(scores[i])), key=lambda j: scores[i][j])]
        items.append({"id": r["id"], "cluster": r.get("cluster"), "task": r["task"], "rank_pred": pred,
                      "generated": g.text, "target": r["target"],
                      "rank_correct": pred == r["target"] if pred is not None else None,
                      "em_correct": normalize(g.text) == normalize(r["target"])})
    by_task = defaultdict(list)
    for it in items:
        by_task[it["task"]].append(it)
    tasks = {name: pooled(its) for name, its in by_task.items()}  # some tasks give options to some items only
    # Pooled over items, not a mean of the tasks' accuracies: each item counts once, and n gives the error bar.
    return {**pooled(items), "tasks": tasks, "items": items}


def probe_items(recs: list[dict]) -> list[dict]:
    """The records the knowledge probe can ask: those with options and a `meta.statement`."""
    return [r for r in recs if (r.get("meta") or {}).get("statement") and r["choices"]]


def knowledge_probe(lm, items: list[dict]) -> dict:
    """Does the model know the answers at all, whatever the question's format? Rank classification of the options
    of `probe_items`, each asked as its `meta.statement`, the question in the pretraining corpus's own phrasing
    (e.g. "Bamepi has a bad toothache. So Bamepi decides to" + " visit a dentist"), as plain text."""
    requests = [(r["meta"]["statement"], " " + ch) for r in items for ch in r["choices"]]
    lls = iter(loglikelihood(lm.model, lm.tokenizer, requests))
    right = 0
    for r in items:
        scores = [next(lls).logprob for _ in r["choices"]]
        right += r["choices"][max(range(len(scores)), key=scores.__getitem__)] == r["target"]
    return {"acc": right / len(items), "n": len(items), "tasks": sorted({r["task"] for r in items})}


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
    """Base model (pretrained first when --base is empty), instruction tuning without the held-out clusters,
    zero-shot evaluation on each of them, exact match on the training clusters' test items, the ablation and
    cluster studies; the report in <out>/flan_report.md."""
    hold = held_out(cfg)
    train_clusters = cfg.clusters or [c for c in CLUSTERS if c not in hold]
    if set(hold) & set(train_clusters):
        raise LmstackError(f"--clusters includes the held-out cluster(s) {sorted(set(hold) & set(train_clusters))}")
    if not train_clusters:
        raise LmstackError(f"--hold-out {' '.join(hold)}: no cluster is left to train on")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
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
                                        seed=cfg.seed, quiet=cfg.quiet, bars=cfg.bars, precision=cfg.precision))
    eval_styles = {"instruction"} | ({e for _, e in ABLATION.values()} if cfg.ablation else set())
    # Each cluster's sample is drawn on its own, so it is the same whichever other clusters are held out.
    held = {s: [r for c in hold for r in _sample(read_records(suite, "test", [c], s), cfg.eval_items, cfg.seed)]
            for s in sorted(eval_styles)}
    shots_pool = read_records(suite, "train", hold, "instruction")
    for c in hold:
        if not any(r["cluster"] == c for r in held["instruction"]):
            raise LmstackError(f"{suite}: no test items for cluster {c!r}")
    # Seen tasks, unseen items: the test split of the training clusters, instruction style.
    seen = [r for c in train_clusters for r in _sample(read_records(suite, "test", [c]), cfg.seen_items, cfg.seed)
            ] if cfg.seen_eval else []
    if cfg.seen_eval and not seen:
        raise LmstackError(f"{suite}: no test items of the training clusters to evaluate (--seen-items {cfg.seen_items})")

    def applications(clusters: list[str]) -> list[dict]:
        """The tool-use and retrieval demonstrations of a mixture's clusters (instruction style)."""
        extra = []
        if cfg.tool_repeat and "arithmetic" in clusters:
            extra += tool_demonstrations(read_records(suite, "train", ["arithmetic"])) * cfg.tool_repeat
        if cfg.rag_repeat and "closed_book_qa" in clusters:
            if not cfg.rag_index:
                raise LmstackError("flan: rag_repeat needs rag_index (an index folder built by `lmstack eval index`)")
            extra += rag_demonstrations(read_records(suite, "train", ["closed_book_qa"]), Retriever.load(cfg.rag_index),
                                        cfg.rag_k) * cfg.rag_repeat
        return extra

    def tune(tag: str, clusters: list[str], style: str) -> str:
        path = out / "sft" / tag
        if (path / "model" / "config.json").exists():
            return str(path / "model")
        recs = read_records(suite, "train", clusters, style)
        # Llama 2 collects safety demonstrations on purpose: without them refusals are ~1% of the mixture.
        recs += read_instruction_records(suite / "tasks" / "safety_train.jsonl") * cfg.safety_repeat
        recs += applications(clusters)
        steps = cfg.steps if tag == "instructions" else (cfg.ablation_steps or cfg.steps)
        data = out / "sft_data" / f"{tag}.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(data, [{"messages": r["messages"], **({"tools": r["tools"]} if r.get("tools") else {})}
                           for r in recs])
        _say(cfg, f"instruction tuning '{tag}': {len(recs)} examples from {len(clusters)} clusters ({style})")
        sft.run(sft.SFTConfig(out=str(path), model=base, data=[str(data)], seq_len=cfg.seq_len,
                              micro_batch=cfg.micro_batch, steps=steps, lr=cfg.lr, warmup=max(1, steps // 20),
                              eval_interval=0, ckpt_interval=cfg.ckpt_interval, resume=cfg.resume, seed=cfg.seed,
                              quiet=cfg.quiet, bars=cfg.bars, precision=cfg.precision, **lora_options(cfg)))
        return str(path / "model")

    def ev(model_path: str, style: str, fmt: str, k: int = 0, recs: list[dict] | None = None) -> dict:
        lm = load(model_path)
        recs = held[style] if recs is None else recs
        return evaluate_records(lm, recs, fmt, shots_pool, k, cfg.max_new_tokens, cfg.seed)

    results: dict = {"config": asdict(cfg), "base": base, "suite": str(suite), "hold_out": hold,
                     "train_clusters": train_clusters}
    _say(cfg, f"evaluating the base model on held-out {', '.join(hold)} (zero-shot and {cfg.few_shot}-shot)")
    results["base_zero_shot"] = ev(base, "instruction", "plain")
    results["base_few_shot"] = ev(base, "instruction", "plain", cfg.few_shot)
    main = tune("instructions", train_clusters, "instruction")
    results["flan_zero_shot"] = ev(main, "instruction", "chat")
    results["clusters"] = by_cluster({k: results[k] for k in _MAIN}, hold)
    probed = probe_items(held["instruction"])
    if probed:
        probe = {k: knowledge_probe(load(m), probed) for k, m in (("base", base), ("tuned", main))}
        # The same items asked as the task asks them (rank classification above), for the comparison.
        ids = {r["id"] for r in probed}
        asked = {k: pooled([it for it in results[k]["items"] if it["id"] in ids])["rank_acc"]
                 for k in ("base_zero_shot", "flan_zero_shot")}
        results["knowledge_probe"] = {"tasks": probe["base"]["tasks"], "n": probe["base"]["n"],
                                      "base_stated": probe["base"]["acc"], "tuned_stated": probe["tuned"]["acc"],
                                      "base_asked": asked["base_zero_shot"], "tuned_asked": asked["flan_zero_shot"]}
    if cfg.seen_eval:
        _say(cfg, f"exact match on {len(seen)} test items of the {len(train_clusters)} training clusters")
        sc = {"base_zero_shot": ev(base, "instruction", "plain", recs=seen),
              "flan_zero_shot": ev(main, "instruction", "chat", recs=seen)}
        results["seen_clusters"] = {**sc, "clusters": by_cluster(sc, train_clusters)}
    if cfg.ablation:
        done = {("instruction", "instruction"): results["flan_zero_shot"]}  # FLAN itself: evaluated above
        results["ablation"] = {}
        for label, (tuned, evaluated) in ABLATION.items():
            if (tuned, evaluated) not in done:
                done[tuned, evaluated] = ev(tune(_TUNE_TAG[tuned], train_clusters, tuned), evaluated, "chat")
            results["ablation"][label] = {**done[tuned, evaluated], "finetuned_with": tuned,
                                          "evaluated_with": evaluated}
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
    _write_items(out / "flan_items.jsonl", results)
    report = write_report(slim, out)
    artifacts = {"model": main, "base": base, "report": str(report), "results": str(out / "flan_results.json"),
                 "items": str(out / "flan_items.jsonl")}
    if "seen_clusters" in results:
        _write_items(out / "flan_seen_items.jsonl", results["seen_clusters"])
        artifacts["seen_items"] = str(out / "flan_seen_items.jsonl")
    if (out / "flan_clusters.png").exists() and "cluster_study" in slim:
        artifacts["clusters_plot"] = str(out / "flan_clusters.png")
    return Result(slim, artifacts)


_MAIN = ("base_zero_shot", "base_few_shot", "flan_zero_shot")


def _write_items(path: Path, evals: dict) -> None:
    """One line per evaluated item of each evaluation in `evals` that has items, tagged with its key."""
    with open(path, "w") as f:
        for key in _MAIN:
            for it in evals.get(key, {}).get("items", []):
                f.write(json.dumps({"run": key, **it}, ensure_ascii=False) + "\n")


def _strip_items(d):
    if isinstance(d, dict):
        return {str(k): _strip_items(v) for k, v in d.items() if k != "items"}
    return d


def _say(cfg: FlanConfig, msg):
    if not cfg.bars:  # inside `lmstack run` the stage's own line says it
        print(f"flan: {msg}", flush=True)


def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


def _pct_se(v: dict) -> str:
    """Rank accuracy ± its standard error over the n items, in percent."""
    p, n = v.get("rank_acc"), v.get("n")
    if p is None or not n:
        return _pct(p)
    return f"{100 * p:.1f} ± {100 * math.sqrt(p * (1 - p) / n):.1f}"


def _n_items(v: dict) -> str:
    n, n_em = v.get("n"), v.get("n_em")
    return str(n_em) if n == n_em else f"{n} ranked / {n_em}"


def _both(v: dict) -> str:
    return f"{_pct(v['rank_acc'])} / {_pct(v['em_acc'])}"


def probe_text(k: dict) -> str:
    """The knowledge probe's sentence for the FLAN report and the course's card."""
    return (f"Knowledge probe ({', '.join(k['tasks'])}, {k['n']} held-out items, rank classification): stated the way "
            f"the pretraining corpus states such facts (\"... So X decides to\"), the base model picks the right "
            f"option on {_pct(k['base_stated'])}% and the tuned model on {_pct(k['tuned_stated'])}%; asked as the task "
            f"asks, {_pct(k['base_asked'])}% base zero-shot and {_pct(k['tuned_asked'])}% tuned. A held-out gain needs "
            "the tuned model to carry what pretraining stored over to the question's format.")


def write_report(r: dict, out: Path) -> Path:
    hold = r.get("hold_out") or [r["config"]["hold_out"]]
    names = ", ".join(f"`{c}`" for c in hold)
    k_shot = f"{r['config']['few_shot']}-shot"
    main = (("base_zero_shot", "base, zero-shot"), ("base_few_shot", f"base, {k_shot}"),
            ("flan_zero_shot", "instruction-tuned, zero-shot"))
    lines = [f"# FLAN protocol: held-out cluster{'s' if len(hold) > 1 else ''} {names}", "",
             f"Instruction-tuned on {len(r['train_clusters'])} clusters ({', '.join(r['train_clusters'])}); evaluated "
             f"zero-shot on the held-out cluster{'s' if len(hold) > 1 else ''}' test items. Rank classification = the "
             f"option with the highest log-likelihood (FLAN's method); exact match = greedy generation after "
             f"normalisation. Accuracies are pooled over items (each item counts once), ± one standard error.", "",
             "| model | rank-classification acc | exact-match acc | items |", "| --- | --- | --- | --- |"]
    for key, name in main:
        v = r[key]
        lines.append(f"| {name} | {_pct_se(v)} | {_pct(v['em_acc'])} | {_n_items(v)} |")
    if len(hold) > 1 and "clusters" in r:
        lines += ["", "Per held-out cluster (rank classification / exact match):", "",
                  f"| cluster | items | base 0-shot | base {k_shot} | tuned 0-shot |", "| --- | --- | --- | --- | --- |"]
        for c, v in r["clusters"].items():
            lines.append(f"| {c} | {_n_items(v['flan_zero_shot'])} | {_both(v['base_zero_shot'])} | "
                         f"{_both(v['base_few_shot'])} | {_both(v['flan_zero_shot'])} |")
    if "knowledge_probe" in r:
        lines += ["", probe_text(r["knowledge_probe"])]
    lines += ["", "Per task (rank classification):", "", "| task | base 0-shot | base few-shot | tuned 0-shot |",
              "| --- | --- | --- | --- |"]
    for t in r["flan_zero_shot"]["tasks"]:
        lines.append(f"| {t} | {_pct(r['base_zero_shot']['tasks'][t]['rank_acc'])} | "
                     f"{_pct(r['base_few_shot']['tasks'][t]['rank_acc'])} | "
                     f"{_pct(r['flan_zero_shot']['tasks'][t]['rank_acc'])} |")
    if "seen_clusters" in r:
        sc = r["seen_clusters"]
        lines += ["", "## Training clusters: seen tasks, unseen test items", "",
                  f"{r['config']['seen_items']} test items per task of each training cluster, posed as in training "
                  "(instructions): the base model zero-shot with plain prompts, the tuned model with its chat "
                  "template. Exact match separates a model that learned a task's answer format from one that did "
                  "not; on the held-out clusters, at a small scale, only rank classification may.", "",
                  "| model | rank-classification acc | exact-match acc | items |", "| --- | --- | --- | --- |"]
        for key, name in (main[0], main[2]):
            v = sc[key]
            lines.append(f"| {name} | {_pct_se(v)} | {_pct(v['em_acc'])} | {_n_items(v)} |")
        lines += ["", "| cluster | items | base 0-shot (rank / exact) | tuned 0-shot (rank / exact) |",
                  "| --- | --- | --- | --- |"]
        for c, v in sc["clusters"].items():
            lines.append(f"| {c} | {_n_items(v['flan_zero_shot'])} | {_both(v['base_zero_shot'])} | "
                         f"{_both(v['flan_zero_shot'])} |")
    if "ablation" in r:
        lines += ["", "## Instruction ablation (FLAN Figure 8 shape)", "",
                  "| fine-tuned with -> evaluated with | rank acc (measured) | exact match (measured) | "
                  "FLAN paper, for comparison |", "| --- | --- | --- | --- |"]
        for k, v in r["ablation"].items():
            paper = ABLATION_PAPER.get(k, "—")
            lines.append(f"| {k} | {_pct(v['rank_acc'])} | {_pct(v['em_acc'])} | {paper} (paper) |")
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
        ax.plot([int(k) for k in xs], [100 * (r["cluster_study"][k]["em_acc"] or 0) for k in xs], "s--",
                label="exact match")
        ax.axhline(100 * (r["base_zero_shot"]["rank_acc"] or 0), color="gray", ls=":", label="base, zero-shot")
        ax.set_xlabel("training clusters")
        ax.set_ylabel(f"held-out {', '.join(hold)} accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "flan_clusters.png", dpi=110)
        plt.close(fig)
        lines += ["", "![clusters](flan_clusters.png)"]
    (out / "flan_report.md").write_text("\n".join(lines) + "\n")
    return out / "flan_report.md"
