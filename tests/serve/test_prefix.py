"""Prefix caching through the server: requests that start like an earlier one reuse its keys and values (reported
on /health) and answer exactly what a server without the cache answers."""

import httpx

from tests.serve.conftest import server_thread

SHARED = "Q: What is 3 plus 4?\nA: 7\nQ: What is 10 plus 2?\nA: 12\nQ: What is 6 plus 6?\nA: 12\n"
QUESTIONS = ["Q: What is 5 plus 1?\nA:", "Q: What is 8 plus 9?\nA:", "Q: What is 5 plus 1?\nA:"]


def _answers(lm, **cfg):
    body = {"model": "tiny", "temperature": 0, "max_tokens": 5, "ignore_eos": True, "logprobs": 1}
    with server_thread(lm, max_batch=4, **cfg) as s, httpx.Client(timeout=60) as c:
        out = []
        for q in QUESTIONS:
            r = c.post(s.v1 + "/completions", json={**body, "prompt": SHARED + q}).json()["choices"][0]
            out.append((r["text"], r["logprobs"]["token_logprobs"]))
        return out, c.get(s.url + "/health").json()


def test_shared_prefixes_are_reused_and_change_no_answer(tiny_lm):
    cached, health = _answers(tiny_lm)
    plain, health_off = _answers(tiny_lm, prefix_cache_mb=0)
    shared = len(tiny_lm.tokenizer.encode(SHARED))
    st = health["prefix_cache"]
    # The second request reuses the shared block; the third repeats the first prompt and reuses all of it.
    assert st["hits"] == 2 and st["hit_tokens"] >= 2 * shared, (st, shared)
    assert "prefix_cache" not in health_off
    for (t1, lp1), (t2, lp2) in zip(cached, plain):
        assert t1 == t2
        assert max(abs(a - b) for a, b in zip(lp1, lp2)) < 1e-4
