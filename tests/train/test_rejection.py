"""Rejection sampling: best-of-N selection, a round that writes the kept answers and fine-tunes on them,
bad input, and the command lines of every preference recipe."""

import argparse
import json

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.train.prefs import PrefConfig, encode_prompts, load_prompts
from lmstack.train.rejection import RejectionConfig, best_of_n, rejection_sampling
from lmstack.train.reward import Rewards


def test_best_of_n():
    idx, best = best_of_n(torch.tensor([0.1, 0.9, 0.3, -1.0, -2.0, -0.5]), 3)
    assert idx.tolist() == [1, 2] and best.tolist() == pytest.approx([0.9, -0.5])


def test_rounds_keep_the_best_and_fine_tune(tiny_ckpt, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat.", "Say something."]))
    # Reward: answer length (known best: the longest of the N samples); deterministic, no model needed.
    rewards = Rewards(rule=lambda rec, text, ids: float(len(ids)))
    s = rejection_sampling(RejectionConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "rs"), rounds=2,
                                           prompts_per_round=0, samples=4, max_new_tokens=6, missing_eos_penalty=0.0,
                                           sft_epochs=1, micro_batch=2, seq_len=128, quiet=True), rewards=rewards)
    r1, r2 = s["rounds"]
    assert r1["reward_best_of_n"] >= r1["reward_mean"] and r1["kept"] == 3
    kept = [json.loads(x) for x in (tmp_path / "rs" / "round_2" / "best.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and all(k["messages"][-1]["role"] == "assistant" for k in kept)
    assert r2["reward_kept"] >= r1["reward_kept"]  # the kept set only improves across rounds
    assert (tmp_path / "rs" / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "rs" / "model" / "lmstack.json").read_text())["stage"] == "rejection-sampling"
    assert (tmp_path / "rs" / "rejection_curves.png").exists()


def test_prompts_bad_and_overlong(tiny_lm, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"prompt": "word " * 300}) + "\n"
                    + json.dumps({"prompt": []}) + "\n")
    cfg = PrefConfig(data=[str(data)], out=str(tmp_path))
    with pytest.raises(LmstackError, match=r"p.jsonl:3"):
        load_prompts(cfg)
    cfg.skip_bad = True
    recs, st = load_prompts(cfg)
    assert st["bad_records"] == 1 and len(recs) == 2
    keep, ids, dropped = encode_prompts(tiny_lm.tokenizer, recs, 100)
    assert len(keep) == 1 and dropped == 1
    with pytest.raises(LmstackError, match="tokens; at most 100"):
        encode_prompts(tiny_lm.tokenizer, recs, 100, overlong="error")


def test_command_lines():
    from lmstack.cli.prefs import add_parsers

    ap = argparse.ArgumentParser()
    add_parsers(ap.add_subparsers(dest="cmd"))
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
