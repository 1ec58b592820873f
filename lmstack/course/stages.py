"""The stages `lmstack run` knows: each is a recipe plus its wiring.

A stage names a recipe (one of `lmstack.train.recipe.RECIPES`, or one of the course's own steps below: data,
evaluate, report, which follow the same contract: a config dataclass and `run(cfg) -> Result`), which
context paths feed which config fields, and under which context keys the `Result.artifacts` it returns are
recorded for the stages after it. Every number a recipe uses comes from its dataclass or the YAML config.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lmstack.course import evaluation as C
from lmstack.course.card import summary_lines, write_card
from lmstack.data.builtin.applications import corpus_index
from lmstack.data.defaults import builtin_token_data
from lmstack.train.recipe import RECIPES, Result

# ---------------------------------------------------------------------------------------- the course's own steps


@dataclass
class DataConfig:
    out: str = "runs/data"  #: folder for suite/, tokenizer/ and tokens/
    size: str = "tiny"  #: built-in suite size: tiny, small, medium, large or e.g. 2MB
    vocab_size: int = 2048  #: BPE vocabulary of the trained tokenizer
    seed: int = 0  #: world seed


def run_data(cfg: DataConfig) -> Result:
    """The built-in suite, a byte-level BPE tokenizer trained on its corpus, token shards, and a BM25 index over
    the corpus (retrieval demonstrations for SFT, the retrieval study)."""
    t0 = time.time()
    d = Path(cfg.out)
    tokens = builtin_token_data(d, size=cfg.size, seed=cfg.seed, vocab_size=cfg.vocab_size)
    suite = d / "suite"
    index = corpus_index(suite, d / "index")
    man = json.loads((suite / "manifest.json").read_text())
    tm = json.loads((tokens / "manifest.json").read_text())
    summary = {"corpus_mb": round(man["corpus"]["train"]["bytes"] / 1e6, 2),
               "train_tokens": tm["splits"]["train"]["tokens"], "val_tokens": tm["splits"]["val"]["tokens"],
               "seconds": round(time.time() - t0, 1)}
    return Result(summary, {"suite": str(suite), "tokens": str(tokens), "tokenizer": str(d / "tokenizer"),
                            "index": str(index)})


@dataclass
class EvaluateConfig:
    out: str = "runs/evaluate"  #: folder for evaluation.json
    suite: str = ""  #: the built-in suite folder (prompts, annotators, held-out pairs)
    models: dict = field(default_factory=dict)  #: label (base, sft, ppo, dpo, grpo, rejection) -> checkpoint
    reward_model: str = ""  #: helpfulness reward model to check against the annotators ("": skip)
    safety_reward_model: str = ""  #: safety reward model (Llama 2's rule with --safety-threshold)
    sampled_rankings_test: str = ""  #: ranked SFT samples on test prompts, a second held-out set for the RMs
    safety_rule: str = "llama2"  #: how the two RMs combine (lmstack.train.rewards.SAFETY_RULES)
    safety_threshold: float | None = None  #: the rule's threshold (None: the rule's default; Llama 2's 0.15)
    prompts: int = 200  #: held-out prompts per model for the win rates (0: every held-out prompt)
    win_samples: int = 1  #: answers sampled per prompt and model for the win rates (draw j: same seed for each model)
    kl_prompts: int = 64  #: prompts for each policy's KL from SFT
    limit: int = 80  #: items per truthfulness / hallucination / safety column
    decoding_prompts: int = 48  #: prompts of the decoding study
    prompting_items: int = 60  #: items per prompting strategy
    few_shot: int = 3  #: examples in few-shot prompts
    max_new_tokens: int = 32  #: answer length
    best_of_n: int = 16  #: over-optimisation study: best of n = 1, 2, 4 ... this many SFT samples by the RM (0: skip)
    best_of_n_prompts: int = 64  #: held-out prompts of the best-of-n study
    index: str = ""  #: retrieval index over the suite's corpus for the retrieval study ("": skip it)
    rag_k: int = 2  #: passages put before each question in the retrieval study
    applications_items: int = 60  #: questions per question set (retrieval) and arithmetic items (tool use)
    jailbreak_items: int = 0  #: harmful test requests per attack family (0: all)
    #: models behind OpenAI-compatible APIs in the applications tables: label -> {model, base_url, api_key_env}
    closed_models: dict = field(default_factory=dict)
    bars: bool = False  #: a transient progress bar over the parts


ALIGNED = ("ppo", "dpo", "grpo", "rejection")


def run_evaluate(cfg: EvaluateConfig) -> Result:
    """Base, SFT and aligned checkpoints on held-out data: reward-model accuracy against the annotators, win rates
    against SFT, InstructGPT's truthfulness / hallucination / safety rows, decoding and prompting studies."""
    suite, models, max_new = cfg.suite, cfg.models, cfg.max_new_tokens
    aligned = [k for k in ALIGNED if k in models]
    res: dict = {"models": models}
    head: dict = {}
    bon = bool(cfg.reward_model) and cfg.best_of_n > 0 and "sft" in models
    steps = [("reward_models", bool(cfg.reward_model)), ("best_of_n", bon), ("win_rates", bool(aligned) and "sft" in models),
             ("alignment", True), ("applications", True), ("decoding", "sft" in models), ("prompting", True)]
    bar = _bar([k for k, on in steps if on], "evaluate", cfg.bars)
    if cfg.reward_model:
        held = {"suite pairs_test": [str(Path(suite) / "preferences" / "pairs_test.jsonl")]}
        if cfg.sampled_rankings_test:
            held["SFT samples, test prompts"] = [cfg.sampled_rankings_test]
        res["reward_models"] = C.reward_model_accuracy(suite, cfg.reward_model, cfg.safety_reward_model, held,
                                                       cfg.safety_rule, cfg.safety_threshold)
        first = next(iter(res["reward_models"].values()))
        if "models" in first:
            head["rm_accuracy"] = next(iter(first["models"].values()))["accuracy"]
            head["annotator_agreement"] = first["annotator_agreement"]
        bar()
    if bon:
        res["best_of_n"] = C.best_of_n(suite, models["sft"], cfg.reward_model,
                                       C.held_out_prompts(suite, cfg.best_of_n_prompts, safety=False), cfg.best_of_n,
                                       max_new)
        bar()
    if aligned and "sft" in models:
        recs = C.held_out_prompts(suite, cfg.prompts)
        res["win_rates"] = C.win_rates(suite, recs, {k: models[k] for k in aligned}, models["sft"], max_new,
                                       cfg.kl_prompts, cfg.win_samples)
        for k in aligned:
            w = res["win_rates"][k]["sampled"]
            head[f"{k}_win_loss"] = f"{w['win']:.2f}/{w['loss']:.2f}"
        bar()
    res["alignment"] = C.alignment_columns(suite, models, cfg.limit, cfg.limit, max_new)
    for k in ("base", *aligned):
        if k in res["alignment"]:
            head[f"{k}_refusal"] = res["alignment"][k]["refusal_rate"]
    bar()
    res["applications"] = C.applications_study(suite, models, cfg.index, cfg.rag_k, cfg.applications_items,
                                               cfg.jailbreak_items or None, max_new, cfg.closed_models)
    if "tool" in res["applications"].get("sft", {}):
        head["sft_tool_gain"] = round(res["applications"]["sft"]["tool"]["gain"], 3)
    bar()
    if "sft" in models:
        res["decoding"] = C.decoding_study(models["sft"], suite, cfg.decoding_prompts, 2, max_new)
        bar()
    res["prompting"] = {}
    for k, chat in (("base", False), ("sft", True)):
        if k in models:
            res["prompting"][k] = C.prompting_study(models[k], suite, limit=cfg.prompting_items, k=cfg.few_shot,
                                                    chat=chat)
    bar()
    path = Path(cfg.out) / "evaluation.json"
    C.save(res, path)
    return Result(head, {"evaluation": str(path)})


def _bar(parts: list[str], stage: str, show: bool):
    """A progress bar over a stage's named parts; call the returned function after each part."""
    t = tqdm(total=len(parts), desc=f"  {stage}", unit="part", leave=False, dynamic_ncols=True, disable=not show)
    it = iter(parts)
    t.set_postfix_str(next(it, ""))

    def step():
        t.update(1)
        t.set_postfix_str(next(it, ""))
        if t.n >= t.total:
            t.close()
    return step


@dataclass
class ReportConfig:
    out: str = "runs/report"  #: folder for card.md, plots/ and checks.json
    run: str = ""  #: the `lmstack run` folder the card reads
    title: str | None = None  #: the card's title (default: "Report card")
    kl_bound: float | None = None  #: the KL a policy may reach in the checks (default: the config's claims.kl_bound)
    compare: dict = field(default_factory=dict)  #: label -> another run folder shown side by side for effects of scale


def run_report(cfg: ReportConfig) -> Result:
    """The report card over the run folder; the course's claims checked and printed."""
    path, checks = write_card(cfg.run, cfg.out, title=cfg.title, kl_bound=cfg.kl_bound, compare=cfg.compare)
    print("\n".join(summary_lines(checks)), flush=True)
    claims = [c for c in checks if c.get("kind", "claim") == "claim"]  # effects of scale are shown, not counted
    return Result({"card": str(path), "claims_held": f"{sum(c['ok'] for c in claims)}/{len(claims)}"},
                  {"report": str(path)})


COURSE_STEPS = {"data": (DataConfig, run_data), "evaluate": (EvaluateConfig, run_evaluate),
                "report": (ReportConfig, run_report)}


def recipe(name: str):
    """(config class, run function) of a registry recipe or a course step."""
    return COURSE_STEPS[name] if name in COURSE_STEPS else RECIPES[name].load()


# ---------------------------------------------------------------------------------------- wiring


@dataclass(frozen=True)
class Stage:
    recipe: str  # a RECIPES name or a COURSE_STEPS name
    inputs: dict[str, str] = field(default_factory=dict)  # config field <- context key (needed)
    optional: dict[str, str] = field(default_factory=dict)  # config field <- context key, when the key is there
    outputs: dict[str, str | Callable] = field(default_factory=dict)  # artifact -> context key (or cfg -> key)
    resume: bool = False  # the recipe continues a killed run from its own checkpoint: gets `lmstack run --resume`
    wire: Callable | None = None  # (params, ctx) -> more config fields, for wiring a mapping cannot say
    headline: Callable[[dict], dict] = dict  # the stage's line in the log and stage.json, from Result.summary


def _reuse_samples(suite_file: str | None):
    """A stage that wants ranked SFT samples reuses those an earlier reward stage sampled: training data = the
    suite's `suite_file` (None: none) + those samples, validation = the suite's held-out pairs, or for samples alone
    the held-out prompts' ranked samples, the same kind of data (InstructGPT's labelling once, Llama 2's second
    reward model and DPO on the same preferences)."""

    def wire(params: dict, ctx) -> dict:
        if "data" in params or "sampled_rankings" not in ctx.paths:
            return {}
        prefs = Path(ctx.need("suite")) / "preferences"
        written = [str(prefs / suite_file)] if suite_file else []
        val = [str(prefs / "pairs_test.jsonl")]
        if not suite_file and "sampled_rankings_test" in ctx.paths:
            val = [ctx.paths["sampled_rankings_test"]]
        return {"data": written + [ctx.paths["sampled_rankings"]], "val_data": val}
    return wire


def _reward_wire(params: dict, ctx) -> dict:
    if not params.get("sample_rankings"):
        return {}
    extra = _reuse_samples("rankings.jsonl")(params, ctx)
    return {**extra, "sample_rankings": 0} if extra else {}


def _evaluate_wire(params: dict, ctx) -> dict:
    """The checkpoints the run has, and PPO's rule and threshold for Llama 2's two reward models."""
    extra = {}
    if "models" not in params:
        extra["models"] = {k: ctx.paths[k] for k in ("base", "sft", *ALIGNED) if k in ctx.paths}
    ppo = next((st for st in ctx.cfg["stages"] if st.get("stage") == "ppo"), {})
    for key in ("safety_rule", "safety_threshold"):
        if key not in params and key in ppo:
            extra[key] = ppo[key]
    return extra


def _flan_headline(r: dict) -> dict:
    return {"held_out": ",".join(r.get("hold_out") or [r["config"]["hold_out"]]), "base_zero_shot_acc": r["base_zero_shot"]["rank_acc"],
            "base_few_shot_acc": r["base_few_shot"]["rank_acc"], "sft_zero_shot_acc": r["flan_zero_shot"]["rank_acc"]}


def _numbers(s: dict) -> dict:
    return {k: v for k, v in s.items() if isinstance(v, (int, float))}


def _aligned(name: str, **kw) -> Stage:
    return Stage(name if name != "rejection" else "rejection-sampling", inputs={"model": "sft", "suite": "suite"},
                 optional={"reward_model": "reward_model", "safety_reward_model": "safety_reward_model"},
                 outputs={"model": name}, headline=_numbers, **kw)


STAGES: dict[str, Stage] = {
    "data": Stage("data", outputs={"suite": "suite", "tokens": "tokens", "tokenizer": "tokenizer", "index": "index"}),
    "scaling": Stage("scaling", inputs={"data": "tokens"},
                     headline=lambda s: {"alpha_N": s["L_of_N"]["fit"]["alpha"],
                                         "val_losses": "/".join(f"{p['val_loss']:.3f}" for p in s["L_of_N"]["points"])}),
    "pretrain": Stage("pretrain", inputs={"data": "tokens"}, outputs={"model": "base"}, resume=True,
                      headline=lambda s: {k: s.get(k) for k in ("final_loss", "val_ppl", "tokens_per_s", "params")}),
    "sft": Stage("flan", inputs={"base": "base", "suite": "suite"}, optional={"rag_index": "index"},
                 outputs={"model": "sft"}, resume=True,
                 headline=_flan_headline),
    "reward": Stage("reward", inputs={"model": "sft", "suite": "suite"}, wire=_reward_wire, resume=True,
                    outputs={"model": lambda cfg: "safety_reward_model" if cfg.subset == "safety" else "reward_model",
                             "sampled_rankings": "sampled_rankings",
                             "sampled_rankings_test": "sampled_rankings_test"},
                    headline=lambda s: {k: s[k] for k in ("subset", "val_accuracy", "val_pairs",
                                                          "val_sampled_accuracy", "final_loss")
                                        if s.get(k) is not None}),
    "ppo": _aligned("ppo", resume=True),
    # DPO learns from the annotators' rankings of the SFT policy's own samples only (on-policy, as Llama 2's
    # preference data were), not the suite's scripted pairs: 23% of those reject "I'm sorry, but I can't help
    # with that." on harmless requests, and DPO carried that to harmful ones ("I't help with that": refusals
    # 87-93% against SFT's 100% on three seeds; likelihood displacement, Razin et al. 2025).
    "dpo": _aligned("dpo", resume=True, wire=_reuse_samples(None)),
    "grpo": _aligned("grpo", resume=True),
    "rejection": _aligned("rejection", resume=True),
    "evaluate": Stage("evaluate", inputs={"suite": "suite"},
                      optional={"reward_model": "reward_model", "safety_reward_model": "safety_reward_model",
                                "sampled_rankings_test": "sampled_rankings_test", "index": "index"},
                      wire=_evaluate_wire, outputs={"evaluation": "evaluation"}),
    "report": Stage("report", wire=lambda params, ctx: {"run": str(ctx.out)}, outputs={"report": "report"}),
}
