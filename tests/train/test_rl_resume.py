"""PPO and GRPO resume exactly (--resume): a run killed with SIGKILL, at random moments and in the middle of writing
a checkpoint, then resumed, ends with the weights of an uninterrupted run, bit for bit: policy, value model, adaptive
KL coefficient, optimiser, RNG states and the prompt sampler's position are all in the checkpoint."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmstack.errors import LmstackError

ROOT = Path(__file__).resolve().parents[2]
# Runs the CLI, but kills itself (SIGKILL) right after the trainer state of checkpoint KILL_AT is written, before
# the checkpoint folder is renamed into place: a kill in the middle of a checkpoint write.
KILL_IN_WRITE = """
import os, signal, sys
from lmstack.train import state
write, kill_at = state.write_trainer_state, int(os.environ["KILL_AT"])
def dying(folder, optimizer, step, extra, blobs=None):
    write(folder, optimizer, step, extra, blobs)
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
state.write_trainer_state = dying
from lmstack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(algo, ckpt, data, out, *extra):
    common = ["--model", str(ckpt), "--data", str(data), "--out", str(out), "--steps", "6", "--ckpt-interval", "1",
              "--reward-rule", "token:5", "--max-new-tokens", "5", "--seq-len", "64", "--lr", "1e-3", "--quiet"]
    own = {"ppo": ["--rollout-batch", "4", "--micro-batch", "2", "--kl-target", "0.5", "--ptx-coef", "0.1",
                   "--ptx-data", str(data), "--ptx-seq-len", "8", "--ptx-batch", "2"],
           "grpo": ["--prompts-per-step", "2", "--group-size", "3", "--micro-batch", "3"]}[algo]
    return [algo, *common, *own, *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture
def prompts(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["Hi", "Name a cat.", "Say 5.", "Count: 1 2"]))
    return data


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_killed_runs_resume_to_the_uninterrupted_weights(algo, tiny_ckpt, prompts, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "lmstack", *_args(algo, tiny_ckpt, prompts, straight)], env=_env(),
                   check=True, capture_output=True)
    whole = time.monotonic() - t0  # the kill times below scale with it: a loaded machine runs everything slower
    # 1. killed while checkpoint 2 is being written: checkpoint 1 is the last whole one.
    r = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, *_args(algo, tiny_ckpt, prompts, killed)],
                       env={**_env(), "KILL_AT": "2"}, capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert [p.name for p in (killed / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step_0000001"]
    # 2. then killed from outside at random moments (15-60% of an uninterrupted run's time), resuming each time;
    # a run that has not finished after 12 tries (a very loaded machine) is resumed once more without a kill.
    rnd = random.Random(0)
    kills = 0
    for _ in range(12):
        p = subprocess.Popen([sys.executable, "-m", "lmstack", *_args(algo, tiny_ckpt, prompts, killed, "--resume")],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            p.wait(timeout=rnd.uniform(0.15, 0.6) * whole)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        if p.returncode == 0:
            break
        assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()[-2000:]
        kills += 1
    else:
        subprocess.run([sys.executable, "-m", "lmstack", *_args(algo, tiny_ckpt, prompts, killed, "--resume")],
                       env=_env(), check=True, capture_output=True)
    assert kills >= 1
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # The log reads as an uninterrupted run's: each iteration once, with the same numbers.
    logs = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, killed)]
    keys = ("step", "reward", "kl", "loss") if algo == "grpo" else ("step", "reward", "kl", "kl_coef", "value_loss")
    assert [[r.get(k) for k in keys] for r in logs[0]] == [[r.get(k) for k in keys] for r in logs[1]]


def test_resume_refuses_another_recipe_or_other_options(tiny_ckpt, prompts, tmp_path):
    from lmstack.train.grpo import GRPOConfig
    from lmstack.train.grpo import run as grpo
    from lmstack.train.ppo import PPOConfig
    from lmstack.train.ppo import run as ppo
    from lmstack.train.rewards import Rewards

    out = tmp_path / "run"
    kw = dict(model=str(tiny_ckpt), data=[str(prompts)], out=str(out), steps=2, ckpt_interval=1, max_new_tokens=3,
              seq_len=64, quiet=True)
    rule = Rewards(rule=lambda rec, text, ids: float(len(ids)))
    grpo(GRPOConfig(prompts_per_step=2, group_size=2, micro_batch=4, **kw), rewards=rule)
    with pytest.raises(LmstackError, match=r"step_0000002: a checkpoint of grpo, not of ppo"):
        ppo(PPOConfig(rollout_batch=2, micro_batch=2, resume=True, **kw), rewards=rule)
    with pytest.raises(LmstackError, match=r"written with other options \(group_size 2 -> 4\)"):
        grpo(GRPOConfig(prompts_per_step=2, group_size=4, micro_batch=4, resume=True, **kw), rewards=rule)
    # Options that change nothing computed may differ.
    grpo(GRPOConfig(prompts_per_step=2, group_size=2, micro_batch=4, resume=True, log_interval=5, **kw), rewards=rule)
