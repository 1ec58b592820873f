"""PPO: a toy problem (reward = the answer ends with an end-of-sequence token) on which the reward rises while
the KL stays near its target."""

import json

import pytest

from lmstack.errors import LmstackError
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


def _short(tiny_ckpt, tmp_path, **kw):
    stops = set(tiny_lm_stop_ids(tiny_ckpt))
    rewards = Rewards(rule=lambda rec, text, ids: float(bool(ids) and ids[-1] in stops))
    base = dict(model=str(tiny_ckpt), data=[write_prompts(tmp_path / "p.jsonl")], out=str(tmp_path / "ppo"),
                steps=2, rollout_batch=4, micro_batch=4, ppo_epochs=1, max_new_tokens=4, seq_len=128, quiet=True)
    return run(PPOConfig(**{**base, **kw}), rewards=rewards)


def test_default_kl_horizon_moves_beta_by_k_beta_per_iteration(tiny_ckpt, tmp_path):
    """Ziegler et al. 2019: beta_{t+1} = beta_t (1 + K_beta clip(KL_t / target - 1, -0.2, 0.2)), K_beta = 0.1: the
    default horizon is 10 x the rollout batch, so --kl-target acts within a default-length run."""
    import warnings

    beta0, target = 0.1, 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default horizon never warns
        res = _short(tiny_ckpt, tmp_path, kl_coef=beta0, kl_target=target)
    recs = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    beta = beta0
    for r in recs:  # kl_coef is logged after the iteration's update
        beta *= 1 + 0.1 * min(max(r["kl"] / target - 1, -0.2), 0.2)
        assert r["kl_coef"] == pytest.approx(beta, rel=1e-9)
    assert abs(recs[0]["kl_coef"] / beta0 - 1) > 0.001  # it moved (a 10000-rollout horizon moves it 0.008%)
    assert res.summary["kl_horizon"] == 40


def test_explicit_kl_horizon_longer_than_the_run_warns(tiny_ckpt, tmp_path):
    with pytest.warns(UserWarning, match=r"ppo: kl_horizon 10000 is longer than the run \(2 x 4 = 8 rollouts\)"):
        _short(tiny_ckpt, tmp_path, steps=2, kl_target=1.0, kl_horizon=10000)


def test_temperature_zero_is_rejected(tiny_ckpt, tmp_path):
    """Rollouts are sampled and scored with log-probs of logits / temperature: 0 would divide by zero."""
    with pytest.raises(LmstackError, match=r"^ppo: temperature must be > 0") as e:
        _short(tiny_ckpt, tmp_path, temperature=0.0)
    assert "\n" not in str(e.value)


# ---- the gold score (Gao et al. 2023's over-optimisation curve) ---------------------------------------------------

class CapturingRewards(Rewards):
    """A reward model's rewards, keeping what it scored: the prompt records and texts of each iteration's rollouts."""

    def __init__(self, rm):
        super().__init__(helpful=rm)
        self.seen = []

    def parts(self, records, texts, ids=None):
        self.seen.append((list(records), list(texts)))
        return super().parts(records, texts, ids)


def _rm(tiny_ckpt):
    from lmstack.train.rewards import RewardModel, RewardNet

    lm = load(tiny_ckpt)
    return RewardModel(RewardNet(lm.model, lm.config.d_model).eval(), lm.tokenizer)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from lmstack.data.builtin import build_suite

    d = tmp_path_factory.mktemp("suite") / "suite"
    build_suite(d, seed=0, size="tiny")
    return d


def _suite_run(tiny_ckpt, suite, out, **kw):
    import torch

    torch.manual_seed(0)
    rewards = CapturingRewards(_rm(tiny_ckpt))
    cfg = PPOConfig(model=str(tiny_ckpt), suite=str(suite), clusters=["arithmetic", "safety"], out=str(out),
                    steps=3, rollout_batch=4, micro_batch=4, ppo_epochs=1, max_new_tokens=24, seq_len=128, quiet=True,
                    **kw)
    res = run(cfg, rewards=rewards)
    return res, [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()], rewards.seen


def test_gold_is_the_unbiased_annotators_mean_score_of_the_rollouts(tiny_ckpt, suite, tmp_path):
    """With a reward model on the suite's prompts, every iteration logs `gold`: panel[0]'s (the unbiased simulated
    annotator's) mean score of exactly the rollouts the reward model scored, beside the RM's `reward`."""
    from lmstack.train.prefdata import suite_judge

    res, recs, seen = _suite_run(tiny_ckpt, suite, tmp_path / "ppo")
    judge = suite_judge(suite)[0]
    assert len(recs) == len(seen) == 3
    for rec, (records, texts) in zip(recs, seen):
        assert isinstance(rec["gold"], float) and isinstance(rec["reward"], float)
        want = sum(judge.score(r, t) for r, t in zip(records, texts)) / len(texts)
        assert rec["gold"] == pytest.approx(want, abs=1e-9)
    assert any(r["gold"] != 0 for r in recs)  # not a vacuous match (the annotator scores these answers unevenly)
    assert res.summary["gold_last"] == pytest.approx(recs[-1]["gold"])  # 3 iterations: a quarter is one


def test_gold_is_only_logged_never_trained_on(tiny_ckpt, suite, tmp_path):
    """log_gold=False: no `gold`, and the same run otherwise (same rewards, KL, losses): gold is not in the signal."""
    _, on, _ = _suite_run(tiny_ckpt, suite, tmp_path / "on")
    _, off, _ = _suite_run(tiny_ckpt, suite, tmp_path / "off", log_gold=False)
    assert all("gold" not in r for r in off)
    for a, b in zip(on, off):
        for k in ("reward", "kl", "policy_loss", "value_loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k


def test_no_gold_with_rule_rewards_or_other_prompts(tiny_ckpt, suite, tmp_path):
    """A rule is no proxy (exact_match is a verifier; `annotator` is the gold judge itself), and --data prompts have
    no ground truth for the annotators: no `gold`."""
    _short(tiny_ckpt, tmp_path, steps=1)  # a rule reward on --data prompts
    recs = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert recs and all("gold" not in r for r in recs)
    cfg = PPOConfig(model=str(tiny_ckpt), suite=str(suite), clusters=["arithmetic"], out=str(tmp_path / "rule"),
                    steps=1, rollout_batch=2, micro_batch=2, ppo_epochs=1, max_new_tokens=4, seq_len=128, quiet=True,
                    reward_rule="exact_match")
    run(cfg)  # a rule reward on the suite's prompts
    recs = [json.loads(x) for x in (tmp_path / "rule" / "metrics.jsonl").read_text().splitlines()]
    assert recs and all("gold" not in r for r in recs)
    cfg = PPOConfig(model=str(tiny_ckpt), data=[write_prompts(tmp_path / "p.jsonl")], out=str(tmp_path / "data"),
                    steps=1, rollout_batch=2, micro_batch=2, ppo_epochs=1, max_new_tokens=4, seq_len=128, quiet=True)
    run(cfg, rewards=Rewards(helpful=_rm(tiny_ckpt)))  # a reward model on --data prompts
    recs = [json.loads(x) for x in (tmp_path / "data" / "metrics.jsonl").read_text().splitlines()]
    assert recs and all("gold" not in r for r in recs)
