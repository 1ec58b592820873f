"""The generation engine: batching, stop conditions, streaming, seeds (the KV cache: test_cache.py)."""

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.infer.engine import Generation, generate, stream
from lmstack.infer.logprobs import token_logprobs
from lmstack.infer.sampling import SamplingParams


def test_prompt_tokens_not_repeated_and_eos_stops(tiny_lm):
    lm = tiny_lm
    prompt = lm.encode("The cat")
    out = generate(lm.model, [prompt], SamplingParams(max_new_tokens=30, temperature=0), lm.tokenizer)[0]
    eos = set(lm.tokenizer.stop_ids)
    assert out.finish_reason in ("stop", "length")
    assert all(t not in eos for t in out.ids[:-1])
    # Forcing EOS to be the best token ends generation after exactly one token.
    forced = generate(lm.model, [prompt], SamplingParams(max_new_tokens=30, temperature=0,
                                                         logit_bias={lm.tokenizer.eos_id: 100.0}), lm.tokenizer)[0]
    assert forced.ids == [lm.tokenizer.eos_id] and forced.finish_reason == "stop" and forced.text == ""


def test_max_new_tokens_and_length_reason(tiny_lm):
    out = generate(tiny_lm.model, [tiny_lm.encode("Mina")], SamplingParams(max_new_tokens=7, temperature=0,
                                                                          ignore_eos=True), tiny_lm.tokenizer)[0]
    assert len(out.ids) == 7 and out.finish_reason == "length"
    assert out.text == tiny_lm.tokenizer.decode(out.ids)


def test_stop_string_cuts_text_before_it(tiny_lm):
    lm = tiny_lm
    sp = SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True)
    full = generate(lm.model, [lm.encode("The")], sp, lm.tokenizer)[0].text
    assert len(full) > 6
    stop = full[3:5]
    cut = generate(lm.model, [lm.encode("The")], SamplingParams(max_new_tokens=40, temperature=0, ignore_eos=True,
                                                                stop=[stop]), lm.tokenizer)[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_streaming_concatenates_to_the_full_text(tiny_lm):
    lm = tiny_lm
    prompt = lm.encode("고양이는")
    for sp in (SamplingParams(max_new_tokens=25, temperature=0, ignore_eos=True),
               SamplingParams(max_new_tokens=25, temperature=0.9, seed=3, ignore_eos=True)):
        events = list(stream(lm.model, [prompt], sp, lm.tokenizer))
        whole = generate(lm.model, [prompt], sp, lm.tokenizer)[0]
        assert "".join(e.text for e in events) == whole.text
        assert [e.token_id for e in events] == whole.ids
        assert events[-1].finished and not any(e.finished for e in events[:-1])


def test_engine_top_k_1_equals_greedy_and_seed_reproduces(tiny_lm):
    lm = tiny_lm
    prompts = [lm.encode("The small"), lm.encode("Q:")]
    greedy = [o.ids for o in generate(lm.model, prompts, SamplingParams(max_new_tokens=15, temperature=0,
                                                                        ignore_eos=True))]
    topk1 = [o.ids for o in generate(lm.model, prompts, SamplingParams(max_new_tokens=15, temperature=1.7, top_k=1,
                                                                       ignore_eos=True))]
    assert greedy == topk1
    sp = SamplingParams(max_new_tokens=15, temperature=1.0, seed=42, ignore_eos=True)
    a = [o.ids for o in generate(lm.model, prompts, sp)]
    b = [o.ids for o in generate(lm.model, prompts, sp)]
    c = [o.ids for o in generate(lm.model, prompts, SamplingParams(max_new_tokens=15, temperature=1.0, seed=7,
                                                                   ignore_eos=True))]
    assert a == b and a != c


def test_repetition_penalty_changes_output(tiny_lm):
    lm = tiny_lm
    p = [lm.encode("The cat")]
    plain = generate(lm.model, p, SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True))[0].ids
    pen = generate(lm.model, p, SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True,
                                               repetition_penalty=5.0))[0].ids
    assert len(set(pen)) >= len(set(plain))
    assert pen != plain


def test_rows_with_own_params_finish_independently(tiny_lm):
    lm = tiny_lm
    g = Generation(lm.model, [lm.encode("The"), lm.encode("Mina lives")],
                   [SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True),
                    SamplingParams(max_new_tokens=9, temperature=0, ignore_eos=True)], lm.tokenizer)
    res = g.run()
    assert [len(r.ids) for r in res] == [3, 9]
    alone = generate(lm.model, [lm.encode("Mina lives")], SamplingParams(max_new_tokens=9, temperature=0,
                                                                        ignore_eos=True))[0].ids
    assert res[1].ids == alone  # the cache compaction after row 0 finished kept row 1 intact


def test_prompt_longer_than_context_is_an_error(tiny_lm):
    too_long = [1] * tiny_lm.config.max_seq_len
    with pytest.raises(LmstackError, match="context"):
        generate(tiny_lm.model, [too_long], SamplingParams(max_new_tokens=2))


def test_generation_stops_at_context_end(tiny_lm):
    n = tiny_lm.config.max_seq_len
    out = generate(tiny_lm.model, [[5] * (n - 3)], SamplingParams(max_new_tokens=50, ignore_eos=True))[0]
    assert len(out.ids) == 3 and out.finish_reason == "length"


def test_token_logprobs_equal_forward(tiny_lm):
    seqs = [tiny_lm.encode("The small cat sat"), tiny_lm.encode("Q: What")]
    lps = token_logprobs(tiny_lm.model, seqs)
    for s, lp in zip(seqs, lps):
        logits = tiny_lm(s)[0]
        want = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(s[1:])[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lp), want, atol=1e-5)


def test_generated_logprobs_are_raw_model_logprobs(tiny_lm):
    lm = tiny_lm
    p = lm.encode("The")
    out = generate(lm.model, [p], SamplingParams(max_new_tokens=5, temperature=0.5, seed=1, ignore_eos=True,
                                                 logprobs=3))[0]
    want = token_logprobs(lm.model, [p + out.ids])[0][len(p) - 1:]
    assert torch.allclose(torch.tensor(out.logprobs), torch.tensor(want), atol=1e-5)
    assert all(len(t) == 3 for t in out.top_logprobs)


def test_finished_and_cancelled_requests_leave_no_state_behind(tiny_lm):
    # A server's batch lives as long as the server: what a request needed goes when it leaves.
    import gc
    import weakref

    from lmstack.infer.engine import Request

    lm = tiny_lm
    enc = lm.tokenizer.encode
    pen = SamplingParams(max_new_tokens=3, temperature=0.8, seed=1, ignore_eos=True, repetition_penalty=1.3,
                         frequency_penalty=0.5, logprobs=2, stop=["zzz"])
    plain = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)
    gen = Generation.empty(lm.model, lm.tokenizer, stream_text=True)
    refs = []

    def drive(request=None):  # until this request (else every request) has finished, forgetting each
        while not (request.finished if request is not None else gen.done):
            for ev in gen.step():
                if ev.finished:
                    gen.forget(ev.request)

    def empty():
        assert gen.done and gen.requests == {} and gen.running == []
        assert gen.cache is None and gen.seen is None and gen.counts is None
        assert not gen.track_seen and not gen.track_counts

    for _ in range(3):
        a, b = gen.add([Request(enc("The"), pen), Request(enc("Mina lives"), plain)])
        refs += [weakref.ref(a), weakref.ref(b)]
        drive(a)
        # the penalised row left: its penalty state went with it, the plain row decodes on
        assert gen.running == [b] and gen.seen is None and gen.counts is None
        assert not gen.track_seen and not gen.track_counts and list(gen.requests.values()) == [b]
        drive()
        empty()
        assert b.result.ids == generate(lm.model, [enc("Mina lives")], plain)[0].ids
        (c,) = gen.add([Request(enc("def add"), pen)])
        refs.append(weakref.ref(c))
        gen.step()
        gen.cancel([c])
        gen.forget(c)
        empty()
        del a, b, c
    gc.collect()
    assert not [r for r in refs if r() is not None]  # nothing in the engine holds a finished request


def test_rows_with_one_prompt_share_its_prefill_and_decode_as_alone(tiny_lm, monkeypatch):
    """Several samples of one prompt are prefilled once (the cache rows copied out), each row decoding exactly
    as it would in a batch of distinct prompts."""
    from lmstack.infer import engine

    a, b = tiny_lm.tokenizer.encode("the cat sat"), tiny_lm.tokenizer.encode("a dog")
    rows = [a, b, a, a, b]
    sps = [SamplingParams(max_new_tokens=6, temperature=1.0, seed=s) for s in range(5)]
    alone = [engine.generate(tiny_lm.model, [r], [sp], tiny_lm.tokenizer)[0].ids for r, sp in zip(rows, sps)]
    prefilled = []
    real = engine.Generation._forward_left_padded
    monkeypatch.setattr(engine.Generation, "_forward_left_padded",
                        lambda self, rs, cache, pad: prefilled.append(len(rs)) or real(self, rs, cache, pad))
    together = engine.generate(tiny_lm.model, rows, sps, tiny_lm.tokenizer)
    assert prefilled == [2]  # two distinct prompts
    assert [c.ids for c in together] == alone


def test_generate_rows_bounds_batches_and_keeps_the_order_given(tiny_lm, monkeypatch):
    from lmstack.infer import engine

    prompts = [tiny_lm.tokenizer.encode(t) for t in ("one two three four", "a", "the cat", "b c")]
    sps = [SamplingParams(max_new_tokens=4, temperature=1.0, seed=7 + k) for k in range(4)]
    ref = engine.generate(tiny_lm.model, prompts, sps, tiny_lm.tokenizer)
    sizes = []
    real = engine.generate
    monkeypatch.setattr(engine, "generate", lambda m, p, sp, tok: sizes.append([len(x) for x in p]) or real(m, p, sp, tok))
    out = engine.generate_rows(tiny_lm.model, prompts, sps, tiny_lm.tokenizer, max_rows=2)
    assert [len(b) for b in sizes] == [2, 2] and sizes[0][-1] <= sizes[1][0]  # shortest prompts first
    assert [c.ids for c in out] == [c.ids for c in ref]
    with pytest.raises(LmstackError, match="needs its own seed"):
        engine.generate_rows(tiny_lm.model, prompts, [SamplingParams(max_new_tokens=2, temperature=1.0)] * 4)
