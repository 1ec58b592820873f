"""PPO, GRPO and rejection sampling under torchrun (gloo on CPU): 2 processes, each sampling, scoring and training on
its share of every batch, follow the curves of 1 process with the same global batch and seed. Each rollout has its own
seed, so the answers do not depend on the world size; what differs is float rounding (each process's forwards see
other batch shapes), hence the tolerance."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmstack.errors import LmstackError
from lmstack.train.dist import DistInfo
from lmstack.train.rl import check_minibatches, check_shares

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4  # on losses, rewards and KL; measured: at most 3.7e-5 (PPO's policy loss)
# The CLI with one more reward rule, `even` (how many of the answer's tokens have even ids): every answer of the tiny
# random model earns some of it, unevenly, so advantages and the best of N are never all alike.
RUNNER = """
import sys
from lmstack.train import rewards
named = rewards.rule_reward
def rule_reward(spec, suite=None):
    if spec == "even":
        return lambda rec, text, ids: float(sum(t % 2 == 0 for t in ids))
    return named(spec, suite)
rewards.rule_reward = rule_reward
from lmstack.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _args(algo, ckpt, data, out):
    common = ["--model", str(ckpt), "--data", str(data), "--out", str(out), "--reward-rule", "even",
              "--max-new-tokens", "6", "--seq-len", "64", "--lr", "1e-3", "--quiet", "--seed", "3"]
    own = {"ppo": ["--steps", "4", "--log-interval", "1", "--rollout-batch", "4", "--micro-batch", "2",
                   "--kl-target", "0.5", "--ptx-coef", "0.1", "--ptx-data", str(data), "--ptx-seq-len", "8",
                   "--ptx-batch", "2"],
           "grpo": ["--steps", "4", "--log-interval", "1", "--prompts-per-step", "2", "--group-size", "3",
                    "--micro-batch", "2", "--lr", "2e-4"],
           # fp32: its fine-tuning would autocast to bf16 on a CPU with AVX-512 BF16 (--precision auto), where
           # one process's batch of 2 and two processes' batches of 1 round differently at bf16's 3 digits
           "rejection-sampling": ["--rounds", "2", "--prompts-per-round", "4", "--samples", "3",
                                  "--micro-batch", "2", "--sft-epochs", "1", "--precision", "fp32"]}[algo]
    return [algo, *common, *own]


def _launch(args, world: int, tmp_path: Path, check: bool = True):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    launcher = [sys.executable] if world == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    p = subprocess.run([*launcher, str(runner), *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 or not check, (p.stdout + p.stderr)[-3000:]
    return p


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def prompts(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in
                            ["Hi", "Name a cat.", "Say 5.", "Count: 1 2", "Why?", "Add 2 and 3.", "A story.", "Go"]))
    return data


PPO_KEYS = ["reward", "kl", "kl_coef", "policy_loss", "value_loss", "ptx_loss", "entropy", "response_len"]
GRPO_KEYS = ["reward", "loss", "kl", "clip_frac", "reward_group_std", "response_len"]
RS_KEYS = ["reward_mean", "reward_best_of_n", "kept", "response_len", "sft_loss_first", "sft_loss_last"]


@pytest.mark.parametrize("algo,mode,keys", [
    ("ppo", "ddp", PPO_KEYS),
    ("ppo", "fsdp", PPO_KEYS),
    ("grpo", "ddp", GRPO_KEYS),
    ("grpo", "fsdp", GRPO_KEYS),
    ("rejection-sampling", "ddp", RS_KEYS),
    ("rejection-sampling", "fsdp", RS_KEYS),
])
def test_two_processes_follow_one(algo, mode, keys, tiny_ckpt, prompts, tmp_path):
    """DDP: each process holds the policy (and value, reference, reward models) whole; FSDP2 (--fsdp): all of them
    sharded, rollouts decoded with a whole copy of the policy's current weights (rejection sampling: each round's
    fine-tuning sharded)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(_args(algo, tiny_ckpt, prompts, one), 1, tmp_path)
    _launch(_args(algo, tiny_ckpt, prompts, two) + (["--fsdp"] if mode == "fsdp" else []), 2, tmp_path)
    a, b = _metrics(one), _metrics(two)
    assert len(a) == len(b) > 1
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], abs=TOL, rel=TOL), (k, ra, rb)
    assert any(r[keys[0]] != a[0][keys[0]] for r in a)  # the curves move: not a vacuous match
    wa, wb = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
    assert any(not torch.equal(wa[k], v) for k, v in load_file(str(tiny_ckpt / "model.safetensors")).items())


def test_shares_that_cannot_split_evenly_are_refused_in_one_line():
    four = DistInfo(rank=0, world=4)
    with pytest.raises(LmstackError, match="4 processes but --rollout-batch 2: more processes than rollouts"):
        check_shares(four, "ppo", 2, "--rollout-batch", "rollouts")
    with pytest.raises(LmstackError, match="--prompts-per-step 6 is not a multiple of the 4 processes"):
        check_shares(four, "grpo", 6, "--prompts-per-step", "prompts (groups)")
    with pytest.raises(LmstackError, match=r"minibatches of 4/6 rollouts \(16 per iteration, --micro-batch 6\)"):
        check_minibatches(DistInfo(world=4), "ppo", 16, 6)
    check_shares(four, "ppo", 8, "--rollout-batch", "rollouts")
    check_minibatches(four, "ppo", 16, 8)
    check_minibatches(DistInfo(), "ppo", 5, 3)  # one process: anything goes


def test_torchrun_with_more_ranks_than_rollouts_fails_before_loading(tiny_ckpt, prompts, tmp_path):
    args = [*_args("grpo", tiny_ckpt, prompts, tmp_path / "x")]
    args[args.index("--prompts-per-step") + 1] = "1"
    p = _launch(args, 2, tmp_path, check=False)
    assert p.returncode != 0
    assert "grpo: 2 processes but --prompts-per-step 1: more processes than prompts (groups)" in p.stderr
