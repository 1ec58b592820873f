"""`lmstack <recipe>`: one command per entry of the recipe registry, generated from its config dataclass.

Every field becomes `--field-name` with the field's `#:` comment as help (lmstack.options), so the command
line cannot drift from the defaults the dataclass documents. The command runs `run(cfg)` and prints the
recipe's summary line below. `merge-lora` is the one hand-written training command.
"""

from __future__ import annotations

import json
import os

from lmstack.options import add_dataclass_args, dataclass_from_args
from lmstack.train.lora import merge_lora
from lmstack.train.recipe import RECIPES, Result


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pretrain(res: Result, cfg) -> list[str]:
    s = res.summary
    if s.get("final_loss") is None:  # a resumed run that had nothing left to do
        return []
    vp = f", val perplexity {s['val_ppl']:.2f}" if s.get("val_ppl") else ""
    return [f"done: {s['steps']} steps, final loss {s['final_loss']:.4f}{vp}; model in {res.artifacts['model']}"]


def _scaling(res: Result, cfg) -> list[str]:
    lines = []
    for key in ("L_of_N", "L_of_D"):
        if key not in res.summary:  # no budget sweep asked for
            continue
        f = res.summary[key]["fit"]
        lines.append(f"{key}: x_c={f['scale']:.4g} alpha={f['alpha']:.4f} E={f['E']:.4f}")
    return lines + [f"report: {cfg.out}/scaling.md, plot: {cfg.out}/scaling.png"]


def _sft(res: Result, cfg) -> list[str]:
    s = res.summary
    return [f"done: {s['steps']} steps, loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}; "
            f"model in {res.artifacts['model']}"]


def _flan(res: Result, cfg) -> list[str]:
    with open(res.artifacts["report"]) as f:
        return [f.read()]


def _reward(res: Result, cfg) -> list[str]:
    s = res.summary
    return [f"done: {s['steps']} steps, held-out accuracy {_fmt(s['val_accuracy'])} on {s['val_pairs']} pairs, "
            f"mean margin {_fmt(s['val_margin'])}; reward model in {res.artifacts['model']}"]


def _policy_gradient(res: Result, cfg) -> list[str]:  # ppo and grpo
    s = res.summary
    return [f"done: {s['steps']} iterations, reward {s['reward_first']:.3f} -> {s['reward_last']:.3f}, "
            f"KL {s['kl_last']:.3f}; policy in {res.artifacts['model']}"]


def _dpo(res: Result, cfg) -> list[str]:
    s = res.summary
    return [f"done: {s['steps']} steps, loss {_fmt(s['final_loss'])}, held-out implicit-reward accuracy "
            f"{_fmt(s.get('val_reward_accuracy'))}; policy in {res.artifacts['model']}"]


def _rejection(res: Result, cfg) -> list[str]:
    rounds = [f"round {r['round']}: mean reward {r['reward_mean']:.3f}, best-of-N {r['reward_best_of_n']:.3f}"
              for r in res.summary["rounds"]]
    return rounds + [f"policy in {res.artifacts['model']}"]


# What each command prints when its run is done; a recipe not named here prints its summary as JSON.
SUMMARY_LINES = {"pretrain": _pretrain, "scaling": _scaling, "sft": _sft, "flan": _flan, "reward": _reward,
                 "ppo": _policy_gradient, "grpo": _policy_gradient, "dpo": _dpo, "rejection-sampling": _rejection}


def _json_lines(res: Result, cfg) -> list[str]:
    return [json.dumps(res.summary, indent=2, default=str)]


def add_parsers(sub, only: set[str] | None = None) -> None:
    """A subcommand per recipe. Flags are added for the commands in `only` (all when None): building a recipe's
    flags imports its module (and torch), which `lmstack --help` and the other commands do not need."""
    for name, recipe in RECIPES.items():
        p = sub.add_parser(name, help=recipe.help, description=recipe.help)
        if only is None or name in only:
            cfg_cls, _ = recipe.load()
            add_dataclass_args(p, cfg_cls)
        p.set_defaults(func=_runner(name))

    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base and write a plain checkpoint")
    p.add_argument("--adapter", required=True, help="adapter folder written by `lmstack sft --lora`")
    p.add_argument("--base", default=None, help="base checkpoint (default: the one named in the adapter folder)")
    p.add_argument("--out", required=True, help="folder for the merged checkpoint")
    p.set_defaults(func=_merge_lora)


def _runner(name: str):
    def run_command(args) -> int:
        cfg_cls, run = RECIPES[name].load()
        cfg = dataclass_from_args(cfg_cls, args)
        res = run(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun, the summary once
            for line in SUMMARY_LINES.get(name, _json_lines)(res, cfg):
                print(line)
        return 0 if res.summary else 1
    return run_command


def _merge_lora(args) -> int:

    path = merge_lora(args.adapter, args.out, base=args.base)
    print(f"wrote {path}")
    return 0
