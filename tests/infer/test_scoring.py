"""Log-likelihood scoring equals a direct forward pass over context + continuation."""

import pytest
import torch

from lmstack.infer.logprobs import encode_pair, loglikelihood, score_pairs, token_logprobs


def test_loglikelihood_equals_forward(tiny_lm):
    lm = tiny_lm
    reqs = [("The small cat", " sat on the mat"), ("Q: What is 3 plus 4?\nA: ", "7"), ("Mina", " lives")]
    res = loglikelihood(lm.model, lm.tokenizer, reqs)
    for (c, x), r in zip(reqs, res):
        ci, xi = encode_pair(lm.tokenizer, c, x)
        want = sum(token_logprobs(lm.model, [ci + xi])[0][len(ci) - 1:])
        assert abs(r.logprob - want) < 1e-4
        assert r.n_tokens == len(xi)


def test_is_greedy_matches_argmax(tiny_lm):
    lm = tiny_lm
    ctx = lm.encode("The small cat")
    logits = lm(ctx)[0, -1]
    best, worst = int(logits.argmax()), int(logits.argmin())
    a, b = score_pairs(lm.model, [(ctx, [best]), (ctx, [worst])])
    assert a.is_greedy and not b.is_greedy
    assert a.logprob == torch.log_softmax(logits, -1)[best].item() or abs(a.logprob - torch.log_softmax(
        logits, -1)[best].item()) < 1e-5


def test_trailing_space_moves_to_continuation(tiny_tokenizer):
    c, x = encode_pair(tiny_tokenizer, "The cat ", "sat")
    assert tiny_tokenizer.decode(c) == "The cat" and tiny_tokenizer.decode(x) == " sat"


@pytest.mark.parametrize("style", ["llama2", "llama3"])
def test_chat_prompt_of_a_bos_template_is_scored_with_one_bos(style):
    """A context rendered by a template that writes {{ bos_token }} is scored from the template's own
    token ids: exactly one BOS at the start of every sequence the model is run on."""
    from ..chat_bos import Fed, bos_run, lm

    m = lm(style, add_bos=True)
    tok = m.tokenizer
    msgs = [{"role": "user", "content": "Is the cat small?"}]
    ctx = tok.apply_chat_template(msgs, add_generation_prompt=True)
    template_ids = tok.encode_chat(msgs, add_generation_prompt=True)[0]
    with Fed(m.model) as fed:
        res = loglikelihood(m.model, tok, [(ctx, "yes"), (ctx, "no")])
    assert len(fed.scored) == 2
    for row in fed.scored:
        assert bos_run(row, tok.bos_id) == 1
    # the template's ids, up to the trailing whitespace lm-eval's split moves onto the continuation
    kept = tok.encode(ctx.rstrip())
    assert template_ids[:len(kept)] == kept and all(row[:len(kept)] == kept for row in fed.scored)
    c, x = encode_pair(tok, ctx, "yes")
    assert c == kept
    want = sum(token_logprobs(m.model, [c + x])[0][len(c) - 1:])
    assert abs(res[0].logprob - want) < 1e-4


@pytest.mark.parametrize("add_bos", [True, False])
def test_chat_prompt_of_a_template_without_bos_keeps_todays_bos(add_bos, tiny_lm):
    """ChatML writes no BOS: the context gets the tokenizer's BOS when it adds one, else none."""
    from ..chat_bos import Fed, bos_run, lm

    for m in ([lm("chatml", add_bos)] + ([] if add_bos else [tiny_lm])):
        tok = m.tokenizer
        msgs = [{"role": "user", "content": "Is the cat small?"}]
        ctx = tok.apply_chat_template(msgs, add_generation_prompt=True)
        with Fed(m.model) as fed:
            loglikelihood(m.model, tok, [(ctx, "yes")])
        (row,) = fed.scored
        assert bos_run(row, tok.bos_id) == int(add_bos)
        assert row[int(add_bos):][:3] == tok.encode_chat(msgs, add_generation_prompt=True)[0][:3]
