"""Continuous batching in the engine: requests join a running batch and decode as they would alone."""

import torch

from lmstack.infer.engine import Generation, generate
from lmstack.infer.sampling import SamplingParams
from lmstack.model.transformer import KVCache


def _alone(lm, prompt, n, **kw):
    sp = SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True, **kw)
    return generate(lm.model, [prompt], sp, lm.tokenizer)[0].ids


def _run(gen):
    while not gen.done:
        gen.step()


def test_joined_requests_decode_exactly_as_alone(tiny_lm):
    lm = tiny_lm
    enc = lm.tokenizer.encode
    a, b = enc("The small cat sat on"), enc("Mina")
    late_short, late_long, one = enc("def add"), enc("Q: What is 3 plus 4?\nA: 7\nThe small cat sat on the red mat."), enc("A")[:1]
    sp = lambda n: SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)  # noqa: E731
    gen = Generation(lm.model, [a, b], [sp(20), sp(6)], lm.tokenizer)
    for _ in range(3):
        gen.step()
    i_short = gen.add([late_short], sp(12))[0]
    gen.step()
    # Longer than the running cache: the running rows are shifted right to make room.
    assert len(late_long) > gen.cache.length
    i_long, i_one = gen.add([late_long, one], [sp(10), sp(8)])
    for _ in range(4):  # b finishes meanwhile and leaves the batch
        gen.step()
    _run(gen)
    r = gen.results
    assert r[0].ids == _alone(lm, a, 20)
    assert r[1].ids == _alone(lm, b, 6)
    assert r[i_short].ids == _alone(lm, late_short, 12)
    assert r[i_long].ids == _alone(lm, late_long, 10)
    assert r[i_one].ids == _alone(lm, one, 8)


def test_join_that_shifts_a_cache_with_room_to_spare(tiny_lm):
    # The running cache has room (no reallocation): the shift moves its inference tensors in place.
    lm = tiny_lm
    enc = lm.tokenizer.encode
    sp = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    gen = Generation(lm.model, [enc("A")[:1]], sp, lm.tokenizer)
    gen.step()
    late = enc("The small cat sat")
    room = gen.cache.max_len
    assert gen.cache.length < len(late) - 1 < room
    (i,) = gen.add([late], sp)
    assert gen.cache.max_len == room  # shifted in place, not reallocated
    _run(gen)
    assert gen.results[0].ids == _alone(lm, enc("A")[:1], 40)
    assert gen.results[i].ids == _alone(lm, late, 40)


def test_empty_generation_add_after_done_and_cancel(tiny_lm):
    lm = tiny_lm
    enc = lm.tokenizer.encode
    gen = Generation.empty(lm.model, lm.tokenizer, stream_text=True)
    assert gen.done
    sp = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)
    i, j = gen.add([enc("The cat"), enc("Mina lives")], sp)
    gen.step()
    gen.cancel([j])
    _run(gen)
    assert gen.results[i].ids == _alone(lm, enc("The cat"), 5)
    assert gen.results[j].finish_reason == "abort" and len(gen.results[j].ids) == 1
    # The batch emptied; a new request starts a fresh prefill.
    (k,) = gen.add([enc("def add")], sp)
    text = "".join(e.text for evs in iter(gen.step, []) for e in evs)
    assert gen.results[k].ids == _alone(lm, enc("def add"), 5)
    assert text == gen.results[k].text
    gen.forget(i)
    assert gen.results[i] is None


def test_penalties_and_seeds_of_joined_rows(tiny_lm):
    lm = tiny_lm
    enc = lm.tokenizer.encode
    greedy = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    pen = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, repetition_penalty=1.5,
                         frequency_penalty=0.5, presence_penalty=0.3)
    seeded = SamplingParams(max_new_tokens=12, temperature=1.0, ignore_eos=True, seed=7)
    gen = Generation(lm.model, [enc("The")], greedy, lm.tokenizer)
    for _ in range(2):
        gen.step()
    i, j = gen.add([enc("Mina"), enc("def")], [pen, seeded])
    _run(gen)
    alone = lambda p, s: generate(lm.model, [p], s, lm.tokenizer)[0].ids  # noqa: E731
    assert gen.results[i].ids == alone(enc("Mina"), pen)
    assert gen.results[j].ids == alone(enc("def"), seeded)


def test_cache_shift_and_growth_keep_contents(tiny_lm):
    cfg = tiny_lm.config
    c = KVCache(cfg, 2, 4)
    m = tiny_lm.model
    with torch.inference_mode():
        m(torch.tensor([[5, 6, 7], [8, 9, 10]]), cache=c)
    k0 = c.k[0][:, :, :3].clone()
    c.shift(3)  # grows past max_len 4
    assert c.length == 6 and c.max_len >= 6 and bool((c.key_pos[:, :3] == -1).all())
    assert torch.equal(c.k[0][:, :, 3:6], k0)
    assert c.empty_front() == 3
    c.shift(-3)
    assert c.length == 3 and torch.equal(c.k[0][:, :, :3], k0) and c.key_pos[0, :3].tolist() == [0, 1, 2]
