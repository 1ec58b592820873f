"""The local backend: the same numbers as lmstack's scoring, perplexity and generation engine."""

import pytest

from lmstack.backends import LocalBackend, as_sampling, get_backend
from lmstack.errors import LmstackError
from lmstack.infer.logprobs import loglikelihood, perplexity


def test_loglikelihood_equals_scoring(tiny_lm):
    be = get_backend(tiny_lm)
    reqs = [("The small cat", " sat on the mat"), ("Q: What is 3 plus 4?\nA:", " 7")]
    got = be.loglikelihood(reqs)
    want = loglikelihood(tiny_lm.model, tiny_lm.tokenizer, reqs)
    assert [r.logprob for r in got] == pytest.approx([r.logprob for r in want], abs=1e-5)
    assert be.loglikelihood([]) == []


def test_rolling_scores_every_token_after_bos(tiny_lm):
    be = LocalBackend(tiny_lm)
    text = "The small cat sat on the red mat."
    (r,) = be.loglikelihood_rolling([text])
    ids = [tiny_lm.tokenizer.bos_id] + tiny_lm.tokenizer.encode(text)
    want = perplexity(tiny_lm.model, ids)
    assert r.n_tokens == len(ids) - 1 == want["tokens"]
    assert -r.logprob == pytest.approx(want["nll_sum"], rel=1e-6)


def test_generate_text_and_messages(tiny_lm):
    be = LocalBackend(tiny_lm, batch_size=2)
    sp = {"max_new_tokens": 5, "temperature": 0}
    outs = be.generate(["The small cat", "Mina lives", [{"role": "user", "content": "Hi"}]], sp)
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)
    assert outs[0] == tiny_lm.generate("The small cat", max_new_tokens=5, temperature=0)
    assert outs[2] == tiny_lm.chat([{"role": "user", "content": "Hi"}], max_new_tokens=5, temperature=0)
    # per-prompt sampling settings (self-consistency passes one seed per path)
    outs = be.generate(["The", "The"], [as_sampling(sp, temperature=1.0, seed=1), as_sampling(sp, temperature=1.0, seed=2)])
    assert len(outs) == 2
    assert "<|im_start|>assistant" in be.chat_context([{"role": "user", "content": "Hi"}])


def test_bad_inputs(tiny_lm):
    be = LocalBackend(tiny_lm)
    with pytest.raises(LmstackError, match="unknown sampling field"):
        be.generate(["x"], {"max_tokens": 3})
    with pytest.raises(LmstackError, match="2 sampling settings for 1 prompts"):
        be.generate(["x"], [{}, {}])
    with pytest.raises(LmstackError, match="string or a list of messages"):
        be.generate([42], {"max_new_tokens": 1})


def test_loads_a_checkpoint_folder(tiny_ckpt, tiny_lm):
    be = get_backend(str(tiny_ckpt))
    assert be.describe()["backend"] == "local"
    a = be.loglikelihood([("The cat", " sat")])[0].logprob
    assert a == pytest.approx(loglikelihood(tiny_lm.model, tiny_lm.tokenizer, [("The cat", " sat")])[0].logprob, abs=1e-5)


def test_chat_context_is_scored_as_the_templates_ids():
    """chat_context renders the template to text (one BOS written by the template, here Llama 2's); the
    backend scores it as exactly the template's token ids, with no second BOS in front."""
    from lmstack.infer.logprobs import score_pairs

    from ..chat_bos import lm

    m = lm("llama2", add_bos=True)
    be = LocalBackend(m)
    msgs = [{"role": "user", "content": "Is the cat small?"}]
    ids = m.tokenizer.encode_chat(msgs, add_generation_prompt=True)[0]
    (got,) = be.loglikelihood([(be.chat_context(msgs), " yes")])
    (want,) = score_pairs(m.model, [(ids, m.tokenizer.encode(" yes", add_bos=False))])
    assert got.logprob == pytest.approx(want.logprob, abs=1e-5) and got.n_tokens == want.n_tokens
