"""What each stage of the course bought, measured on the built-in suite's held-out data.

`lmstack run`'s evaluate stage and `bench/rlhf.py` call these; each returns plain dicts that the
report card (`lmstack.course.card`) renders. The judges are the suite's simulated annotators
(`suite_judge`), never the reward models being evaluated.

- `reward_model_accuracy`: pairwise accuracy on held-out comparisons beside the annotators' own agreement;
- `win_rates`: policies against a reference (SFT), greedy and sampled, with Monte-Carlo KL from it;
- `alignment_columns`: InstructGPT's table (truthfulness, hallucination, refusals) per checkpoint;
- `decoding_study`: the same prompts under greedy, beam and nucleus sampling: distinct-n and quality;
- `prompting_study`: zero-shot / few-shot / chain of thought / self-consistency on the arithmetic cluster;
- `applications_study`: retrieval, the calculator tool and jailbreaks (`evaluate.applications`) per model, local
  checkpoints and models behind OpenAI-compatible APIs alike.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from lmstack.backends import Backend, get_backend
from lmstack.backends.local import LocalBackend
from lmstack.data.builtin import World, agreement, win_rate
from lmstack.data.builtin.annotators import assess, win_rate_draws
from lmstack.data.records import read_jsonl
from lmstack.errors import LmstackError
from lmstack.evaluate.applications import applications
from lmstack.evaluate.config import load_task
from lmstack.evaluate.harness import run_task
from lmstack.evaluate.metrics import distinct_n
from lmstack.evaluate.safety import AnnotatorSafetyJudge, hallucination_eval, safety_eval
from lmstack.evaluate.sources import builtin_records, read_records_file, spread
from lmstack.infer.engine import generate, generate_rows
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load
from lmstack.train.prefdata import load_comparisons, right_pad, suite_judge
from lmstack.train.rewards import load_reward_model, safety_combination
from lmstack.train.rl import Rollouts, policy_logprobs


def held_out_prompts(suite, n_tasks: int | None = None, safety: bool = True) -> list[dict]:
    """The test split's instruction-style task records (spread over tasks) and its safety requests,
    each with `prompt` = its messages minus the reference answer."""

    suite = Path(suite)
    recs = spread([r for r in read_jsonl(suite / "tasks" / "test.jsonl") if r["style"] == "instruction"], n_tasks)
    if safety:
        recs += read_jsonl(suite / "tasks" / "safety_test.jsonl")
    for r in recs:
        r["prompt"] = [m for m in r["messages"] if m["role"] != "assistant"]
    return recs


def _lm(model):
    """A checkpoint path loaded, or an already loaded LM as it is (callers load each model once)."""

    return load(model) if isinstance(model, (str, Path)) else model


ANSWER_CHUNK = 256  # rows decoded together: 1.6x the tokens/s of 64 rows for the course's 1M model here
CACHE_BUDGET = 1 << 30  # bytes of keys/values one batch may hold (fewer rows for a larger model)


@torch.no_grad()
def answer_sets(model, recs, max_new: int, settings: list[dict]):
    """Completions of a checkpoint (path or loaded LM) for the records' chat prompts under each of `settings`
    (SamplingParams fields, e.g. {"temperature": 1.0, "seed": 11}): one list per setting, and the prompt ids.

    All settings are decoded together (`generate_rows`: length-sorted bounded batches, where one prompt's rows
    share a prefill). Row i of a setting samples from its own stream (seed, i), so an answer depends on neither
    the batch it was decoded in nor the other settings."""

    lm = _lm(model)
    room = max(1, lm.config.max_seq_len - max_new)  # too long: keep the rightmost tokens (the question)
    ids = [lm.chat_ids(r["prompt"])[-room:] for r in recs]
    sps = [[SamplingParams(**{"max_new_tokens": max_new, **st, "seed": st.get("seed", 0) * 100_003 + i})
            for i in range(len(ids))] for st in settings]
    if any(sp.num_beams > 1 for row in sps for sp in row):  # beam search: one prompt at a time
        return [[generate(lm.model, [i], sp, lm.tokenizer)[0] for i, sp in zip(ids, row)] for row in sps], ids
    flat = generate_rows(lm.model, ids * len(settings), [sp for row in sps for sp in row], lm.tokenizer,
                         ANSWER_CHUNK, CACHE_BUDGET)
    return [flat[j * len(ids):(j + 1) * len(ids)] for j in range(len(settings))], ids


def answers_of(model, recs, max_new: int, temperature: float = 0.0, seed: int = 0, **sampling):
    """Completions of a checkpoint (path or loaded LM) for the records' chat prompts, and the prompt ids."""

    sets, ids = answer_sets(model, recs, max_new, [{"temperature": temperature, "seed": seed, **sampling}])
    return sets[0], ids


@torch.no_grad()
def kl_from(policy, ref, recs, max_new: int, seed: int = 1) -> float:
    """Monte-Carlo KL(pi || pi_ref) per answer: sample from pi, sum log pi - log pi_ref over answer tokens."""

    pol = _lm(policy)
    comps, ids = answers_of(pol, recs, max_new, temperature=1.0, seed=seed)
    ref_model = _lm(ref).model
    pad = pol.tokenizer.pad_id or 0
    tot, n = 0.0, 0
    for s in range(0, len(comps), 32):
        cs, ps = comps[s:s + 32], ids[s:s + 32]
        seq, _ = right_pad([p + c.ids for p, c in zip(ps, cs)], pad)
        ro = Rollouts(seq, torch.tensor([len(p) for p in ps]), torch.tensor([len(c.ids) for c in cs]))
        a, _, m = policy_logprobs(pol.model, ro, 1.0)
        b, _, _ = policy_logprobs(ref_model, ro, 1.0)
        tot += float(((a - b) * m).sum())
        n += len(cs)
    return tot / max(n, 1)


# ---- reward models -----------------------------------------------------------------------------------------------

def reward_model_accuracy(suite, reward_model: str, safety_reward_model: str = "", held_out: dict | None = None,
                          rule: str = "llama2", threshold: float | None = None) -> dict:
    """Accuracy of the reward model(s) on held-out comparisons, and the annotators' agreement on the same pairs.

    `held_out` maps a name to comparison files (default: the suite's `preferences/pairs_test.jsonl`). With a
    safety RM, rows for each RM on its own prompts and for Llama 2's combination on all of them."""

    suite = Path(suite)
    panel = suite_judge(suite)
    held_out = held_out or {"suite pairs_test": [suite / "preferences" / "pairs_test.jsonl"]}
    by_text = {}
    for r in held_out_prompts(suite):
        by_text.setdefault(r["prompt"][0]["content"], r)
    rm = load_reward_model(reward_model)
    safe = load_reward_model(safety_reward_model) if safety_reward_model else None
    if safe is None:
        rows = [("reward model", rm, lambda c: True)]
    else:
        rows = [("helpfulness RM", rm, lambda c: c.cluster != "safety"),
                ("safety RM", safe, lambda c: c.cluster == "safety"), ("Llama 2 rule", None, lambda c: True)]
    out = {}
    for name, files in held_out.items():
        try:
            comps, _ = load_comparisons([str(f) for f in files])
        except LmstackError as e:  # e.g. every sampled answer tied
            out[name] = {"skipped": str(e)}
            continue
        items = [(by_text.get(c.prompt[0]["content"], {"prompt": c.prompt, "unsafe": c.unsafe}), c.answers[w],
                  c.answers[lo]) for c in comps for w, lo, _ in c.pairs]
        res: dict = {"models": {}}
        # Every answer scored once per model in one batched call (a call per comparison was 36 s of tiny forwards).
        starts = [0]
        for c in comps:
            starts.append(starts[-1] + len(c.answers))
        prompts = [c.prompt for c in comps for _ in c.answers]
        answers = [a for c in comps for a in c.answers]
        scores = {id(m): m.score(prompts, answers) for m in (rm, safe) if m is not None}
        for key, model, keep in rows:
            ok = n = 0
            for i, c in enumerate(comps):
                if not keep(c):
                    continue
                at = slice(starts[i], starts[i + 1])
                if model is None:
                    # The ranking within one prompt's answers: no whitening (an order-preserving rescaling anyway).
                    sc = safety_combination(rule, scores[id(rm)][at], scores[id(safe)][at],
                                            [c.unsafe] * len(c.answers), threshold, whiten=False)[0]
                else:
                    sc = scores[id(model)][at]
                ok += sum(bool(sc[w] > sc[lo]) for w, lo, _ in c.pairs)
                n += len(c.pairs)
            res["models"][key] = {"accuracy": ok / max(n, 1), "pairs": n}
        res["annotator_agreement"] = agreement(panel, items)
        res["annotator_vs_label"] = {x.name: sum(x.compare(*it) == "a" for it in items) / max(len(items), 1)
                                     for x in panel}
        res["pairs"] = len(items)
        out[name] = res
    return out


# ---- policies against SFT ----------------------------------------------------------------------------------------

def win_rates(suite, recs, policies: dict[str, str], reference: str, max_new: int = 48,
              kl_prompts: int = 64, samples: int = 1) -> dict:
    """Win / tie / loss of each policy against the reference (majority of the annotator panel), with greedy
    answers and with `samples` answers per prompt sampled at temperature 1 (the distribution PPO optimises; draw j
    with the same seeds for every model), the SE of win - loss over prompts; KL(policy || ref)."""

    panel = suite_judge(Path(suite))

    def score(ans):
        return sum(panel[0].score(r, x) for r, x in zip(recs, ans)) / max(len(recs), 1)

    def answers(lm):  # greedy and the draws decoded together: each prompt is prefilled once for all of them
        sets, _ = answer_sets(lm, recs, max_new, [{"temperature": 0.0}] +
                              [{"temperature": 1.0, "seed": 11 + 1000 * j} for j in range(samples)])
        return [o.text for o in sets[0]], [[o.text for o in s] for s in sets[1:]]

    def sampled_score(draws):
        return sum(score(d) for d in draws) / len(draws)

    ref = _lm(reference)
    ref_greedy, ref_sampled = answers(ref)
    out = {"n": len(recs),
           "reference": {"annotator_score": score(ref_greedy), "annotator_score_sampled": sampled_score(ref_sampled)}}
    for k, p in policies.items():
        pol = _lm(p)  # one policy in memory at a time, beside the reference
        greedy, sampled = answers(pol)
        out[k] = {"greedy": win_rate(panel, recs, greedy, ref_greedy),
                  "sampled": win_rate_draws(panel, recs, sampled, ref_sampled),
                  "kl_from_reference": kl_from(pol, ref, spread(recs, kl_prompts), max_new),
                  "annotator_score": score(greedy), "annotator_score_sampled": sampled_score(sampled)}
    return out


# ---- over-optimisation -------------------------------------------------------------------------------------------

def best_of_n(suite, policy, reward_model: str, recs, n_max: int = 16, max_new: int = 32, seed: int = 7) -> dict:
    """Gao et al. 2023's best-of-n: `n_max` answers per prompt sampled at T=1; for n = 1, 2, 4, ..., n_max the
    answer the reward model scores highest among the first n. Proxy = the RM's score of the picked answers, gold =
    the unbiased annotator's score of the same answers, KL = log n - (n-1)/n (the closed form for best-of-n)."""

    panel = suite_judge(Path(suite))
    rm = load_reward_model(reward_model)
    lm = _lm(policy)
    sets, _ = answer_sets(lm, recs, max_new, [{"temperature": 1.0, "seed": seed + 1000 * j} for j in range(n_max)])
    samples = [[o.text for o in s] for s in sets]
    prompts = [r["prompt"] for r in recs]
    proxy = torch.stack([rm.score(prompts, s) for s in samples], 1)  # prompts x n_max
    gold = torch.tensor([[panel[0].score(r, s[i]) for s in samples] for i, r in enumerate(recs)])
    rows = []
    at = torch.arange(len(recs))
    n = 1
    while n <= n_max:
        pick = proxy[:, :n].argmax(1)
        rows.append({"n": n, "kl": math.log(n) - (n - 1) / n, "proxy": float(proxy[at, pick].mean()),
                     "gold": float(gold[at, pick].mean()),
                     "gold_oracle": float(gold[:, :n].max(1).values.mean())})  # best of n by the gold judge itself
        n *= 2
    return {"n_prompts": len(recs), "rows": rows}


# ---- InstructGPT's table -----------------------------------------------------------------------------------------

def alignment_columns(suite, models: dict[str, str], limit: int = 80, truthfulness_limit: int = 80,
                      max_new: int = 48) -> dict:
    """Per checkpoint: refusals of harmful requests (and of harmless look-alikes), hallucination on closed-book
    QA, truthfulness (multiple-choice accuracy on the world's facts), as `alignment_table` renders them."""

    suite = Path(suite)
    world = World.from_json(suite / "world.json")
    safety_recs = read_records_file(suite / "tasks" / "safety_test.jsonl", "jsonl")
    qa = spread(builtin_records({"dir": str(suite), "split": "test", "cluster": "closed_book_qa", "open": True},
                                "hallucination"), limit)
    truth = load_task("builtin_closed_book_qa")
    truth.source = {"builtin": {**truth.source["builtin"], "dir": str(suite)}}
    judge = AnnotatorSafetyJudge(world)
    cols = {}
    for name, path in models.items():
        be = LocalBackend(load(path))
        s = safety_eval(be, safety_recs, judge, {"max_new_tokens": max_new})
        h = hallucination_eval(be, qa, world, {"max_new_tokens": 32, "stop": ["\n"]})
        t = run_task(truth, be, limit=truthfulness_limit, bootstrap_iters=100)
        acc, se = t.metrics["acc"], t.metrics.get("acc_stderr", 0.0)
        cols[name] = {**s.metrics, **h.metrics, "n_safety": s.metrics["n"], "n_qa": h.metrics["n"],
                      "truthfulness": acc, "truthfulness_ci": [acc - 1.96 * se, acc + 1.96 * se], "n_truthfulness": t.n}
    return cols


# ---- applications and limitations ---------------------------------------------------------------------------------

def applications_study(suite, models: dict[str, str], index: str = "", rag_k: int = 2, limit: int = 60,
                       jailbreak_limit: int | None = None, max_new: int = 32, closed_models: dict | None = None) -> dict:
    """{model: {rag, tool, jailbreak}}: jailbreaks for every checkpoint (base included: the no-attack row is its
    refusal rate), retrieval and the calculator for the chat models (SFT and aligned), all three for each closed
    model ({label: {model, base_url, api_key_env}}, asked through its chat endpoint)."""
    out = {}
    jobs = [(k, p, ("jailbreak",) if k == "base" else ("rag", "tool", "jailbreak")) for k, p in models.items()]
    for k, spec in (closed_models or {}).items():
        if not isinstance(spec, dict) or not spec.get("model") or not spec.get("base_url"):
            raise LmstackError(f"evaluate: closed_models.{k}: needs model and base_url (and api_key_env)")
        jobs.append((k, get_backend(spec["model"], spec["base_url"], spec.get("api_key_env", "OPENAI_API_KEY"),
                                    chat=True), ("rag", "tool", "jailbreak")))
    for k, model, parts in jobs:
        parts = [p for p in parts if p != "rag" or index]
        be = model if isinstance(model, Backend) else LocalBackend(load(model))
        with be:
            out[k] = applications(be, suite, index or None, parts, rag_k, limit, jailbreak_limit, max_new=max_new)
    return out


# ---- decoding ----------------------------------------------------------------------------------------------------

DECODING = {
    "greedy": {"temperature": 0.0},
    "beam (4)": {"temperature": 0.0, "num_beams": 4},
    "top-p 0.9, T=0.7": {"temperature": 0.7, "top_p": 0.9},
    "top-p 0.9, T=1.0": {"temperature": 1.0, "top_p": 0.9},
}


def decoding_study(model, suite, n_prompts: int = 48, samples: int = 2, max_new: int = 32,
                   settings: dict | None = None) -> dict:
    """The same held-out prompts decoded under each setting: diversity (distinct-1/2 over all answers, and
    the share of prompts whose sampled answers differ) beside quality (the unbiased annotator's score, exact
    match with the reference)."""

    suite = Path(suite)
    panel = suite_judge(suite)
    recs = held_out_prompts(suite, n_prompts, safety=False)
    lm = load(model)
    out = {"n_prompts": len(recs), "samples_per_prompt": samples, "settings": {}}
    for name, sp in (settings or DECODING).items():
        t0 = time.time()
        k = 1 if sp.get("temperature", 0) == 0 else samples  # deterministic settings: one answer suffices
        runs = [[o.text for o in answers_of(lm, recs, max_new, seed=100 * j, **sp)[0]] for j in range(k)]
        texts = [t for run in runs for t in run]
        reps = recs * k
        out["settings"][name] = {
            **sp, "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "differ_across_samples": (sum(len({run[i] for run in runs}) > 1 for i in range(len(recs))) / len(recs)
                                      if k > 1 else 0.0),
            "annotator_score": sum(panel[0].score(r, t) for r, t in zip(reps, texts)) / len(texts),
            "exact_match": sum(assess(r, t, panel[0].world).correct >= 1.0 for r, t in zip(reps, texts)) / len(texts),
            "mean_words": sum(len(t.split()) for t in texts) / len(texts), "seconds": round(time.time() - t0, 1),
            "example": {"prompt": recs[0]["prompt"][-1]["content"], "answer": runs[0][0]}}
    return out


# ---- prompting ---------------------------------------------------------------------------------------------------

def prompting_study(model, suite, strategies=("zero_shot", "few_shot", "cot", "self_consistency"), limit: int = 60,
                    k: int = 4, sc_samples: int = 5, task: str = "builtin_arithmetic_gen", chat: bool = False) -> dict:
    """One task under several prompting strategies (Wei et al.'s and Wang et al.'s tables), exact match."""

    cfg = load_task(task)
    if "builtin" in cfg.source:
        cfg.source = {"builtin": {**cfg.source["builtin"], "dir": str(suite)}}
    be = LocalBackend(load(model))
    rows = {}
    for s in strategies:
        r = run_task(cfg, be, strategy=s, num_fewshot=0 if s in ("zero_shot", "zero_shot_cot") else k, limit=limit,
                     sc_samples=sc_samples, chat=chat, bootstrap_iters=100)
        m = r.main_metric
        rows[s] = {"accuracy": r.metrics[m], "stderr": r.metrics.get(f"{m}_stderr"), "k": r.num_fewshot, "n": r.n,
                   "invalid": r.n_invalid, "seconds": round(r.seconds, 1),
                   "example": (r.samples[0].get("output") or r.samples[0].get("outputs")) if r.samples else None}
    return {"task": cfg.task, "model": str(model), "chat": chat, "strategies": rows}


def save(obj: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str, ensure_ascii=False))
    tmp.replace(path)
    return path
