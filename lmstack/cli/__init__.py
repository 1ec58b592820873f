"""`lmstack <stage> ...`: one command line over every life stage.

Errors a user can fix (bad paths, configs, values) are LmstackError: printed as one line, exit 1.
"""

from __future__ import annotations

import argparse
import sys

from lmstack.errors import LmstackError


def _info(args) -> int:
    from lmstack.model.config import PRESETS, preset
    from lmstack.model.info import format_info

    if args.model in PRESETS:
        cfg, name = preset(args.model), args.model
    else:
        from pathlib import Path

        from lmstack.model.checkpoint import read_json
        from lmstack.model.hf import config_from_hf

        p = Path(args.model)
        if p.is_dir():
            cfg, name = config_from_hf(read_json(p / "config.json"), where=str(p / "config.json")), str(p)
        elif p.suffix == ".gguf" and p.is_file():
            import lmstack
            cfg, name = lmstack.load(p).config, str(p)
        else:
            raise LmstackError(f"{args.model}: not a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
    print(format_info(name, cfg))
    return 0


def _presets(args) -> int:
    from lmstack.model.config import PRESETS, preset
    from lmstack.model.info import human, model_info

    print(f"{'preset':<14} {'arch':<6} {'params':>9} {'layers':>6} {'d_model':>7} {'heads':>5} {'context':>7}")
    for name in PRESETS:
        cfg = preset(name)
        n = model_info(cfg)["params"]
        print(f"{name:<14} {cfg.arch:<6} {human(n):>9} {cfg.n_layer:>6} {cfg.d_model:>7} {cfg.n_head:>5} "
              f"{cfg.max_seq_len:>7}")
    return 0


def _convert(args) -> int:
    import lmstack

    lm = lmstack.load(args.src, dtype=args.dtype)
    lm.save(args.out, stage="convert", parent=str(args.src))
    print(f"wrote {args.out} ({lm.config.arch}, {lm.model.num_params():,} parameters)")
    return 0


def _demo(args) -> int:
    from lmstack.course.demo import run_demo

    run_demo(args.out, steps=args.steps)
    return 0


def _data_builtin(args) -> int:
    import time

    from lmstack.data.builtin import build_suite, summary

    t0 = time.time()
    print(summary(build_suite(args.out, seed=args.seed, size=args.size)))
    print(f"wrote {args.out} in {time.time() - t0:.1f}s")
    return 0


def _run(args) -> int:
    from lmstack.course.pipeline import run_pipeline

    run_pipeline(args.config, args.out, resume=args.resume, only=args.only)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmstack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter count, shapes and memory of a preset or checkpoint")
    p.add_argument("model", help="preset name, checkpoint folder or .gguf file")
    p.set_defaults(func=_info)

    p = sub.add_parser("presets", help="list the model presets")
    p.set_defaults(func=_presets)

    p = sub.add_parser("convert", help="load any supported model (folder, .gguf, hub name) and save a checkpoint")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.set_defaults(func=_convert)

    p = sub.add_parser("run", help="the whole course as a pipeline (default: tiny-cpu on the built-in suite)")
    p.add_argument("config", nargs="?", default=None, help="tiny-cpu (default), small-gpu, smollm2, or a YAML path")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="skip finished stages; continue the current one")
    p.add_argument("--only", nargs="*", default=None, help="run only these stages, over an existing run's outputs")
    p.set_defaults(func=_run)

    p = sub.add_parser("demo", help="a short end-to-end example: corpus, tokenizer, tiny model, generation")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=300)
    p.set_defaults(func=_demo)

    from lmstack.cli.tokenizer import add_parser as add_tokenizer
    add_tokenizer(sub)

    from lmstack.cli.infer import add_parser as add_infer
    add_infer(sub)

    from lmstack.cli.serve import add_parser as add_serve
    add_serve(sub)

    data = sub.add_parser("data", help="datasets: the built-in suite, token shards")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("builtin", help="generate the built-in suite (world, corpus, tasks, preferences)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--seed", type=int, default=0, help="world seed (same seed and size -> same bytes)")
    b.add_argument("--size", default="tiny",
                   help="tiny (~300KB corpus), small (~5MB), medium (~50MB), large (~300MB) or a size like 2MB")
    b.set_defaults(func=_data_builtin)
    from lmstack.cli.data import add_prepare_parser
    add_prepare_parser(dsub)

    from lmstack.cli.train import add_parser as add_train
    add_train(sub)
    from lmstack.cli.prefs import add_parsers as add_pref
    add_pref(sub)

    ev = sub.add_parser("eval", help="evaluation: perplexity, task harness, win rates, safety")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    from lmstack.evaluate.perplexity import add_parser as add_ppl
    add_ppl(esub)
    from lmstack.cli.eval import add_parsers as add_eval
    add_eval(esub, sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except LmstackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
