"""PPO: GAE, clipped losses, padding-correct tempered log-probs, the KL controller, and a toy problem
(reward = how often one token occurs) on which the reward rises while the KL stays near its target."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmstack.train.ppo import AdaptiveKL, PPOConfig, Rollouts, gae, policy_logprobs, ppo, ppo_losses
from lmstack.train.prefs import right_pad
from lmstack.train.reward import Rewards

PROMPTS = ["Hi", "What is 3 plus 4?", "Name a cat.", "Say something.", "Where is Porto?", "def add"]


def write_prompts(path):
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in PROMPTS))
    return str(path)


def test_gae_matches_the_recursion():
    r = torch.tensor([[0.0, 0.5, 1.0], [0.2, 2.0, 0.0]])
    v = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.4, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    g, lam = 0.9, 0.8
    adv, ret = gae(r, v, mask, g, lam)
    for b in range(2):
        n = int(mask[b].sum())
        want, last = [0.0] * n, 0.0
        for t in reversed(range(n)):
            nv = v[b, t + 1].item() if t + 1 < n else 0.0
            last = r[b, t].item() + g * nv - v[b, t].item() + g * lam * last
            want[t] = last
        assert torch.allclose(adv[b, :n], torch.tensor(want), atol=1e-6)
        assert torch.allclose(ret[b, :n], adv[b, :n] + v[b, :n])
    assert adv[1, 2] == 0 and ret[1, 2] == 0


def test_clipped_losses():
    old = torch.zeros(1, 2)
    lp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    v, old_v, ret = torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[2.0, 0.0]])
    pg, vf, st = ppo_losses(lp, old, adv, v, old_v, ret, mask, 0.2, 0.2)
    # max(-A r, -A clip(r)): token 1 -> max(-1.5, -1.2) = -1.2; token 2 -> max(0.5, 0.8) = 0.8
    assert pg.item() == pytest.approx((-1.2 + 0.8) / 2)
    # value: max((1-2)^2, (0.2-2)^2) = 3.24 and 0 -> 0.5 * mean
    assert vf.item() == pytest.approx(0.5 * 3.24 / 2)
    assert st["clip_frac"] == 1.0


def test_batched_tempered_logprobs_equal_one_by_one(tiny_lm):
    """Right-padded batches give each row exactly its own log-probabilities, at the sampling temperature."""
    m = tiny_lm.model
    torch.manual_seed(0)
    seqs = [torch.randint(4, 300, (n,)).tolist() for n in (9, 17, 25, 6)]
    plen = torch.tensor([4, 6, 9, 3])
    ids, lens = right_pad(seqs, 0)
    ro = Rollouts(ids, plen, lens - plen)
    with torch.no_grad():
        lp, ent, mask = policy_logprobs(m, ro, 0.7, entropy=True)
        for i, s in enumerate(seqs):
            logits = m(torch.tensor([s]))[0, :-1] / 0.7
            want = F.log_softmax(logits, -1).gather(1, torch.tensor(s[1:])[:, None])[:, 0][plen[i] - 1:]
            n = len(s) - int(plen[i])
            assert torch.allclose(lp[i, :n], want, atol=1e-5)
            assert not mask[i, n:].any()
    assert (ent[mask] > 0).all()


def test_adaptive_kl_moves_beta_towards_target():
    c = AdaptiveKL(0.1, target=2.0, horizon=100)
    c.update(10.0, 50)  # far above target: error clipped at +0.2
    assert c.beta == pytest.approx(0.1 * 1.1)
    c.update(0.0, 50)
    assert c.beta < 0.11


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
    s = ppo(cfg, rewards=rewards)
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
    import lmstack
    return lmstack.load(path).tokenizer.stop_ids
