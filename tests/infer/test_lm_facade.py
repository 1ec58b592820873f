"""The LM facade (lmstack/lm.py) over a checkpoint, as the README uses it, and the server's prompt log-probs."""

import torch

import lmstack
from lmstack.infer.engine import generate, stream
from lmstack.infer.logprobs import prompt_logprobs, token_logprobs
from lmstack.infer.sampling import SamplingParams, as_sampling
from lmstack.lm import LM, load
from lmstack.model.checkpoint import Checkpoint


def test_load_returns_the_generating_lm_and_round_trips(tiny_ckpt, tmp_path):
    lm = lmstack.load(tiny_ckpt)
    assert type(lm) is LM and lmstack.LM is LM and lmstack.load is load and lmstack.SamplingParams is SamplingParams
    ids = lm.encode("Hello")
    logits = lm(ids)
    assert logits.shape == (1, len(ids), lm.config.vocab_size)
    want = generate(lm.model, [ids], SamplingParams(max_new_tokens=6, temperature=0), lm.tokenizer)[0].text
    assert lm.generate("Hello", max_new_tokens=6, temperature=0) == want
    assert lm.generate(["Hello", "The"], max_new_tokens=6, temperature=0)[0] == want
    msgs = [{"role": "user", "content": "Hi"}]
    sp = SamplingParams(max_new_tokens=6, temperature=0.8, seed=2)
    assert lm.chat(msgs, max_new_tokens=6, temperature=0.8, seed=2) == \
        generate(lm.model, [lm.chat_ids(msgs)], sp, lm.tokenizer)[0].text
    assert [e.token_id for e in lm.stream(ids, max_new_tokens=6, temperature=0)] == \
        [e.token_id for e in stream(lm.model, [ids], SamplingParams(max_new_tokens=6, temperature=0), lm.tokenizer)]
    lmstack.save(lm, tmp_path / "copy")
    back = load(tmp_path / "copy")
    assert torch.equal(back(ids), logits)


def test_lm_of_a_checkpoint_shares_its_parts(tiny_lm):
    plain = Checkpoint(tiny_lm.model, tiny_lm.tokenizer, {"x": 1}, {"stage": "t"})
    assert not hasattr(plain, "generate")
    lm = LM.of(plain)
    assert lm.model is plain.model and lm.generation_config == {"x": 1} and lm.meta == {"stage": "t"}
    assert LM.of(lm) is lm


def test_prompt_logprobs_are_the_kernels_with_top_n(tiny_lm):
    ids = tiny_lm.encode("The small cat sat")
    lps, tops = prompt_logprobs(tiny_lm.model, ids, 3)
    assert lps[0] is None and tops[0] is None
    assert torch.allclose(torch.tensor(lps[1:]), torch.tensor(token_logprobs(tiny_lm.model, [ids])[0]), atol=1e-6)
    full = torch.log_softmax(tiny_lm(ids)[0, :-1].float(), -1)
    for t, top in enumerate(tops[1:]):
        best = full[t].topk(3)
        assert list(top) == best.indices.tolist() and max(top.values()) == best.values[0].item()
    assert prompt_logprobs(tiny_lm.model, ids, 0)[1][1:] == [{}] * (len(ids) - 1)
    assert prompt_logprobs(tiny_lm.model, ids[:1], 2) == ([None], [None])


def test_as_sampling_lives_in_infer():
    sp = as_sampling({"max_new_tokens": 3})
    assert sp.temperature == 0.0 and sp.max_new_tokens == 3
    assert as_sampling(sp, seed=4).seed == 4 and sp.seed is None
