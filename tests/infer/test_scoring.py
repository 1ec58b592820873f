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
    assert len(fed.scored) == 1  # the two options share the context's row
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


def test_only_the_continuations_go_through_the_output_layer(tiny_lm):
    # A long context and a short continuation: the output layer (and the log-softmax) runs on the continuations'
    # positions only, not on every position of every padded row; the scores stay those of a full forward pass.
    lm = tiny_lm
    reqs = [("The small cat sat on the mat and the dog sat on the rug", " today"), ("Mina", " lives here")]
    rows = []
    handle = lm.model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    try:
        res = loglikelihood(lm.model, lm.tokenizer, reqs)
    finally:
        handle.remove()
    assert rows == [sum(r.n_tokens for r in res)]
    for (c, x), r in zip(reqs, res):
        ci, xi = encode_pair(lm.tokenizer, c, x)
        assert abs(r.logprob - sum(token_logprobs(lm.model, [ci + xi])[0][len(ci) - 1:])) < 1e-4


@pytest.mark.parametrize("arch", ["llama-tiny", "gpt2-mini", "window"])
def test_options_sharing_a_context_score_as_alone(arch):
    # Requests with one context share a row (the context once, each continuation packed after it, attending to the
    # context and itself only); each score and is-greedy flag equals that request's own forward pass, for RoPE and
    # learned positions, a sliding window shorter than the rows, options of 1-5 tokens, batches that mix shared
    # and lone rows, and a group too long to share the context window (scored alone, truncated on the left).
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer

    torch.manual_seed(0)
    kw = {"sliding_window": 6} if arch == "window" else {}
    cfg = preset("llama-tiny" if arch == "window" else arch, vocab_size=64, max_seq_len=24, init_std=0.3, **kw)
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(0, 64, (n,), generator=g).tolist()

    pairs = []
    for n_ctx, lens in [(9, [1, 1, 1]), (4, [3, 1, 5]), (12, [2]), (1, [1, 4]), (20, [4, 4, 4])]:
        c = ids(n_ctx)
        pairs += [(c, ids(n)) for n in lens]
    c = ids(6)
    pairs.insert(3, (c, ids(2)))  # a context's requests need not be adjacent
    pairs.append((c, ids(3)))
    got = score_pairs(model, pairs, batch_size=3)
    assert len(got) == len(pairs)
    for (c, x), r in zip(pairs, got):
        full = (c + x)[-(cfg.max_seq_len + 1):]
        with torch.inference_mode():
            logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0].float(), -1)
        tail = range(len(full) - 1 - len(x), len(full) - 1)
        want = sum(logp[t, full[t + 1]].item() for t in tail)
        assert abs(r.logprob - want) < 1e-4 and r.n_tokens == len(x)
        assert r.is_greedy == all(int(logp[t].argmax()) == full[t + 1] for t in tail)


def test_a_mask_budget_splits_batches_without_changing_scores(tiny_lm, monkeypatch):
    # Batches holding shared rows are cut so that their [rows, T, T] attention mask stays within MASK_ELEMENTS.
    import lmstack.infer.logprobs as L

    lm = tiny_lm
    reqs = [(c, x) for c in ("The small cat sat on the mat", "Mina lives in Porto", "Q: 3 plus 4?\nA:")
            for x in (" yes", " no", " it is not possible to tell")]
    want = loglikelihood(lm.model, lm.tokenizer, reqs)
    calls = []
    monkeypatch.setattr(L, "MASK_ELEMENTS", 1)
    handle = lm.model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        got = loglikelihood(lm.model, lm.tokenizer, reqs)
    finally:
        handle.remove()
    assert calls == [1, 1, 1]  # one shared row per batch
    assert all(abs(a.logprob - b.logprob) < 1e-5 and a.is_greedy == b.is_greedy for a, b in zip(got, want))
