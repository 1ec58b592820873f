"""`lmstack run`: stages in order, headline numbers per stage, --resume skips finished stages."""

import json

import pytest

from lmstack.errors import LmstackError
from lmstack.pipeline import load_config, run_pipeline


def test_shipped_configs_parse():
    for name in ("tiny-cpu", "small-gpu", "smollm2"):
        assert load_config(name)["stages"]


def test_unknown_stage_and_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - stage: telepathy\n")
    with pytest.raises(LmstackError, match="telepathy"):
        load_config(str(bad))
    with pytest.raises(LmstackError, match="no such pipeline config"):
        load_config("nope")


def test_mini_pipeline_runs_and_resumes(tmp_path, capsys):
    cfg = tmp_path / "mini.yaml"
    cfg.write_text("""
name: mini
stages:
  - stage: data
    size: tiny
    vocab_size: 512
  - stage: pretrain
    preset: llama-tiny
    seq_len: 128
    micro_batch: 4
    steps: 4
    eval_interval: 4
    eval_batches: 2
  - stage: sft
    hold_out: sentiment
    steps: 2
    micro_batch: 4
    seq_len: 128
    eval_items: 2
""")
    out = tmp_path / "run"
    res = run_pipeline(str(cfg), str(out))
    assert set(res) == {"data", "pretrain", "sft"}
    assert res["pretrain"]["val_ppl"] > 1 and 0 <= res["sft"]["sft_zero_shot_acc"] <= 1
    state = json.loads((out / "pipeline.json").read_text())
    assert state["paths"]["sft"].endswith("instructions/model")
    capsys.readouterr()
    again = run_pipeline(str(cfg), str(out), resume=True)
    assert "done earlier" in capsys.readouterr().out
    assert again["pretrain"]["val_ppl"] == res["pretrain"]["val_ppl"]
