"""Command lines for the training recipes, generated from each recipe's config dataclass.

Every field becomes `--field-name`; `--set key=value` overrides model config fields. One source of
truth: the dataclass documents the defaults, the CLI cannot drift from it.
"""

from __future__ import annotations

import dataclasses
import json
import typing

from lmstack.errors import LmstackError


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_dataclass_args(p, cls, help_text: dict | None = None) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        h = (help_text or {}).get(f.name, "")
        t = hints[f.name]
        if f.name == "overrides":
            p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="model config override, e.g. --set n_layer=4 (repeatable)")
        elif t is bool:
            p.add_argument(flag, action=argparse_bool(), default=default, help=h)
        elif isinstance(default, (list, tuple)):
            p.add_argument(flag, nargs="*", default=list(default), type=_parse_value if f.name == "betas" else str,
                           help=h)
        else:
            base = next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
            p.add_argument(flag, type=base if base in (int, float, str) else str, default=default,
                           help=f"{h} (default: {default})".strip())


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


def dataclass_from_args(cls, args):
    kw = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if f.name == "overrides":
            d = {}
            for item in v:
                if "=" not in item:
                    raise LmstackError(f"--set {item!r}: expected KEY=VALUE")
                k, val = item.split("=", 1)
                d[k] = _parse_value(val)
            v = d
        elif f.name == "betas":
            v = tuple(float(b) for b in v)
        kw[f.name] = v
    return cls(**kw)


def add_parser(sub) -> None:
    from lmstack.train.pretrain import PretrainConfig

    p = sub.add_parser("pretrain", help="next-token-prediction pretraining on prepared token data")
    add_dataclass_args(p, PretrainConfig, {
        "data": "prepared token folders: DIR or NAME=DIR (repeatable)",
        "mix": "sampling weights by source, NAME=WEIGHT ... (GPT-3 style: by weight, not size)",
        "preset": "model preset (lmstack presets)",
        "init_from": "start from this checkpoint instead of random weights",
        "resume": "continue from the latest checkpoint in --out",
    })
    p.set_defaults(func=_pretrain)

    from lmstack.train.sft import SFTConfig

    p = sub.add_parser("sft", help="supervised fine-tuning on instruction data (full or LoRA)")
    add_dataclass_args(p, SFTConfig, {
        "model": "checkpoint to fine-tune (folder, .gguf, hub name)",
        "data": "instruction data: JSONL/JSON (messages, Alpaca, ShareGPT) or hf:NAME[:CONFIG][:SPLIT]",
        "packing": "pack examples into sequences with document-masked attention (--no-packing pads)",
        "train_on": "assistant (the chat template's mask) or all",
        "lora_targets": "module names to adapt (qkv, o_proj, up, down)",
    })
    p.set_defaults(func=_sft)

    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base and write a plain checkpoint")
    p.add_argument("--adapter", required=True, help="adapter folder written by `lmstack sft --lora`")
    p.add_argument("--base", default=None, help="base checkpoint (default: the one named in the adapter folder)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_merge_lora)

    from lmstack.train.flan import FlanConfig

    p = sub.add_parser("flan", help="FLAN's protocol: tune on all clusters but one, evaluate zero-shot on it")
    add_dataclass_args(p, FlanConfig, {"hold_out": "the cluster kept out of training and evaluated zero-shot",
                                       "base": "pretrained checkpoint (default: pretrain one on the suite)"})
    p.set_defaults(func=_flan)

    from lmstack.train.scaling import ScalingConfig

    p = sub.add_parser("scaling", help="train a series of sizes and token budgets; fit Kaplan's power laws")
    add_dataclass_args(p, ScalingConfig, {"widths": "d_model of each size for L(N)",
                                          "budget_steps": "training steps of each budget for L(D)"})
    p.set_defaults(func=_scaling)


def _pretrain(args) -> int:
    from lmstack.train.pretrain import PretrainConfig, pretrain

    s = pretrain(dataclass_from_args(PretrainConfig, args))
    if s.get("final_loss") is not None:
        vp = f", val perplexity {s['val_ppl']:.2f}" if s.get("val_ppl") else ""
        print(f"done: {s['steps']} steps, final loss {s['final_loss']:.4f}{vp}; model in {args.out}/model")
    return 0


def _scaling(args) -> int:
    from lmstack.train.scaling import ScalingConfig, run_scaling

    r = run_scaling(dataclass_from_args(ScalingConfig, args))
    for key in ("L_of_N", "L_of_D"):
        f = r[key]["fit"]
        print(f"{key}: x_c={f['scale']:.4g} alpha={f['alpha']:.4f} E={f['E']:.4f}")
    print(f"report: {args.out}/scaling.md, plot: {args.out}/scaling.png")
    return 0


def _sft(args) -> int:
    from lmstack.train.sft import SFTConfig, sft

    s = sft(dataclass_from_args(SFTConfig, args))
    print(f"done: {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}; model in {args.out}/model")
    return 0


def _merge_lora(args) -> int:
    from lmstack.train.lora import merge_lora

    path = merge_lora(args.adapter, args.out, base=args.base)
    print(f"wrote {path}")
    return 0


def _flan(args) -> int:
    from lmstack.train.flan import FlanConfig, run_flan

    r = run_flan(dataclass_from_args(FlanConfig, args))
    print(open(f"{args.out}/flan_report.md").read())
    return 0 if r else 1
