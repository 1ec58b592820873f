"""The sampling recipes' shared blocks: GAE, PPO's clipped losses, padding-correct tempered log-probs, the
KL controller, and rollout batches (built from prompts + answers; minibatches in a seeded order)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmstack.train.prefdata import right_pad
from lmstack.train.rl import AdaptiveKL, Rollouts, by_length, gae, policy_logprobs, ppo_losses


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


def test_length_sorted_chunks_give_each_rollout_its_own_logprobs(tiny_lm):
    """`collect` scores rollouts in length-sorted chunks: every row gets what the one padded batch gave it, in its
    own place, zero past its answer, and each chunk is padded only to its own longest row."""
    m = tiny_lm.model
    torch.manual_seed(1)
    lens, plens = [30, 5, 18, 7, 26, 9, 12], [20, 2, 10, 3, 5, 4, 11]
    seqs = [torch.randint(4, 300, (n,)).tolist() for n in lens]
    ids, _ = right_pad(seqs, 0)
    ro = Rollouts(ids, torch.tensor(plens), torch.tensor(lens) - torch.tensor(plens))
    widths = []

    def fn(r):
        widths.append(r.ids.shape[1])
        return policy_logprobs(m, r, 1.0)[0]
    with torch.no_grad():
        whole, _, mask = policy_logprobs(m, ro, 1.0)
        chunked = by_length(ro, fn, rows=3)
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked[mask], whole[mask], atol=1e-5)
    assert (chunked[~mask] == 0).all()
    assert widths == [9, 26, 30]  # sorted by prompt + answer length: (5, 7, 9), (12, 18, 26), (30,)


def test_adaptive_kl_moves_beta_towards_target():
    c = AdaptiveKL(0.1, target=2.0, horizon=100)
    c.update(10.0, 50)  # far above target: error clipped at +0.2
    assert c.beta == pytest.approx(0.1 * 1.1)
    c.update(0.0, 50)
    assert c.beta < 0.11


def test_rollouts_of_prompts_and_answers():
    comps = [SimpleNamespace(ids=[7, 8]), SimpleNamespace(ids=[9])]
    ro = Rollouts.of([[1, 2, 3], [4]], comps, pad=0)
    assert ro.ids.tolist() == [[1, 2, 3, 7, 8], [4, 9, 0, 0, 0]]
    assert ro.plen.tolist() == [3, 1] and ro.rlen.tolist() == [2, 1]


def test_minibatches_cover_every_rollout_once_per_epoch_in_the_seeded_order():
    ro = Rollouts(torch.arange(5)[:, None].repeat(1, 3), torch.ones(5, dtype=torch.long), torch.ones(5, dtype=torch.long),
                  old_lp=torch.arange(5.0)[:, None])
    torch.manual_seed(0)
    got = [mb.ids[:, 0].tolist() for mb in ro.minibatches(2, 2)]
    torch.manual_seed(0)
    want = []
    for _ in range(2):  # the loop PPO and GRPO wrote out before: a fresh permutation per epoch
        perm = torch.randperm(5)
        want += [perm[s:s + 2].tolist() for s in range(0, 5, 2)]
    assert got == want and sorted(sum(got[:3], [])) == list(range(5))


def test_gold_judge_needs_reward_models_and_the_suites_records(tmp_path):
    """The gold judge is the suite's panel[0]; none for a rule reward, --data prompts, or records without `meta`."""
    from pathlib import Path

    from lmstack.data.builtin import build_suite
    from lmstack.train.prefdata import PrefConfig, load_prompts
    from lmstack.train.rewards import Rewards
    from lmstack.train.rl import gold_judge, reward_trend

    suite = Path(tmp_path / "suite")
    build_suite(suite, seed=0, size="tiny")
    recs, _ = load_prompts(PrefConfig(suite=str(suite), out=str(tmp_path)), ["arithmetic"])
    rm = Rewards(helpful=object())  # stands in for a reward model: the judge never calls it
    judge = gold_judge(suite, rm, recs)
    assert judge is not None and judge.bias == 0.0 and judge.name == "annotator-0"
    assert judge.score(recs[0], recs[0]["target"]) > judge.score(recs[0], "no idea")
    assert gold_judge(None, rm, recs) is None
    assert gold_judge(suite, Rewards(rule=lambda rec, text, ids: 0.0), recs) is None
    assert gold_judge(suite, rm, [{"prompt": [{"role": "user", "content": "Hi"}]}]) is None
    hist = [{"reward": 1.0, "kl": 0.0, "gold": g} for g in (1.0, 2.0, 3.0, 4.0)]
    assert reward_trend(hist)["gold_first"] == 1.0 and reward_trend(hist)["gold_last"] == 4.0
    assert "gold_first" not in reward_trend([{k: v for k, v in h.items() if k != "gold"} for h in hist])


def test_rollouts_are_decoded_in_bounded_chunks_with_each_rows_own_stream(tiny_lm, monkeypatch):
    import lmstack.infer.engine as engine
    import lmstack.train.rl as rl

    ids = [tiny_lm.tokenizer.encode(t) for t in ("the cat", "a dog sat on", "the", "one two three four")] * 2
    cfg = SimpleNamespace(max_new_tokens=6, temperature=1.0)
    seeds = list(range(100, 100 + len(ids)))
    whole = rl.sample(tiny_lm.model, tiny_lm.tokenizer, ids, cfg, seeds)  # 8 rows < SAMPLE_CHUNK: one batch
    sizes = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda m, p, sp, tok: sizes.append(len(p)) or real(m, p, sp, tok))
    monkeypatch.setattr(rl, "SAMPLE_CHUNK", 3)
    chunked = rl.sample(tiny_lm.model, tiny_lm.tokenizer, ids, cfg, seeds)
    assert sizes == [3, 3, 2]  # no batch above the bound, every row decoded once
    assert [c.ids for c in chunked] == [c.ids for c in whole]  # row j's answer comes from seeds[j], not its batch
