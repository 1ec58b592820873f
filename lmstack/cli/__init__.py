"""`lmstack <stage> ...`: one command line over every life stage.

The training commands are generated from the recipe registry (lmstack.cli.recipes); the others are written
by hand here and in the sibling modules. Errors a user can fix (bad paths, configs, values) are
LmstackError: printed as one line, exit 1. The commands below import what they run when they run, and a
recipe's flags are built only when that recipe is the command, so `lmstack --help` and the other commands
do not import the trainers or the course.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmstack.cli import data, infer, recipes, serve, tokenizer
from lmstack.cli import eval as evaluation
from lmstack.cli.common import dispatch
from lmstack.course.demo import run_demo
from lmstack.course.pipeline import run_pipeline
from lmstack.errors import LmstackError
from lmstack.lm import load
from lmstack.model.checkpoint import read_json
from lmstack.model.config import PRESETS, preset
from lmstack.model.gguf import write_gguf
from lmstack.model.hf import config_from_hf
from lmstack.model.info import format_info, human, model_info


def _info(args) -> int:

    if args.model in PRESETS:
        cfg, name = preset(args.model), args.model
    else:


        p = Path(args.model)
        if p.is_dir():
            cfg, name = config_from_hf(read_json(p / "config.json"), where=str(p / "config.json")), str(p)
        elif p.suffix == ".gguf" and p.is_file():
            cfg, name = load(p).config, str(p)
        else:
            raise LmstackError(f"{args.model}: not a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    print(format_info(name, cfg))
    return 0


def _presets(args) -> int:

    print(f"{'preset':<14} {'arch':<6} {'params':>9} {'layers':>6} {'d_model':>7} {'heads':>5} {'context':>7}")
    for name in PRESETS:
        cfg = preset(name)
        n = model_info(cfg)["params"]
        print(f"{name:<14} {cfg.arch:<6} {human(n):>9} {cfg.n_layer:>6} {cfg.d_model:>7} {cfg.n_head:>5} "
              f"{cfg.max_seq_len:>7}")
    return 0


def _convert(args) -> int:

    lm = load(args.src, dtype=args.dtype)
    lm.save(args.out, stage="convert", parent=str(args.src))
    print(f"wrote {args.out} ({lm.config.arch}, {lm.model.num_params():,} parameters)")
    return 0


def _export_gguf(args) -> int:
    lm = load(args.checkpoint)
    out = write_gguf(lm, args.out, args.quantize)
    print(f"wrote {out} ({args.quantize}, {out.stat().st_size / 2**20:.1f} MiB): llama-cli -m {out}; "
          f"ollama: FROM {out.resolve()} in a Modelfile")
    return 0


def _demo(args) -> int:

    run_demo(args.out, steps=args.steps)
    return 0


def _run(args) -> int:

    run_pipeline(args.config, args.out, resume=args.resume, only=args.only, seed=args.seed)
    return 0


def build_parser(commands: set[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; `commands`: the recipe commands whose flags to build (None: all of them)."""
    parser = argparse.ArgumentParser(prog="lmstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter count, shapes and memory of a preset or checkpoint")
    p.add_argument("model", help="preset name, checkpoint folder or .gguf file")
    p.set_defaults(func=_info)

    p = sub.add_parser("presets", help="list the model presets")
    p.set_defaults(func=_presets)

    p = sub.add_parser("convert", help="load any supported model (folder, .gguf, hub name) and save a checkpoint")
    p.add_argument("src", help="checkpoint folder, .gguf file or hub name")
    p.add_argument("out", help="folder for the converted checkpoint")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights dtype (default: fp32)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("export", help="write a checkpoint in another tool's format (GGUF for llama.cpp and ollama)")
    xsub = p.add_subparsers(dest="export_format", required=True)
    p = xsub.add_parser("gguf", help="a GGUF file llama.cpp, ollama and LM Studio run (Llama-family checkpoints)")
    p.add_argument("checkpoint", help="checkpoint folder (or anything lmstack loads: .gguf, hub name)")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--quantize", default="f16", choices=["f16", "q8_0", "q4_0"],
                   help="weight type of the 2-D tensors (default f16; norms stay f32)")
    p.set_defaults(func=_export_gguf)

    p = sub.add_parser("run", help="the whole course as a pipeline (default: tiny-cpu on the built-in suite)")
    p.add_argument("config", nargs="?", default=None, help="tiny-cpu (default), small-gpu, smollm2, or a YAML path")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="skip finished stages; continue the current one")
    p.add_argument("--only", nargs="*", default=None, help="run only these stages, over an existing run's outputs")
    p.add_argument("--seed", type=int, default=None,
                   help="the run's seed instead of the config's (the course's claims are checked on several seeds)")
    p.set_defaults(func=_run)

    p = sub.add_parser("demo", help="a short end-to-end example: corpus, tokenizer, tiny model, generation")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--steps", type=int, default=300, help="training steps of the tiny model (default: 300)")
    p.set_defaults(func=_demo)

    for module in (tokenizer, infer, serve, data):
        module.add_parser(sub)
    recipes.add_parsers(sub, only=commands)

    ev = sub.add_parser("eval", help="evaluation: perplexity, task harness, win rates, safety")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    evaluation.add_parsers(esub, sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    # Only the named command's recipe flags: building them imports that recipe (and torch).
    return dispatch(build_parser({command} if command else set()).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
