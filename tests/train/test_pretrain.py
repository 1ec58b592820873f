"""Pretraining: the loss falls, resume is exact, bad steps are skipped, DDP equals one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lmstack.errors import LmstackError
from lmstack.train.pretrain import PretrainConfig, run


def cfg(out, data, **kw):
    base = dict(out=str(out), data=[str(data)], preset="llama-tiny", overrides={"n_layer": 2, "d_model": 64},
                seq_len=32, micro_batch=4, steps=8, lr=3e-3, warmup=2, eval_interval=4, eval_batches=2,
                ckpt_interval=2, keep_last=10, log_interval=1, dropout=0.1, seed=1, quiet=True)
    base.update(kw)
    return PretrainConfig(**base)


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def test_loss_falls_and_outputs_are_written(tmp_path, token_data):
    res = run(cfg(tmp_path / "run", token_data, steps=60, eval_interval=60, ckpt_interval=0, dropout=0.0, lr=1e-2,
                  micro_batch=8))
    s = res.summary
    assert res.artifacts["model"] == str(tmp_path / "run" / "model")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0
    assert s["val_ppl"] is not None and s["val_ppl"] < 512
    for f in ("loss_curve.png", "summary.json", "model/config.json", "model/tokenizer.json"):
        assert (tmp_path / "run" / f).exists(), f
    assert any("tokens_per_s" in r for r in recs) and all("grad_norm" in r for r in recs if "loss" in r)


def test_killed_run_resumes_bitwise(tmp_path, token_data):
    straight = tmp_path / "straight"
    run(cfg(straight, token_data, grad_accum=2))

    class Killed(Exception):
        pass

    def kill_after_5(step):
        if step == 5:  # a checkpoint exists at step 4; step 5's work is lost, as in a real kill
            raise Killed

    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        run(cfg(resumed, token_data, grad_accum=2), step_hook=kill_after_5)
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]
    run(cfg(resumed, token_data, grad_accum=2, resume=True))
    a, b = weights(straight / "model"), weights(resumed / "model")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_muon_trains_the_hidden_matrices_and_resumes_bitwise(tmp_path, token_data):
    """--optimizer muon: torch.optim.Muon holds exactly the blocks' weight matrices (AdamW the embedding, head,
    norms); the loss falls, and a killed run resumes to the same weights (both optimizers' state is saved)."""
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.train.optim import make_optimizer

    model = Transformer(preset("llama-tiny"))
    opt = make_optimizer(model, 1e-3, kind="muon")
    muon, adamw = opt.opts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    hidden = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    assert len(opt.param_groups) == 3

    res = run(cfg(tmp_path / "fit", token_data, steps=40, ckpt_interval=0, dropout=0.0, lr=1e-2, optimizer="muon"))
    recs = [json.loads(x) for x in (tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0 and res.summary["val_ppl"] is not None

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(cfg(straight, token_data, optimizer="muon"))

    def kill_after_5(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg(resumed, token_data, optimizer="muon"), step_hook=kill_after_5)
    run(cfg(resumed, token_data, optimizer="muon", resume=True))
    a, b = weights(straight / "model"), weights(resumed / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(LmstackError, match="--optimizer 'sgd'"):
        make_optimizer(model, 1e-3, kind="sgd")


def test_nonfinite_steps_are_skipped_then_stop(tmp_path, token_data):
    bad = {3, 4}
    s = run(cfg(tmp_path / "a", token_data), loss_hook=lambda step, loss: loss * float("nan") if step in bad
            else loss).summary
    assert s["nonfinite_skipped"] == 2
    with pytest.raises(LmstackError, match="non-finite steps in a row"):
        run(cfg(tmp_path / "b", token_data, max_nonfinite=3),
                 loss_hook=lambda step, loss: loss * float("inf") if step >= 5 else loss)
    # The last good checkpoint (step 4) is usable.
    assert (tmp_path / "b" / "checkpoints" / "step_0000004" / "model.safetensors").exists()


def test_checkpoints_keep_last_k(tmp_path, token_data):
    run(cfg(tmp_path / "k", token_data, keep_last=2))
    assert sorted(p.name for p in (tmp_path / "k" / "checkpoints").iterdir()) == ["step_0000006", "step_0000008"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(tmp_path, token_data, mode):
    # fp32: the invariant is exact arithmetic; bf16 autocast (auto on a CPU with AVX-512 BF16) rounds differently
    # when the batch is split across processes (2e-4 in the loss).
    single = cfg(tmp_path / "one", token_data, micro_batch=4, dropout=0.0, steps=6, precision="fp32")
    run(single)
    # The documented command: torchrun --nproc_per_node=2 -m lmstack pretrain ... (gloo on CPU).
    args = ["--data", str(token_data), "--preset", "llama-tiny", "--set", "n_layer=2", "--set", "d_model=64",
            "--seq-len", "32", "--micro-batch", "2", "--steps", "6", "--lr", "3e-3", "--warmup", "2",
            "--eval-interval", "4", "--eval-batches", "2", "--ckpt-interval", "2", "--log-interval", "1",
            "--dropout", "0.0", "--seed", "1", "--precision", "fp32", "--no-quiet", "--out", str(tmp_path / "two")]
    if mode == "fsdp":
        args.append("--fsdp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "lmstack", "pretrain", *args], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]

    def losses(d):
        return [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(x)]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
