"""The command line: outputs, and one-line errors (no traceback, non-zero exit) for bad input."""

import dataclasses
import json
import shutil
import subprocess
import sys

import pytest

from lmstack.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words):
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


def test_info_preset_counts_gpt3_small(capsys):
    code, out, _ = run(capsys, "info", "gpt3-small")
    assert code == 0 and "125,2" in out and "KV cache" in out


def test_generate_and_greedy_is_deterministic(capsys, tiny_ckpt):
    a = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "The cat", "--max-new-tokens", "8")
    b = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "The cat", "--max-new-tokens", "8")
    assert a[0] == 0 and a[1] == b[1] and a[1].startswith("The cat")


def test_generate_stream_prints_same_text(capsys, tiny_ckpt):
    _, plain, _ = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "Mina", "--max-new-tokens", "10")
    _, streamed, _ = run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "Mina", "--max-new-tokens", "10",
                         "--stream")
    assert plain == streamed


def test_chat_keeps_conversation(capsys, tiny_ckpt, monkeypatch):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\nhow are you?\n/exit\n"))
    code, out, _ = run(capsys, "chat", "--model", str(tiny_ckpt), "--max-new-tokens", "5")
    assert code == 0 and out.count("\n") == 2


def test_missing_weights(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    (d / "model.safetensors").unlink()
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "no weights file")


def test_corrupt_weights(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "model.safetensors", "corrupt")


def test_unknown_architecture(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(cfg))
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "config.json", "mamba")


def test_tokenizer_too_big_for_model(capsys, tiny_ckpt, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_ckpt, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(cfg))
    # Shrink the embedding too so the weights match the config and only the tokenizer is at fault.
    from safetensors.torch import load_file, save_file
    sd = load_file(d / "model.safetensors")
    sd = {k: (v[:100] if v.shape[0] == 300 else v) for k, v in sd.items()}
    save_file(sd, d / "model.safetensors")
    one_line_error(*run(capsys, "generate", "--model", str(d), "--prompt", "x")[::2], "tokenizer", "vocab_size")


def test_prompt_longer_than_context(capsys, tiny_ckpt):
    one_line_error(*run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "cat " * 400)[::2], "context")


@pytest.mark.parametrize("flag,value,word", [("--temperature", "-1", "temperature"), ("--top-p", "0", "top_p"),
                                             ("--top-p", "1.5", "top_p")])
def test_invalid_sampling_values(capsys, tiny_ckpt, flag, value, word):
    one_line_error(*run(capsys, "generate", "--model", str(tiny_ckpt), "--prompt", "x", flag, value)[::2], word)


def test_missing_model_path(capsys, tmp_path):
    one_line_error(*run(capsys, "generate", "--model", str(tmp_path / "nope"), "--prompt", "x")[::2], "nope")


def test_hub_name_offline_is_clear(capsys):
    one_line_error(*run(capsys, "generate", "--model", "someorg/somemodel", "--prompt", "x")[::2], "offline")


def test_real_process_prints_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lmstack", "generate", "--model", str(tmp_path), "--prompt", "x"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def _subparsers(parser, path=()):
    """(command path, parser) for every subcommand, depth first."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                yield (*path, name), p
                yield from _subparsers(p, (*path, name))


def test_every_option_has_help():
    import argparse
    import re

    from lmstack.cli import build_parser

    missing = []
    for path, p in _subparsers(build_parser()):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                continue
            if a.help is None or not re.sub(r"\(default: .*\)$", "", a.help).strip():
                missing.append(f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}")
    assert not missing, "options without a help line:\n" + "\n".join(missing)


@pytest.mark.parametrize("name", __import__("lmstack.train.recipe", fromlist=["RECIPES"]).RECIPES)
def test_recipe_help_lists_every_field(name, capsys):
    import dataclasses

    from lmstack.options import field_help
    from lmstack.train.recipe import RECIPES

    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    cfg_cls, run = RECIPES[name].load()
    assert callable(run)
    docs = field_help(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        flag = "--set" if f.name == "overrides" else "--" + f.name.replace("_", "-")
        assert flag in out, (name, flag)
        words = " ".join(docs.get(f.name, "<no #: comment>").split()[:3])
        assert words in " ".join(out.split()), (name, f.name, words)


def test_recipe_command_builds_the_config_and_prints_the_summary(capsys, monkeypatch):
    """`lmstack <recipe>`: flags -> the config dataclass (bools, lists, tuples, --set) -> run(cfg) -> summary."""
    import importlib

    from lmstack.train.recipe import RECIPES, Result

    cfg_cls, _ = RECIPES["pretrain"].load()
    seen = {}

    def fake_run(cfg, **hooks):
        seen["cfg"] = cfg
        return Result({"steps": cfg.steps, "final_loss": 1.5, "val_ppl": 4.0}, {"model": f"{cfg.out}/model"})

    monkeypatch.setattr(importlib.import_module(RECIPES["pretrain"].module), "run", fake_run)
    code, out, _ = run(capsys, "pretrain", "--data", "a", "b", "--steps", "7", "--compile", "--betas", "0.8", "0.9",
                       "--set", "n_layer=3", "--out", "o")
    cfg = seen["cfg"]
    assert code == 0 and isinstance(cfg, cfg_cls)
    assert (cfg.data, cfg.steps, cfg.compile, cfg.betas, cfg.overrides) == (["a", "b"], 7, True, (0.8, 0.9),
                                                                            {"n_layer": 3})
    assert cfg.lr == cfg_cls().lr  # untouched flags keep the dataclass's defaults
    assert out == "done: 7 steps, final loss 1.5000, val perplexity 4.00; model in o/model\n"
    one_line_error(*run(capsys, "pretrain", "--set", "n_layer")[::2], "KEY=VALUE")


@dataclasses.dataclass
class _Base:
    steps: int = 10  #: optimizer steps
    #: learning rate,
    #: peak
    lr: float = 1e-3
    names: list[str] = dataclasses.field(default_factory=lambda: [
        "a"])  #: which names


@dataclasses.dataclass
class _Child(_Base):
    steps: int = 20
    betas: tuple = (0.9, 0.95)  #: Adam betas
    init_from: str | None = None  #: a checkpoint
    flag: bool = False  #: a switch


def test_field_help_reads_doc_comments_with_inherited_fields():
    from lmstack.options import field_help

    assert field_help(_Child) == {"steps": "optimizer steps", "lr": "learning rate, peak", "names": "which names",
                                  "betas": "Adam betas", "init_from": "a checkpoint", "flag": "a switch"}


def test_from_dict_checks_each_field():
    from lmstack.errors import LmstackError
    from lmstack.options import from_dict

    c = from_dict(_Child, {"steps": 3, "lr": 1, "betas": [0.5, 0.6], "names": ["x", 2], "init_from": None},
                  "my.yaml: stage s")
    assert (c.steps, c.lr, c.betas, c.names, c.init_from, c.flag) == (3, 1, (0.5, 0.6), ["x", 2], None, False)
    for bad, words in [({"stepz": 1}, ["unknown field 'stepz'", "steps"]), ({"lr": "3e-3"}, ["'lr'", "float"]),
                       ({"steps": 1.5}, ["'steps'", "int"]), ({"flag": 1}, ["'flag'", "bool"]),
                       ({"names": "a"}, ["'names'", "list"]), ({"betas": ["x"]}, ["'betas'"])]:
        with pytest.raises(LmstackError) as e:
            from_dict(_Child, bad, "my.yaml: stage s")
        msg = str(e.value)
        assert msg.startswith("my.yaml: stage s: ") and "\n" not in msg, msg
        for w in words:
            assert w in msg, (w, msg)


def test_preference_command_lines_parse():
    from lmstack.cli import build_parser

    ap = build_parser()
    a = ap.parse_args(["ppo", "--model", "m", "--reward-model", "rm", "--kl-target", "6", "--no-whiten-advantages"])
    assert a.kl_target == 6.0 and a.whiten_advantages is False and callable(a.func)
    a = ap.parse_args(["dpo", "--model", "m", "--loss", "ipo", "--lora"])
    assert a.loss == "ipo" and a.lora
    a = ap.parse_args(["reward", "--model", "m", "--subset", "safety", "--margin-scale", "0.1"])
    assert a.subset == "safety" and a.margin_scale == 0.1
    a = ap.parse_args(["grpo", "--model", "m", "--reward-rule", "exact_match", "--clusters", "arithmetic"])
    assert a.clusters == ["arithmetic"]
    a = ap.parse_args(["rejection-sampling", "--model", "m", "--samples", "8"])
    assert a.samples == 8
    a = ap.parse_args(["merge-lora", "--adapter", "ad", "--out", "o"])
    assert (a.adapter, a.base, a.out) == ("ad", None, "o")


def test_every_readme_command_parses():
    """The README's commands are what the parser accepts (flags renamed or removed would fail here): every
    `lmstack ...` and `torchrun ... -m lmstack ...` line of its shell blocks, parsed (not run); and every command
    has a one-line help in `lmstack --help`."""
    import re
    import shlex
    from pathlib import Path

    from lmstack.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [ln.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for ln in block.splitlines()]
    cmds = []
    for ln in lines:
        for part in re.split(r"\s(?:&&|;)\s", ln):
            words = shlex.split(part, comments=True)
            if words[:1] == ["lmstack"]:
                cmds.append(words[1:])
            elif words[:1] == ["torchrun"] and "lmstack" in words:
                cmds.append(words[words.index("lmstack") + 1:])
    assert len(cmds) > 20
    for argv in cmds:
        command = next(a for a in argv if not a.startswith("-"))
        try:
            build_parser({command}).parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"README: `lmstack {' '.join(argv)}` does not parse") from e
    for path, p in _subparsers(build_parser()):
        assert p.description or any(path[-1] == c.dest for c in _choice_actions(build_parser(), path)), path


def _choice_actions(parser, path):
    """The help entries (`lmstack [sub] --help` lists them) of the subcommand at `path`, empty where none."""
    import argparse

    p = parser
    for name in path[:-1]:
        p = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return [c for c in sub._choices_actions if c.help]
