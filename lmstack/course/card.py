"""The report card of a `lmstack run` folder: one Markdown file with PNG plots, one section per stage.

    lmstack report runs/tiny-cpu          # any run folder; `lmstack run` writes <run>/report/card.md itself

Every number is read from what the run wrote (stage summaries, metrics.jsonl curves, the evaluate stage's
evaluation.json); figures from papers appear only in columns labelled "(paper)". The card opens with the
checks the course is meant to show, each with its numbers, and says plainly which did not hold.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import torch

from lmstack.course.claims import PAPER_SCALE, Claims, check, pct
from lmstack.data.curves import read_metrics
from lmstack.errors import LmstackError
from lmstack.evaluate.applications import rag_table, tool_table
from lmstack.evaluate.jailbreak import jailbreak_table
from lmstack.evaluate.report import pyplot, read_json, stacked_bars
from lmstack.evaluate.safety import alignment_table
from lmstack.options import from_dict
from lmstack.train.flan import ABLATION_PAPER, probe_text


def _read(path: Path):
    """A JSON file the run wrote, or None when the stage did not run; a corrupt file is an error naming it."""
    return read_json(path) if Path(path).exists() else None


def _num(x, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def _curve(png: Path, panels: list[tuple[str, list[tuple[str, list, list]]]], title: str) -> None:
    """panels: (y label, [(series label, xs, ys)])."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for label, xs, ys in series:
            ax.plot(xs, ys, marker="." if len(xs) < 40 else None, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _series(recs: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _bars(png: Path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str,
          ylim=None) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(groups) * max(1, len(series)) / 2 + 2), 3.4))
    w = 0.8 / max(1, len(series))
    for j, (name, vals) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * w for i in range(len(groups))]
        # None (e.g. the hallucination rate of a model that never answers) is no bar, not a bar at 0.
        pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
        ax.bar([x for x, _ in pts], [v for _, v in pts], w, label=name)
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=15 if len(groups) > 4 else 0)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ---- sections ----------------------------------------------------------------------------------------------------

def _scaling(d: Path, plots: Path, s: dict) -> list[str]:
    r = _read(d / "scaling.json")
    if not r:
        return []
    pts, fit = r["L_of_N"]["points"], r["L_of_N"]["fit"]
    s["scaling"] = {"points": pts, "alpha": fit["alpha"]}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs = [p["non_embedding_params"] for p in pts]
    ax.loglog(xs, [p["val_loss"] for p in pts], "o", label="measured")
    if math.isfinite(fit["scale"]):
        lo, hi = min(xs) * 0.8, max(xs) * 1.25
        grid = [lo * (hi / lo) ** (i / 49) for i in range(50)]
        ax.loglog(grid, [fit["E"] + (fit["scale"] / x) ** fit["alpha"] for x in grid], "-",
                  label=f"fit: {fit['E']:.2f} + (N_c/N)^{fit['alpha']:.3f}")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("Scaling: loss against model size", fontsize=10)
    fig.tight_layout()
    fig.savefig(plots / "scaling.png", dpi=110)
    plt.close(fig)
    cfg = r["config"]
    L = ["## Scaling (Kaplan et al. 2020)", "",
         f"{len(pts)} model sizes ({cfg['layers']} layers, widths {', '.join(str(p['width']) for p in pts)}), each "
         f"trained {cfg['steps']} steps on the same tokens; fitted L(N) = E + (N_c / N)^alpha: alpha_N = "
         f"**{fit['alpha']:.3f}**, E = {fit['E']:.2f} (Kaplan et al. measured alpha_N = 0.076 over 10^3 to 10^9 "
         "parameters without an E term; paper's figure, not measured here).", "",
         "| width | non-embedding parameters | tokens | validation loss |", "| --- | --- | --- | --- |"]
    L += [f"| {p['width']} | {p['non_embedding_params']:,} | {p['tokens']:,} | {p['val_loss']:.4f} |" for p in pts]
    return L + ["", "![scaling](plots/scaling.png)", ""]


def _pretrain(d: Path, plots: Path, s: dict) -> list[str]:
    recs = read_metrics(d / "metrics.jsonl")
    summ = _read(d / "summary.json") or {}
    if not recs:
        return []
    _curve(plots / "pretrain_loss.png", [("loss", [("train", *_series(recs, "loss")), ("validation", *_series(recs, "val_loss"))]),
                                          ("tokens/s", [("tokens/s", *_series(recs, "tokens_per_s"))])],
           "Pretraining: next-token loss and throughput")
    s["pretrain"] = {"val_ppl": summ.get("val_ppl")}
    return ["## Pretraining", "",
            f"{_num(summ.get('params'), ',')} parameters, {summ.get('steps')} steps, {_num(summ.get('tokens'), ',')} "
            f"tokens; final train loss {_num(summ.get('final_loss'))}, validation loss {_num(summ.get('val_loss'))} = "
            f"perplexity **{_num(summ.get('val_ppl'), '.2f')}** (held-out documents of the suite's corpus), "
            f"{_num(summ.get('tokens_per_s'), ',.0f')} tokens/s.", "", "![pretraining](plots/pretrain_loss.png)", ""]


def _flan(d: Path, plots: Path, s: dict) -> list[str]:
    r = _read(d / "flan_results.json")
    if not r:
        return []
    held_list = r.get("hold_out") or [r["config"]["hold_out"]]
    held = ", ".join(held_list)
    rows = [("base, zero-shot", r["base_zero_shot"]), (f"base, {r['config']['few_shot']}-shot", r["base_few_shot"]),
            ("instruction-tuned, zero-shot", r["flan_zero_shot"])]
    _bars(plots / "flan_held_out.png", [n for n, _ in rows],
          {"rank classification": [v["rank_acc"] for _, v in rows], "exact match": [v["em_acc"] for _, v in rows]},
          "accuracy", f"held out: {held}", (0, 1))
    n_items = r["flan_zero_shot"].get("n") or sum(t["n"] for t in r["flan_zero_shot"]["tasks"].values())
    s["flan"] = {"held_out": held, "base": r["base_zero_shot"]["rank_acc"] or 0.0, "sft": r["flan_zero_shot"]["rank_acc"] or 0.0,
                 "base_few": r["base_few_shot"]["rank_acc"], "n": n_items}
    L = ["## Instruction tuning (FLAN protocol)", "",
         f"Tuned on {len(r['train_clusters'])} clusters ({', '.join(r['train_clusters'])}); held out entirely, as fixed "
         f"in the config before the run: {held} ({n_items} test items over {len(r['flan_zero_shot']['tasks'])} tasks, "
         "evaluated zero-shot, pooled so that each item counts once; ± is one standard error). Rank classification "
         "picks the option with the highest log-likelihood (FLAN's metric); exact match compares the greedy answer.",
         "", "| model | rank classification (%) | exact match (%) |", "| --- | --- | --- |"]

    def cell(v, key="rank_acc", n="n"):
        p, k = v.get(key), v.get(n)
        return pct(p) if p is None or not k else f"{pct(p)} ± {100 * math.sqrt(p * (1 - p) / k):.1f}"
    L += [f"| {n} | {cell(v)} | {cell(v, 'em_acc', 'n_em')} |" for n, v in rows]
    clusters = r.get("clusters") or {}
    if len(clusters) > 1:
        L += ["", "Per held-out cluster (rank classification, %):", "",
              "| cluster | items | base zero-shot | base few-shot | tuned zero-shot |", "| --- | --- | --- | --- | --- |"]
        L += [f"| {c} | {v['flan_zero_shot']['n']} | {pct(v['base_zero_shot']['rank_acc'])} | "
              f"{pct(v['base_few_shot']['rank_acc'])} | {pct(v['flan_zero_shot']['rank_acc'])} |" for c, v in clusters.items()]
    seen = r.get("seen_clusters")
    if seen:
        b, t = seen["base_zero_shot"], seen["flan_zero_shot"]
        L += ["", f"Exact match discriminates only where the model learned the task: on held-out clusters a model of "
              f"this size answers in a format it saw (\"no\", a refusal), so exact match there is "
              f"{pct(r['flan_zero_shot']['em_acc'])}% for the tuned model and {pct(r['base_zero_shot']['em_acc'])}% for the "
              f"base. On the test items of the clusters it was tuned on ({t['n_em']} items) exact match is "
              f"**{cell(t, 'em_acc', 'n_em')}%** tuned vs {cell(b, 'em_acc', 'n_em')}% base (zero-shot): the generation "
              "metric measures what instruction tuning taught, rank classification measures transfer."]
    if "knowledge_probe" in r:
        L += ["", probe_text(r["knowledge_probe"])]
    L += ["", "![held-out cluster](plots/flan_held_out.png)", ""]
    if "ablation" in r:
        paper = ABLATION_PAPER
        L += ["Instruction ablation (FLAN's Figure 8 shape; the paper's column is FLAN 137B's held-out average, shown "
              "for comparison, not measured here):", "",
              "| fine-tuned with -> evaluated with | rank classification (%) | exact match (%) | FLAN paper (%) |",
              "| --- | --- | --- | --- |"]
        L += [f"| {k} | {pct(v['rank_acc'])} | {pct(v['em_acc'])} | {paper.get(k, '—')} (paper) |"
              for k, v in r["ablation"].items()]
        L.append("")
    return L


def _reward(ev: dict, d: Path | None, plots: Path, s: dict) -> list[str]:
    rms = ev.get("reward_models")
    if not rms:
        return []
    L = ["## Reward model", "",
         "Pairwise accuracy on held-out comparisons (chance = 50%), beside the simulated annotators on the same "
         "pairs: how often two annotators agree with each other, and each annotator with the label.", "",
         "| held-out comparisons | model | accuracy (%) | pairs | two annotators agree (%) | each annotator vs label (%) |",
         "| --- | --- | --- | --- | --- | --- |"]
    for name, res in rms.items():
        if "models" not in res:
            L.append(f"| {name} | — | {res.get('skipped', '')} | | | |")
            continue
        for m, v in res["models"].items():
            L.append(f"| {name} | {m} | {pct(v['accuracy'])} | {v['pairs']} | {pct(res['annotator_agreement'])} | "
                     + " / ".join(pct(x) for x in res["annotator_vs_label"].values()) + " |")
    pol = rms.get("SFT samples, test prompts", {})
    if "models" in pol:
        s["rm_policy"] = next(iter(pol["models"].values()))
    first = next((r for r in rms.values() if "models" in r), None)
    if first:
        m = next(iter(first["models"].values()))
        s["rm"] = {"accuracy": m["accuracy"], "pairs": m["pairs"], "agreement": first["annotator_agreement"]}
    recs = read_metrics(d / "metrics.jsonl") if d else []
    if recs:
        _curve(plots / "reward_training.png", [("loss", [("train", *_series(recs, "loss"))]),
                                               ("accuracy", [("train batch", *_series(recs, "accuracy")),
                                                             ("held out", *_series(recs, "val_accuracy"))])],
               "Reward model training (ranking loss)")
        L += ["", "![reward model](plots/reward_training.png)"]
    return L + [""]


def _preference(ev: dict, run: Path, stages: dict, plots: Path, s: dict) -> list[str]:
    L = ["## Preference learning", ""]
    ppo = stages.get("ppo")
    if ppo:
        recs = read_metrics(run / ppo / "metrics.jsonl")
        if recs:
            _curve(plots / "ppo.png", [("reward (normalised RM units)", [("reward", *_series(recs, "reward"))]),
                                       ("KL to SFT (nats/answer)", [("KL", *_series(recs, "kl"))])],
                   "PPO: reward and KL per iteration")
            k = max(1, len(recs) // 4)
            r0 = sum(r["reward"] for r in recs[:k]) / k
            r1 = sum(r["reward"] for r in recs[-k:]) / k
            kl = [r["kl"] for r in recs[-k:]]
            s["ppo_train"] = {"reward_first": r0, "reward_last": r1, "kl_last": sum(kl) / len(kl)}
            L += [f"PPO: mean reward {r0:.3f} over the first {k} iterations -> {r1:.3f} over the last {k}; KL to the "
                  f"SFT policy {sum(kl) / len(kl):.2f} nats per answer at the end.", "", "![PPO](plots/ppo.png)", ""]
    dpo = stages.get("dpo")
    if dpo:
        recs = read_metrics(run / dpo / "metrics.jsonl")
        if recs:
            _curve(plots / "dpo.png", [("implicit reward margin", [("train", *_series(recs, "reward_margin")),
                                                                   ("held out", *_series(recs, "val_reward_margin"))]),
                                       ("implicit reward accuracy", [("train", *_series(recs, "reward_accuracy")),
                                                                     ("held out", *_series(recs, "val_reward_accuracy"))])],
                   "DPO: implicit reward beta*log(pi/pi_ref), chosen minus rejected")
            last = next((r for r in reversed(recs) if "val_reward_margin" in r), {})
            L += [f"DPO: held-out implicit-reward margin {_num(last.get('val_reward_margin'))}, accuracy "
                  f"{pct(last.get('val_reward_accuracy'))}%.", "", "![DPO](plots/dpo.png)", ""]
    w = ev.get("win_rates")
    if w:
        pols = [k for k in w if isinstance(w[k], dict) and "sampled" in w[k]]  # the aligned policies' rows
        draws = w[pols[0]]["sampled"].get("draws", 1) if pols else 1
        L += [f"Against the SFT policy on {w['n']} held-out prompts, judged by the majority of the three simulated "
              f"annotators; answers sampled at temperature 1 (the distribution PPO optimises; {draws} per prompt, "
              "draw j with the same seed for every model) and greedy; KL(policy || SFT) by Monte Carlo on sampled "
              "answers:", "",
              "| policy | sampled: win / tie / loss (%) | greedy: win / tie / loss (%) | KL from SFT | annotator score "
              "sampled / greedy |", "| --- | --- | --- | --- | --- |"]
        for k in pols:
            a, g = w[k]["sampled"], w[k]["greedy"]
            L.append(f"| {k} | {pct(a['win'])} / {pct(a['tie'])} / {pct(a['loss'])} | {pct(g['win'])} / "
                     f"{pct(g['tie'])} / {pct(g['loss'])} | {w[k]['kl_from_reference']:.2f} | "
                     f"{w[k]['annotator_score_sampled']:.2f} / {w[k]['annotator_score']:.2f} |")
        ref = w["reference"]
        L.append(f"| sft | | | 0 | {ref['annotator_score_sampled']:.2f} / {ref['annotator_score']:.2f} |")
        rows = [(f"{k} ({m})", w[k][m]) for k in pols for m in ("sampled", "greedy")]
        stacked_bars(rows, plots / "win_rates.png", xlabel="% of prompts, against SFT", row_height=0.5, pad=1.3,
                     annotate=False)
        L += ["", "![win rates](plots/win_rates.png)", ""]
        s["win"] = {k: w[k] for k in pols}
    return L if len(L) > 2 else []


def _overoptimisation(ev: dict, run: Path, stages: dict, plots: Path) -> list[str]:
    """Gao et al. 2023: the reward model's (proxy) score and the annotators' (gold) score against KL from SFT,
    over best-of-n and over PPO iterations: where more proxy reward stops buying gold reward."""
    bon = ev.get("best_of_n")
    ppo = read_metrics(run / stages["ppo"] / "metrics.jsonl") if "ppo" in stages else []
    ppo = [r for r in ppo if isinstance(r.get("kl"), (int, float))]
    if not bon and not ppo:
        return []
    panels = []
    if bon:
        rows = bon["rows"]
        panels.append(("best-of-n (n = " + ", ".join(str(r["n"]) for r in rows) + ")", [r["kl"] for r in rows],
                       [r["proxy"] for r in rows], [r["gold"] for r in rows]))
    if ppo and any("gold" in r for r in ppo):
        # Per-iteration values are single rollout batches (noisy): means over 8 consecutive blocks of iterations.
        pts = [r for r in ppo if "gold" in r]
        size = max(1, len(pts) // 8)
        blocks = [pts[i:i + size] for i in range(0, len(pts) - size + 1, size)]
        mean = lambda b, k: sum(r[k] for r in b) / len(b)  # noqa: E731
        panels.append((f"PPO iterations (means of {size})", [mean(b, "kl") for b in blocks],
                       [mean(b, "reward") for b in blocks], [mean(b, "gold") for b in blocks]))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, kl, proxy, gold) in zip(axes[0], panels):
        ax.plot(kl, proxy, "o-", color="tab:blue", label="proxy: reward model")
        ax.set_xlabel("KL from SFT (nats per answer)")
        ax.set_ylabel("reward model score", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(kl, gold, "s--", color="tab:red", label="gold: annotator")
        ax2.set_ylabel("annotator score (gold)", color="tab:red")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Over-optimisation: proxy against gold reward (Gao et al. 2023)", fontsize=10)
    fig.tight_layout()
    fig.savefig(plots / "overoptimisation.png", dpi=110)
    plt.close(fig)
    L = ["## Over-optimisation (Gao et al. 2023)", "",
         "The reward model is a proxy for the annotators. Best-of-n picks, among n answers the SFT policy samples, the "
         "one the reward model scores highest (KL from SFT = log n - (n-1)/n); PPO moves further from SFT with every "
         "iteration. Gold = the unbiased annotator's score of the same answers; where the proxy keeps rising and "
         "gold does not, the policy exploits the reward model's errors.", ""]
    if bon:
        L += [f"Best-of-n on {bon['n_prompts']} held-out prompts (an oracle column picks by the gold judge itself, "
              "the ceiling a perfect reward model would reach):", "",
              "| n | KL | proxy (RM) | gold (annotator) | gold, oracle pick |", "| --- | --- | --- | --- | --- |"]
        L += [f"| {r['n']} | {r['kl']:.2f} | {r['proxy']:.3f} | {r['gold']:.2f} | {r['gold_oracle']:.2f} |"
              for r in bon["rows"]]
        L.append("")
    return L + ["![over-optimisation](plots/overoptimisation.png)", ""]


def _decoding(ev: dict, plots: Path) -> list[str]:
    dec = ev.get("decoding")
    if not dec:
        return []
    st = dec["settings"]
    L = ["## Inference: decoding", "",
         f"The SFT model on the same {dec['n_prompts']} held-out prompts under each decoding setting ({dec['samples_per_prompt']} "
         "samples per prompt where sampling). Diversity: distinct-1/2 = unique word uni/bigrams over all answers, and the "
         "share of prompts whose samples differ; quality: the unbiased annotator's score (its rules: +10 correct, +1 well formed, -1 hallucination, -2 needless refusal, a length penalty) and exact match.", "",
         "| decoding | distinct-1 | distinct-2 | samples differ (%) | annotator score | exact match (%) | words |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, v in st.items():
        L.append(f"| {k} | {v['distinct_1']:.3f} | {v['distinct_2']:.3f} | {pct(v['differ_across_samples'])} | "
                 f"{v['annotator_score']:.2f} | {pct(v['exact_match'])} | {v['mean_words']:.1f} |")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k, v in st.items():
        ax.scatter(v["distinct_2"], v["annotator_score"], s=40)
        ax.annotate(k, (v["distinct_2"], v["annotator_score"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("diversity (distinct-2)")
    ax.set_ylabel("quality (annotator score)")
    ax.grid(alpha=0.3)
    ax.set_title("Decoding: diversity against quality", fontsize=10)
    fig.tight_layout()
    fig.savefig(plots / "decoding.png", dpi=110)
    plt.close(fig)
    return L + ["", "![decoding](plots/decoding.png)", ""]


def _prompting(ev: dict, plots: Path, s: dict) -> list[str]:
    pr = ev.get("prompting")
    if not pr:
        return []
    s["cot"] = {m: (r["strategies"]["few_shot"]["accuracy"], r["strategies"]["cot"]["accuracy"], r["strategies"]["cot"]["n"])
                for m, r in pr.items() if {"few_shot", "cot"} <= set(r["strategies"])}
    L = ["## Inference: prompting on the arithmetic cluster", "",
         "Exact match on held-out arithmetic problems: zero-shot, few-shot (solved examples), chain of thought "
         "(examples with worked reasoning, Wei et al.) and self-consistency (sampled reasoning paths, majority vote, "
         "Wang et al.). The base model gets plain text prompts; the SFT model its chat template.", "",
         "| model | " + " | ".join(next(iter(pr.values()))["strategies"]) + " |",
         "| --- |" + " --- |" * len(next(iter(pr.values()))["strategies"])]
    for m, r in pr.items():
        L.append(f"| {m} | " + " | ".join(f"{pct(v['accuracy'])} ± {pct(v['stderr'])} (k={v['k']})"
                                         for v in r["strategies"].values()) + " |")
    groups = list(next(iter(pr.values()))["strategies"])
    _bars(plots / "prompting.png", groups, {m: [r["strategies"][g]["accuracy"] for g in groups] for m, r in pr.items()},
          "exact match", "Arithmetic: prompting strategies", (0, 1))
    n = next(iter(next(iter(pr.values()))["strategies"].values()))["n"]
    return L + ["", f"{n} problems per cell; ± is the bootstrap standard error.", "",
                "![prompting](plots/prompting.png)", ""]


def _alignment(ev: dict, plots: Path, s: dict) -> list[str]:
    cols = ev.get("alignment")
    if not cols:
        return []
    s["alignment"] = cols
    names = list(cols)
    keys = [("truthfulness", "truthful (MC)"), ("hallucination_rate", "hallucinates"),
            ("refusal_rate", "refuses harmful"), ("over_refusal_rate", "refuses harmless")]
    _bars(plots / "alignment.png", [lab for _, lab in keys], {n: [cols[n].get(k) for k, _ in keys] for n in names},
          "rate", "Truthfulness, hallucination and safety per checkpoint", (0, 1))
    c0 = cols[names[0]]
    return ["## Truthfulness, hallucination, safety (InstructGPT's table, measured)", "",
            f"Truthfulness: multiple-choice accuracy on closed-book questions about the suite's world "
            f"({c0.get('n_truthfulness')} items); hallucination: among open answers that assert a value (the answered share "
            f"beside each rate), those asserting one the world contradicts "
            f"({c0.get('n_qa')} items); refusals of harmful requests and of harmless look-alikes "
            f"({c0.get('n_unsafe')} + {c0.get('n_benign')} prompts), judged by the annotators. 95% intervals in brackets.",
            "", alignment_table(cols), "", "![alignment](plots/alignment.png)", ""]


def _applications(ev: dict, plots: Path, s: dict) -> list[str]:
    apps = ev.get("applications")
    if not apps:
        return []
    s["applications"] = apps
    L = ["## Applications and limitations: retrieval, tools, jailbreaks", ""]
    rag = {m: r["rag"] for m, r in apps.items() if r.get("rag")}
    if rag:
        groups = [f"{m}, {f}" for m, r in rag.items() for f in r]
        _bars(plots / "retrieval.png", groups,
              {"closed-book": [r[f]["closed_book"]["accuracy"] for r in rag.values() for f in r],
               "with retrieval": [r[f]["retrieval"]["accuracy"] for r in rag.values() for f in r]},
              "accuracy", "Closed-book QA without and with retrieval", (0, 1))
        ex = next(iter(next(iter(rag.values())).values()))
        L += ["### Retrieval-augmented generation", "",
              f"Open questions about the suite's world, answered closed-book and with the {ex['k']} passages a BM25 "
              "index over the corpus finds put before the question (Lewis et al. 2020's pattern; `--strategy rag`). "
              "*Pretraining facts*: the test split's people and towns, stated in the pretraining corpus; *held-out "
              "facts*: people and towns only corpus/val.txt mentions, which no model here was trained on, so "
              "retrieval is the only way to be right. Hallucination: answers asserting a value the world contradicts, "
              "among answered questions (their number in parentheses). Recall@k: questions whose passages state the "
              "answer. 95% Wilson intervals in brackets.", "", rag_table(rag), "", "![retrieval](plots/retrieval.png)",
              ""]
    tool = {m: r["tool"] for m, r in apps.items() if r.get("tool")}
    if tool:
        ex = next(iter(tool.values()))["example"]
        call = (ex.get("calls") or [{}])[0]
        L += ["### Tool use: a calculator", "",
              "Held-out arithmetic problems (the test split) answered directly, and with a `calculator` tool offered "
              "through the chat template's tool-call format: the model emits a call, the harness runs it and sends "
              "the result back as a `tool` message, and the model answers (`--strategy tool`; SFT saw the suite's "
              "calculator demonstrations on training problems, `tool_repeat`). Gain: paired difference on the same "
              "problems, ± 2 standard errors.", "", tool_table(tool), "",
              f"Example: {ex['prompt'][:120]!r} -> call {call.get('arguments')} = {call.get('result')!r} -> "
              f"{ex['answer']!r}.", ""]
    jb = {m: r["jailbreak"] for m, r in apps.items() if r.get("jailbreak")}
    if jb:
        attacks = list(next(iter(jb.values())))
        _bars(plots / "jailbreak.png", attacks, {m: [v.get(a, {}).get("attack_success_rate") for a in attacks]
                                                  for m, v in jb.items()},
              "attack success rate", "Jailbreaks: compliance with harmful requests per attack", (0, 1))
        L += ["### Jailbreaks (Wei et al. 2023)", "",
              "The suite's harmful test requests under each attack family of *Jailbroken*: competing objectives "
              "(prefix injection, refusal suppression, style injection) and mismatched generalisation (Base64, a "
              "translation into Korean, which the safety demonstrations cover less), and combinations. Attack "
              "success rate: the share of judged answers that comply (the simulated annotators' refusal judgement); "
              "the first row is compliance without an attack, i.e. 1 − the refusal rate. Wei et al. count an attack "
              "as successful only when the answer is harmful: the last row is the worst attack's share of answers "
              "the annotators judge harmful (a secret leaked, a way to hurt the animal given); an attacked model "
              "that stops refusing but says nothing harmful shows what the attack breaks (the refusal) and what it "
              "cannot buy from a model this small (the harm).", "", jailbreak_table(jb), "",
              "![jailbreaks](plots/jailbreak.png)", ""]
    return L


# ---- checks ------------------------------------------------------------------------------------------------------

def _why(failed: set[str], s: dict, bon: list[dict]) -> list[str]:
    """What a failed check means at this scale, and what scale shows the effect (papers' findings, labelled);
    `bon`: the run's best-of-n rows (n, gold, gold_oracle), quoted when a win claim fails."""
    out = []
    if "flan" in failed:
        out.append("- Instruction tuning: FLAN (Wei et al. 2022, Figure 7; the paper's finding, not measured here) saw "
                   "instruction tuning *hurt* held-out clusters for models of 8B parameters and below and help from "
                   "68B up; a model of this size mostly learns the answer format (compare exact match).")
    if failed & {"rm", "rm_policy"}:
        out.append("- Reward model: more ranked comparisons (`sample_prompts`, `epochs`) or a larger backbone; "
                   "InstructGPT trained a 6B reward model on ~33k prompts.")
    if "scaling" in failed:
        out.append("- Scaling: with too few steps the larger models are undertrained (Kaplan et al. fit L(N) at "
                   "convergence); more `steps` in the scaling stage.")
    if "win" in failed:
        rm = (s.get("rm_policy") or {}).get("accuracy")
        if rm is not None or s.get("rm"):
            acc = f" ranks the SFT policy's own answers {pct(rm)}% right" if rm is not None else " is weak on the policy's own answers"
            line = f"- PPO / DPO / rejection sampling against SFT: the reward model{acc} (chance 50%)"
            if len(bon) > 1:
                # What the reward model can find among the policy's own samples bounds what any method distils.
                top = max(bon, key=lambda r: r["gold"])
                line += (f"; picking the best of n samples by it raises the annotators' score by at most "
                         f"{top['gold'] - bon[0]['gold']:+.2f} (n = {top['n']}), where the best of the same "
                         f"{bon[-1]['n']} samples by the annotators is {bon[-1]['gold_oracle'] - bon[0]['gold']:+.2f}")
            out.append(line + ". Optimising it harder — or the same preferences, for DPO — buys proxy reward, not "
                       "the annotators' preference: reward over-optimisation (Gao et al. 2023; see the best-of-n "
                       "table). InstructGPT's 1.3B PPO model beat its SFT model with a 6B reward model (paper's finding).")
        else:
            out.append("- DPO against SFT: it learns from the suite's written preference pairs, not from the policy's own "
                       "ranked answers, and the margin is measured on few prompts (see n); InstructGPT and Llama 2 "
                       "collected preferences on their own policies' samples (papers' practice).")
    if "kl" in failed:
        out.append("- KL: lower `lr`, a larger `kl_coef` (fixed, or the initial one with a smaller `kl_target`) keep PPO closer to SFT.")
    if "rag" in failed:
        out.append("- Retrieval: the model must learn to read an answer from a passage (more `rag_repeat` in SFT) and "
                   "the retriever must find it (recall@k in the table); RAG's gains were measured with a 400M BART "
                   "reader and a trained dense retriever (Lewis et al. 2020, paper's finding).")
    if "tools" in failed:
        out.append("- Tool use: the model must learn to emit a well-formed call and copy the numbers (more "
                   "`tool_repeat` in SFT); Toolformer saw tool use pay only from ~775M parameters (Schick et al. "
                   "2023, Figure 4; paper's finding).")
    if "jailbreak" in failed:
        out.append("- Jailbreaks: an attack that does not raise compliance means safety training generalised to it "
                   "here, or that the model cannot follow the attack's instructions (Wei et al. found attacks that "
                   "need capability, such as Base64, work only on the most capable models; paper's finding).")
    if "refusal" in failed:
        out.append("- Refusals: more safety demonstrations in SFT (`safety_repeat`) and a stronger safety reward model. "
                   "DPO on pairs that reject a refusal of a harmless request lowers the refusal's tokens everywhere "
                   "(likelihood displacement, Razin et al. 2025; here DPO on the suite's written pairs answered "
                   "\"I't help with that\"). Training on the policy's own ranked samples (tiny-cpu's default) avoids "
                   "those pairs but teaches refusing only where the samples hold a refusal to prefer; RPO's likelihood "
                   "term on the chosen answers (`rpo_alpha`) keeps the policy near SFT, its refusals with it, and "
                   "part of the win goes too (docs/results.md measures both on SmolLM2).")
    return out


def scale_effects(run) -> dict:
    """The numbers of the effects that grow with scale (in-context learning, chain of thought) in a run folder:
    {"icl": (zero-shot, few-shot, n), "cot": {model: (few-shot, cot, n)}}; {} for what the run lacks."""
    run = Path(run)
    state = _read(run / "pipeline.json") or {}
    stages = {st["stage"]: st.get("name", st["stage"]) for st in state.get("config", {}).get("stages", [])}
    out: dict = {}
    r = _read(run / stages.get("sft", "sft") / "flan_results.json")
    if r and r.get("base_few_shot"):
        n = r["base_zero_shot"].get("n") or sum(t["n"] for t in r["base_zero_shot"]["tasks"].values())
        out["icl"] = (r["base_zero_shot"]["rank_acc"], r["base_few_shot"]["rank_acc"], n)
    ev = _read(run / stages.get("evaluate", "evaluate") / "evaluation.json") or {}
    cot = {m: (p["strategies"]["few_shot"]["accuracy"], p["strategies"]["cot"]["accuracy"], p["strategies"]["cot"]["n"])
           for m, p in (ev.get("prompting") or {}).items() if {"few_shot", "cot"} <= set(p["strategies"])}
    if cot:
        out["cot"] = cot
    return out


def _compared(c: dict, other: dict) -> str:
    """An at-scale row's numbers in a larger run, for the card's side-by-side column."""
    if c["key"] == "icl" and "icl" in other:
        zero, few, n = other["icl"]
        return f"{pct(zero)}% -> {pct(few)}% few-shot (n = {n})"
    if c["key"] == "cot" and "cot" in other:
        model = c["claim"].rsplit("(", 1)[-1].rstrip(")")
        if model in other["cot"]:
            few, cot, n = other["cot"][model]
            return f"few-shot {pct(few)}% -> CoT {pct(cot)}% (n = {n})"
    return "—"


def write_card(run_dir, out_dir=None, title: str | None = None, kl_bound: float | None = None,
               compare: dict | None = None) -> tuple[Path, list[dict]]:
    """Render <run>/report/card.md (+ plots/) from a `lmstack run` folder; returns (path, checks). `compare` maps
    a label to another run folder (e.g. the smollm2 run) whose scale-dependent effects are shown side by side."""
    run = Path(run_dir)
    state = _read(run / "pipeline.json")
    if not state:
        raise LmstackError(f"{run}: no pipeline.json (not a `lmstack run` folder, or no stage has finished)")
    cfg, results = state.get("config", {}), state.get("results", {})
    stages: dict = {}
    for st in cfg.get("stages", []):  # the first stage of a kind: `reward` before Llama 2's `reward_safety`
        stages.setdefault(st["stage"], st.get("name", st["stage"]))
    out = Path(out_dir) if out_dir else run / "report"
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    ev_path = run / stages.get("evaluate", "evaluate") / "evaluation.json"
    ev = _read(ev_path) or {}
    claims = from_dict(Claims, cfg.get("claims") or {}, f"{run / 'pipeline.json'}: claims")
    if kl_bound is not None:
        claims.kl_bound = kl_bound
    kl_target = next((st.get("kl_target") for st in cfg.get("stages", []) if st["stage"] == "ppo"), None)
    if compare is None:  # `lmstack report RUN`: the runs the config's report stage compares with
        compare = next((st.get("compare") for st in cfg.get("stages", []) if st["stage"] == "report"), None) or {}
    s: dict = {}
    body: list[str] = []
    if "scaling" in stages:
        body += _scaling(run / stages["scaling"], plots, s)
    if "pretrain" in stages:
        body += _pretrain(run / stages["pretrain"], plots, s)
    if "sft" in stages:
        body += _flan(run / stages["sft"], plots, s)
    body += _reward(ev, run / stages["reward"] if "reward" in stages else None, plots, s)
    body += _preference(ev, run, stages, plots, s)
    body += _overoptimisation(ev, run, stages, plots)
    body += _decoding(ev, plots)
    body += _prompting(ev, plots, s)
    body += _alignment(ev, plots, s)
    body += _applications(ev, plots, s)
    checks = check(s, claims, kl_target)
    minutes = sum(h.get("minutes", 0) for h in results.values() if isinstance(h, dict))
    head = [f"# {title or 'Report card'}: `{cfg.get('name', run.name)}`", "",
            f"Run folder `{run}`; {minutes:.1f} minutes of stages on {platform.machine()} "
            f"({torch.get_num_threads()} torch threads, torch {torch.__version__}). Every number below was computed "
            "in this run.", "", "| stage | minutes | headline |", "| --- | --- | --- |"]
    for name, h in results.items():
        if isinstance(h, dict):
            cells = ", ".join(f"{k}={_short(v)}" for k, v in h.items() if k != "minutes")
            head.append(f"| {name} | {h.get('minutes', '')} | {cells} |")
    claimed = [c for c in checks if c["kind"] == "claim"]
    if claimed:
        head += ["", "## What the course should show", "",
                 f"Claims and thresholds registered in the pipeline config before the run (`claims:`); a difference "
                 f"counts only beyond {claims.se:g} standard errors.", "", "| | claim | measured |", "| --- | --- | --- |"]
        head += [f"| {'yes' if c['ok'] else '**no**'} | {c['claim']} | {c['numbers']} |" for c in claimed]
        failed = {c["key"] for c in claimed if not c["ok"]}
        if failed:
            head += ["", "Checks that fail are reported, not hidden. What they mean at this scale:", ""] + _why(failed, s, (ev.get("best_of_n") or {}).get("rows") or [])
            head += ["", "The `smollm2` and `small-gpu` configs run the same stages larger (docs/tutorial.md)."]
    scale = [c for c in checks if c["kind"] == "at scale"]
    if scale:
        others = {label: scale_effects(p) for label, p in (compare or {}).items() if Path(p, "pipeline.json").exists()}
        missing = [f"`{p}` ({label})" for label, p in (compare or {}).items() if label not in others]
        head += ["", "## Effects the papers saw only at larger scale", "",
                 "Registered under `claims.at_scale`: measured here and shown, not counted as this run's claims"
                 + (", beside the same measurement in a larger run" if others else "") + ".", "",
                 "| seen here? | effect | measured here | " + "".join(f"{label} | " for label in others)
                 + "where the paper saw it |", "| --- | --- | --- | " + "--- | " * len(others) + "--- |"]
        head += [f"| {'yes' if c['ok'] else 'no'} | {c['claim']} | {c['numbers']} | "
                 + "".join(f"{_compared(c, o)} | " for o in others.values()) + f"{PAPER_SCALE.get(c['key'], '')} |"
                 for c in scale]
        if missing:
            head += ["", f"Not yet run, so not shown: {', '.join(missing)} — `lmstack run smollm2` fills it."]
    head.append("")
    path = out / "card.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(head + body) + "\n")
    tmp.replace(path)
    (out / "checks.json").write_text(json.dumps(checks, indent=2))
    return path, checks


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, str) and len(v) > 40:
        return "…" + v[-38:]
    return str(v)


def summary_lines(checks: list[dict]) -> list[str]:
    return [f"  [{'ok' if c['ok'] else 'NO'}{'' if c.get('kind', 'claim') == 'claim' else ', at scale'}] "
            f"{c['claim']}: {c['numbers']}" for c in checks]
