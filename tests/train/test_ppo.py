"""PPO: a toy problem (reward = the answer ends with an end-of-sequence token) on which the reward rises while
the KL stays near its target."""

import json

from lmstack.lm import load
from lmstack.train.ppo import PPOConfig, run
from lmstack.train.rewards import Rewards

PROMPTS = ["Hi", "What is 3 plus 4?", "Name a cat.", "Say something.", "Where is Porto?", "def add"]


def write_prompts(path):
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in PROMPTS))
    return str(path)


def test_toy_reward_rises_while_kl_stays_near_target(tiny_ckpt, tmp_path):
    """Toy problem with a known optimum: reward 1 when the answer ends with an end-of-sequence token within the
    budget (optimum: stop at once; the random policy does so rarely). With the adaptive controller the reward
    rises and the KL to the reference ends within a factor of 2 of its target."""
    stops = set(tiny_lm_stop_ids(tiny_ckpt))
    rewards = Rewards(rule=lambda rec, text, ids: float(bool(ids) and ids[-1] in stops))
    target = 3.0
    cfg = PPOConfig(model=str(tiny_ckpt), data=[write_prompts(tmp_path / "p.jsonl")], out=str(tmp_path / "ppo"),
                    steps=12, rollout_batch=16, micro_batch=16, ppo_epochs=2, max_new_tokens=8, lr=5e-4,
                    missing_eos_penalty=0.0, kl_coef=0.1, kl_target=target, kl_horizon=16, seq_len=128, quiet=True)
    res = run(cfg, rewards=rewards)
    s = res.summary
    assert res.artifacts == {"model": str(tmp_path / "ppo" / "model")}
    recs = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    r = [x["reward"] for x in recs]
    assert sum(r[-3:]) / 3 > sum(r[:3]) / 3 + 0.2, r
    kl = sum(x["kl"] for x in recs[-3:]) / 3
    assert target / 2 < kl < target * 2, [x["kl"] for x in recs]
    for key in ("entropy", "clip_frac", "value_loss", "approx_kl", "response_len", "kl_coef"):
        assert key in recs[-1]
    assert (tmp_path / "ppo" / "model" / "model.safetensors").exists()
    assert (tmp_path / "ppo" / "ppo_curves.png").exists()
    assert s["time_split"]["generate"] > 0 and s["reward_last"] > s["reward_first"]


def tiny_lm_stop_ids(path):
    return load(path).tokenizer.stop_ids
