"""Rejection sampling: best-of-N selection, rounds that write the kept answers and fine-tune on them."""

import json

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.train.rejection import RejectionConfig, best_of_n, run
from lmstack.train.rewards import Rewards


def test_best_of_n():
    idx, best = best_of_n(torch.tensor([0.1, 0.9, 0.3, -1.0, -2.0, -0.5]), 3)
    assert idx.tolist() == [1, 2] and best.tolist() == pytest.approx([0.9, -0.5])


def test_rounds_keep_the_best_and_fine_tune(tiny_ckpt, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat.", "Say something."]))
    # Reward: answer length (known best: the longest of the N samples); deterministic, no model needed.
    rewards = Rewards(rule=lambda rec, text, ids: float(len(ids)))
    res = run(RejectionConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "rs"), rounds=2,
                              prompts_per_round=0, samples=4, max_new_tokens=6, missing_eos_penalty=0.0,
                              sft_epochs=1, micro_batch=2, seq_len=128, quiet=True), rewards=rewards)
    s = res.summary
    assert res.artifacts == {"model": str(tmp_path / "rs" / "model")} and s["model"] == res.artifacts["model"]
    r1, r2 = s["rounds"]
    assert r1["reward_best_of_n"] >= r1["reward_mean"] and r1["kept"] == 3
    kept = [json.loads(x) for x in (tmp_path / "rs" / "round_2" / "best.jsonl").read_text().splitlines()]
    assert len(kept) == 3 and all(k["messages"][-1]["role"] == "assistant" for k in kept)
    assert r2["reward_kept"] >= r1["reward_kept"]  # the kept set only improves across rounds
    assert (tmp_path / "rs" / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "rs" / "model" / "lmstack.json").read_text())["stage"] == "rejection-sampling"
    assert (tmp_path / "rs" / "rejection_curves.png").exists()


def test_temperature_zero_is_rejected(tiny_ckpt, tmp_path):
    """Best of N needs N different samples: at temperature 0 all N are the one greedy answer."""
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    cfg = RejectionConfig(model=str(tiny_ckpt), data=[str(data)], out=str(tmp_path / "rs"), rounds=1, samples=2,
                          max_new_tokens=2, sft_epochs=1, micro_batch=2, seq_len=128, temperature=0.0, quiet=True)
    with pytest.raises(LmstackError, match=r"^rejection-sampling: temperature must be > 0"):
        run(cfg, rewards=Rewards(rule=lambda rec, text, ids: float(len(ids))))


def test_a_killed_run_resumes_after_its_last_whole_round(tiny_ckpt, tmp_path, monkeypatch):
    """--resume continues after the last round whose state was written (the kept answers, the prompt sampler):
    the final weights equal an uninterrupted run's; a run with other options is refused."""
    from safetensors.torch import load_file

    from lmstack.train import sft

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat.", "Say something.", "Yo"]))
    rewards = Rewards(rule=lambda rec, text, ids: float(len(ids)))
    cfg = dict(model=str(tiny_ckpt), data=[str(data)], rounds=3, prompts_per_round=2, samples=3, max_new_tokens=5,
               missing_eos_penalty=0.0, sft_epochs=1, micro_batch=2, seq_len=128, quiet=True)
    run(RejectionConfig(out=str(tmp_path / "straight"), **cfg), rewards=rewards)
    calls, real = [], sft.run

    def dies_in_round_3(c, *a, **kw):
        calls.append(c.out)
        if c.out.endswith("round_3"):
            raise KeyboardInterrupt  # killed while round 3 fine-tunes
        return real(c, *a, **kw)

    monkeypatch.setattr(sft, "run", dies_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        run(RejectionConfig(out=str(tmp_path / "killed"), **cfg), rewards=rewards)
    calls.clear()
    monkeypatch.setattr(sft, "run", real)
    with pytest.raises(LmstackError, match=r"round_2: written with other options \(samples 3 -> 4\)"):
        run(RejectionConfig(out=str(tmp_path / "killed"), resume=True, **{**cfg, "samples": 4}), rewards=rewards)
    res = run(RejectionConfig(out=str(tmp_path / "killed"), resume=True, **cfg), rewards=rewards)
    assert [r["round"] for r in res.summary["rounds"]] == [1, 2, 3]
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(x)["round"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]
