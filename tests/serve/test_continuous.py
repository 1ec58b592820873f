"""Continuous batching in the engine: requests join a running batch and decode as they would alone."""

from lmstack.infer.engine import Generation, Request, generate
from lmstack.infer.sampling import SamplingParams


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
    (r_short,) = gen.add([Request(late_short, sp(12))])
    gen.step()
    # Longer than the running cache: the running rows are shifted right to make room.
    assert len(late_long) > gen.cache.length
    r_long, r_one = gen.add([Request(late_long, sp(10)), Request(one, sp(8))])
    for _ in range(4):  # b finishes meanwhile and leaves the batch
        gen.step()
    _run(gen)
    r = gen.requests
    assert [r_short.index, r_long.index, r_one.index] == [2, 3, 4]
    assert r[0].result.ids == _alone(lm, a, 20)
    assert r[1].result.ids == _alone(lm, b, 6)
    assert r_short.result.ids == _alone(lm, late_short, 12)
    assert r_long.result.ids == _alone(lm, late_long, 10)
    assert r_one.result.ids == _alone(lm, one, 8)


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
    (r,) = gen.add([Request(late, sp)])
    assert gen.cache.max_len == room  # shifted in place, not reallocated
    _run(gen)
    assert gen.requests[0].result.ids == _alone(lm, enc("A")[:1], 40)
    assert r.result.ids == _alone(lm, late, 40)


def test_empty_generation_add_after_done_and_cancel(tiny_lm):
    lm = tiny_lm
    enc = lm.tokenizer.encode
    gen = Generation.empty(lm.model, lm.tokenizer, stream_text=True)
    assert gen.done
    sp = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)
    i, j = gen.add([Request(enc("The cat"), sp), Request(enc("Mina lives"), sp)])
    gen.step()
    gen.cancel([j])
    assert gen.running == [i]
    _run(gen)
    assert i.result.ids == _alone(lm, enc("The cat"), 5)
    assert j.result.finish_reason == "abort" and len(j.result.ids) == 1
    # The batch emptied; a new request starts a fresh prefill.
    (k,) = gen.add([Request(enc("def add"), sp)])
    events = [e for evs in iter(gen.step, []) for e in evs]
    assert all(e.request is k and e.index == k.index == 2 for e in events)
    assert k.result.ids == _alone(lm, enc("def add"), 5)
    assert "".join(e.text for e in events) == k.result.text
    gen.forget(i)
    assert i.index not in gen.requests and k.index in gen.requests
    # A request with no room to generate finishes at once and never joins the batch.
    (z,) = gen.add([Request(enc("The"), SamplingParams(max_new_tokens=0))])
    assert z.finished and z.result.finish_reason == "length" and gen.done


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
    i, j = gen.add([Request(enc("Mina"), pen), Request(enc("def"), seeded)])
    _run(gen)
    alone = lambda p, s: generate(lm.model, [p], s, lm.tokenizer)[0].ids  # noqa: E731
    assert i.result.ids == alone(enc("Mina"), pen)
    assert j.result.ids == alone(enc("def"), seeded)
