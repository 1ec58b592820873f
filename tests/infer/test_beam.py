"""Beam search with repetition penalty, logit bias and stop strings (transformers is the oracle), and the
settings it refuses in one line instead of ignoring."""

import pytest
import torch

from lmstack.errors import LmstackError
from lmstack.infer.beam import beam_search
from lmstack.infer.engine import Generation, Request, generate
from lmstack.infer.sampling import SamplingParams
from lmstack.lm import load
from tests.model.hf_fixtures import hf_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = hf_model("gpt2", seed=3, vocab=24)  # a small vocabulary: EOS (id 2) and repeats come up often
    d = tmp_path_factory.mktemp("gpt2-beam")
    hf.save_pretrained(d)
    return hf, load(d)


def _hf_beam(hf, prompt, **kw):
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=10, num_beams=4, do_sample=False, eos_token_id=2, pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist()


def _same(got, want):
    # transformers pads a hypothesis that ended early; ours stops at its EOS.
    return got.ids == want[: len(got.ids)] and all(t == 0 for t in want[len(got.ids):])


def test_beam_repetition_penalty_and_logit_bias_match_transformers(pair):
    hf, lm = pair
    bias = {5: 2.5, 7: -3.0, 11: 1.5}
    changed = 0
    for prompt in ([5, 9, 17], [8], [4, 1], [3, 3, 3, 3], [20]):
        plain = beam_search(lm.model, prompt, SamplingParams(max_new_tokens=10, num_beams=4, stop_token_ids=[2]))
        for es in (False, True):
            for rp in (1.3, 0.7, 2.0):
                sp = SamplingParams(max_new_tokens=10, num_beams=4, early_stopping=es, stop_token_ids=[2],
                                    repetition_penalty=rp)
                got = beam_search(lm.model, prompt, sp)
                assert _same(got, _hf_beam(hf, prompt, early_stopping=es, repetition_penalty=rp)), (es, rp, prompt)
                changed += got.ids != plain.ids
            sp = SamplingParams(max_new_tokens=10, num_beams=4, early_stopping=es, stop_token_ids=[2],
                                logit_bias=bias, repetition_penalty=1.5)
            got = beam_search(lm.model, prompt, sp)
            want = _hf_beam(hf, prompt, early_stopping=es, repetition_penalty=1.5,
                            sequence_bias=[[[t], b] for t, b in bias.items()])
            assert _same(got, want), (es, "bias", prompt)
            changed += got.ids != plain.ids
    assert changed > 10  # the penalties did change the beams


def test_beam_ends_at_a_stop_string_and_cuts_its_text(tiny_lm):
    lm = tiny_lm
    prompt = lm.encode("The small cat")
    # length_penalty 0 scores hypotheses by their summed log-prob: short ones (a stop string early) can win
    sp = dict(max_new_tokens=24, num_beams=3, ignore_eos=True, length_penalty=0.0)
    full = beam_search(lm.model, prompt, SamplingParams(**sp), lm.tokenizer)
    assert full.finish_reason == "length"
    # two-character ASCII pieces of the unstopped answer (the random model also writes half characters)
    stops = sorted({full.text[i:i + 2] for i in range(len(full.text) - 1)
                    if full.text[i:i + 2].isascii() and full.text[i:i + 2].isprintable()})
    assert len(stops) >= 3
    stopped = 0
    for stop in stops:
        got = beam_search(lm.model, prompt, SamplingParams(**sp, stop=[stop]), lm.tokenizer)
        assert stop not in got.text  # a beam holding a stop string is finished, never continued
        if got.finish_reason == "stop":
            # the hypothesis ends with the token that completed the string; its text is cut before it
            decoded = lm.tokenizer.decode(got.ids)
            assert decoded.startswith(got.text) and decoded[len(got.text):].startswith(stop)
            assert stop not in lm.tokenizer.decode(got.ids[:-1])
            stopped += 1
        else:
            assert got.finish_reason == "length" and len(got.ids) == sp["max_new_tokens"]
    assert stopped >= 2
    # generate() and the LM facade take the same path
    stop = stops[0]
    assert lm.generate("The small cat", **sp, stop=[stop]) == \
        beam_search(lm.model, prompt, SamplingParams(**sp, stop=[stop]), lm.tokenizer).text


@pytest.mark.parametrize("kw", [dict(frequency_penalty=0.5), dict(presence_penalty=-0.3), dict(top_k=5),
                                dict(top_p=0.9), dict(min_p=0.1)])
def test_beam_refuses_sampling_only_settings_in_one_line(tiny_lm, kw):
    name = next(iter(kw))
    for call in (lambda: tiny_lm.generate("The cat", num_beams=3, max_new_tokens=4, **kw),
                 lambda: generate(tiny_lm.model, [tiny_lm.encode("The")], SamplingParams(num_beams=2, **kw))):
        with pytest.raises(LmstackError, match=name) as e:
            call()
        assert "\n" not in str(e.value)


def test_beams_in_a_mixed_list_and_not_in_a_running_batch(tiny_lm):
    lm = tiny_lm
    a, b = lm.encode("The small"), lm.encode("Mina")
    greedy = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    beam = SamplingParams(max_new_tokens=6, num_beams=3, ignore_eos=True)
    outs = generate(lm.model, [a, b], [greedy, beam], lm.tokenizer)
    assert outs[0].ids == generate(lm.model, [a], greedy)[0].ids
    assert outs[1].ids == beam_search(lm.model, b, beam).ids
    with pytest.raises(LmstackError, match="beam search"):
        Generation.empty(lm.model, lm.tokenizer).add([Request(a, beam)])
