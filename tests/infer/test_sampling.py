"""Sampling transforms against their definitions and against transformers' logits processors."""

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.infer.sampling import SamplingParams, apply_penalties, filter_logits, sample


def kept(logits, **kw):
    out = filter_logits(torch.tensor([logits], dtype=torch.float32), [SamplingParams(**kw)])
    return {i for i, v in enumerate(out[0].tolist()) if v != float("-inf")}


def logits_of(probs):
    return torch.tensor(probs).log().tolist()


def test_top_p_keeps_smallest_set_reaching_p():
    probs = [0.05, 0.5, 0.3, 0.15]
    assert kept(logits_of(probs), top_p=0.5) == {1}
    assert kept(logits_of(probs), top_p=0.6) == {1, 2}
    assert kept(logits_of(probs), top_p=0.81) == {1, 2, 3}
    assert kept(logits_of(probs), top_p=0.96) == {0, 1, 2, 3}
    assert kept(logits_of(probs), top_p=0.01) == {1}  # never empty


def test_min_p_keeps_tokens_above_fraction_of_max():
    probs = [0.05, 0.5, 0.3, 0.15]
    assert kept(logits_of(probs), min_p=0.5) == {1, 2}  # 0.3 >= 0.25, 0.15 < 0.25
    assert kept(logits_of(probs), min_p=0.3) == {1, 2, 3}  # 0.15 >= 0.15
    assert kept(logits_of(probs), min_p=1.0) == {1}


def test_top_k_keeps_k_largest():
    assert kept([0.0, 3.0, 1.0, 2.0], top_k=2) == {1, 3}
    assert kept([0.0, 3.0, 1.0, 2.0], top_k=10) == {0, 1, 2, 3}


def test_rows_with_different_params_in_one_batch():
    x = torch.tensor([logits_of([0.05, 0.5, 0.3, 0.15])] * 2)
    out = filter_logits(x.clone(), [SamplingParams(top_p=0.5), SamplingParams(top_k=3)])
    assert (out[0] != float("-inf")).nonzero().flatten().tolist() == [1]
    assert (out[1] != float("-inf")).nonzero().flatten().tolist() == [1, 2, 3]


def test_matches_transformers_warpers():
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    x = torch.randn(3, 50) * 3
    ids = torch.randint(0, 50, (3, 7))
    for kw, procs in (
        (dict(temperature=0.7, top_k=8), [tr.TemperatureLogitsWarper(0.7), tr.TopKLogitsWarper(8)]),
        (dict(temperature=1.3, top_p=0.7), [tr.TemperatureLogitsWarper(1.3), tr.TopPLogitsWarper(0.7)]),
        (dict(min_p=0.1), [tr.MinPLogitsWarper(0.1)]),
    ):
        want = x.clone()
        for p in procs:
            want = p(ids, want)
        got = filter_logits(x.clone(), [SamplingParams(**kw)] * 3)
        assert torch.equal(got == float("-inf"), want == float("-inf"))
        fin = got != float("-inf")
        assert torch.allclose(got[fin], want[fin])
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, ids, True)
    want = tr.RepetitionPenaltyLogitsProcessor(1.3)(ids, x.clone())
    got = apply_penalties(x.clone(), [SamplingParams(repetition_penalty=1.3)] * 3, seen, None)
    assert torch.allclose(got, want)


def test_frequency_and_presence_penalties_openai_semantics():
    x = torch.zeros(1, 5)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0, 0.0]])
    got = apply_penalties(x.clone(), [SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)], None, counts)
    assert got[0].tolist() == [0.0, -0.75, -1.75, 0.0, 0.0]


def test_logit_bias():
    got = apply_penalties(torch.zeros(1, 4), [SamplingParams(logit_bias={2: 5.0, 3: -100})], None, None)
    assert got[0].tolist() == [0.0, 0.0, 5.0, -100.0]


def test_top_k_1_sampling_is_greedy():
    torch.manual_seed(0)
    x = torch.randn(4, 30)
    params = [SamplingParams(temperature=1.5, top_k=1)] * 4
    for _ in range(5):
        assert torch.equal(sample(filter_logits(x.clone(), params), params, [None] * 4), x.argmax(-1))


def test_seeded_sampling_reproduces_and_differs_by_seed():
    x = torch.zeros(1, 1000)
    p = [SamplingParams(temperature=1.0)]

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample(x.clone(), p, [g]).item() for _ in range(20)]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                dict(min_p=2), dict(repetition_penalty=0), dict(max_new_tokens=-1),
                                dict(num_beams=0), dict(frequency_penalty=3)])
def test_invalid_values_name_the_field(kw):
    with pytest.raises(LmstackError, match=next(iter(kw))):
        SamplingParams(**kw)


def test_sampled_frequencies_follow_the_softmax_and_skip_filtered_tokens():
    """Inverse-CDF sampling draws each token with its softmax probability (within 4 SE over 20,000 draws per row),
    never a filtered (-inf) one, with a generator per row or one shared; mixed greedy rows take the argmax."""
    logits = torch.tensor([[0.0, 1.0, float("-inf"), 2.0, -1.0], [3.0, float("-inf"), 0.0, 0.5, 0.0]])
    probs = logits.softmax(-1)
    n = 20_000
    params = [SamplingParams(temperature=1.0)] * 2
    for gens in ([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)],
                 [torch.Generator().manual_seed(3)] * 2):
        counts = torch.zeros_like(probs)
        for _ in range(n):
            counts[torch.arange(2), sample(logits, params, gens)] += 1
        freq = counts / n
        se = (probs * (1 - probs) / n).sqrt()
        assert ((freq - probs).abs() <= 4 * se + 1e-9).all(), (freq, probs)
        assert counts[0, 2] == 0 and counts[1, 1] == 0
    mixed = sample(logits, [SamplingParams(temperature=0), SamplingParams(temperature=1.0)],
                   [torch.Generator().manual_seed(0)] * 2)
    assert mixed[0] == 3 and mixed[1] != 1
