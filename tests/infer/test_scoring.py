"""Log-likelihood scoring equals a direct forward pass over context + continuation."""

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
