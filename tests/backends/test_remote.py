"""The OpenAI-compatible backend against a fake server on 127.0.0.1: scoring equal to the local
model's, generation through /completions and /chat/completions, retries on 429/5xx/malformed JSON,
clear errors, a concurrency limit, and a disk cache that avoids paying twice."""

import time

import pytest

from lmstack.backends import OpenAIBackend, get_backend
from lmstack.errors import LmstackError

from .fake_openai import FakeOpenAI, bos_lm


def _be(srv, **kw):
    kw.setdefault("backoff", 0.001)
    return OpenAIBackend("fake-model", srv.url, **kw)


def test_loglikelihood_matches_local(tiny_lm):
    reqs = [("The small cat sat on the", " red mat."), ("Q: What is 3 plus 4?\nA:", " 7"), ("Mina lives ", "in Porto")]
    local = get_backend(tiny_lm).loglikelihood(reqs)
    with FakeOpenAI(tiny_lm) as srv:
        remote = _be(srv).loglikelihood(reqs)
        body = srv.requests[0]["body"]
    assert body["echo"] is True and body["logprobs"] == 1 and body["model"] == "fake-model"
    for r, want in zip(remote, local):
        assert r.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert r.n_tokens == want.n_tokens and r.is_greedy == want.is_greedy


def test_loglikelihood_against_a_server_counting_the_bos_in_text_offset(tiny_tokenizer):
    # vLLM echoes the prompt text without its BOS but counts the BOS's text ("<s>") in text_offset; the
    # continuation is still found at the right characters, so scores equal the local model's.
    lm = bos_lm(tiny_tokenizer)
    reqs = [("The small cat sat on the", " red mat."), ("Q: What is 3 plus 4?\nA:", " 7"), ("Mina lives ", "in Porto"),
            ("<s>The cat", " sat")]
    # ASCII only: a fake that decodes token by token gives half characters their own U+FFFD, as vLLM does.
    texts = ["The small cat sat on the red mat.", "Mina lives in Porto. She has a dog named Rex."]
    local, local_rolling = get_backend(lm).loglikelihood(reqs), get_backend(lm).loglikelihood_rolling(texts)
    with FakeOpenAI(lm, add_bos=True) as srv:
        remote, rolling = _be(srv).loglikelihood(reqs), _be(srv).loglikelihood_rolling(texts)
    assert srv.requests[0]["body"]["echo"] is True
    for r, want in zip(remote + rolling, local + local_rolling):
        assert r.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert r.n_tokens == want.n_tokens


def test_rolling_loglikelihood(tiny_lm):
    text = "The small cat sat on the red mat."
    with FakeOpenAI(tiny_lm) as srv:
        (r,) = _be(srv).loglikelihood_rolling([text])
    ids = tiny_lm.tokenizer.encode(text)
    assert r.n_tokens == len(ids) - 1  # the first token has no context through an API


def test_generate_completions_and_chat(monkeypatch):
    monkeypatch.setenv("LMSTACK_TEST_KEY", "sk-test")
    reply = lambda p: "Paris. And more" if isinstance(p, str) else f"chat:{p[-1]['content']}"
    with FakeOpenAI(reply=reply) as srv:
        be = _be(srv, api_key_env="LMSTACK_TEST_KEY")
        outs = be.generate(["The capital of France is", [{"role": "user", "content": "Hi"}]],
                           {"max_new_tokens": 7, "temperature": 0.5, "stop": ["."], "seed": 3, "top_k": 4})
        assert outs == ["Paris", "chat:Hi"]  # the stop string is applied locally too
        first = srv.requests[0]
        assert first["auth"] == "Bearer sk-test"
        b = first["body"] if first["path"].endswith("/v1/completions") else srv.requests[1]["body"]
        assert b["max_tokens"] == 7 and b["temperature"] == 0.5 and b["stop"] == ["."] and b["seed"] == 3
        assert b["top_k"] == 4 and "min_p" not in b  # non-OpenAI fields only when asked for
        chat = _be(srv, chat=True)
        assert chat.generate(["Hello"]) == ["chat:Hello"]
        assert srv.requests[-1]["path"].endswith("/chat/completions")
        with pytest.raises(LmstackError, match="chat endpoint returns no prompt log-probabilities"):
            chat.loglikelihood([("a", " b")])


def test_retries_on_429_500_and_malformed_json(tiny_lm):
    with FakeOpenAI(tiny_lm, reply=lambda p: "ok") as srv:
        srv.faults = ["429", "500", "badjson"]
        be = _be(srv)
        assert be.generate(["x"]) == ["ok"]
        assert be.stats["retries"] == 3 and len(srv.requests) == 4


def test_gives_up_with_a_clear_error():
    with FakeOpenAI() as srv:
        srv.faults = ["500"] * 10
        with pytest.raises(LmstackError, match=r"gave up after 3 attempts; last error: HTTP 500"):
            _be(srv, max_retries=2).generate(["x"])
        srv.faults = ["badjson"] * 10
        with pytest.raises(LmstackError, match="malformed JSON"):
            _be(srv, max_retries=1).generate(["x"])
        srv.faults = ["401"]
        with pytest.raises(LmstackError, match=r"HTTP 401 \(is \$NO_SUCH_KEY_VAR set"):
            _be(srv, api_key_env="NO_SUCH_KEY_VAR").generate(["x"])
        srv.faults = ["error"]
        with pytest.raises(LmstackError, match="model overloaded"):
            _be(srv).generate(["x"])
        srv.faults = ["noshape"]
        with pytest.raises(LmstackError, match="unexpected response shape"):
            _be(srv).generate(["x"])


def test_timeout_is_retried():
    with FakeOpenAI(reply=lambda p: "late") as srv:
        srv.faults = [("sleep", 0.5)]
        be = _be(srv, timeout=0.1)
        assert be.generate(["x"]) == ["late"]
        assert be.stats["retries"] >= 1


def test_concurrency_limit():
    with FakeOpenAI(reply=lambda p: p, delay=0.05) as srv:
        be = _be(srv, concurrency=2)
        t0 = time.time()
        outs = be.generate([f"p{i}" for i in range(8)])
        assert outs == [f"p{i}" for i in range(8)]  # order kept
        assert srv.max_inflight == 2
        assert time.time() - t0 < 8 * 0.05  # they did run concurrently


def test_disk_cache_resumes_without_paying_twice(tmp_path, tiny_lm):
    prompts = [f"question {i}" for i in range(4)]
    with FakeOpenAI(tiny_lm, reply=lambda p: p.upper()) as srv:
        # An interrupted run: the third call fails for good, the others are already cached.
        srv.faults = [None, None, "500", "500"]
        be = _be(srv, cache_dir=tmp_path, concurrency=1, max_retries=1)
        with pytest.raises(LmstackError):
            be.generate(prompts)
        be.close()
        paid = len(srv.requests)
        be = _be(srv, cache_dir=tmp_path, concurrency=1)
        assert be.generate(prompts) == [p.upper() for p in prompts]
        assert len(srv.requests) - paid == 2 and be.stats["cache_hits"] == 2
        # A fresh process (new backend) pays nothing for what it has seen, scoring included.
        be.loglikelihood([("The cat", " sat")])
        n = len(srv.requests)
        be2 = _be(srv, cache_dir=tmp_path)
        assert be2.generate(prompts) == [p.upper() for p in prompts]
        be2.loglikelihood([("The cat", " sat")])
        assert len(srv.requests) == n and be2.stats["cache_hits"] == 5
        # Sampled paths with different seeds are different requests, not cache hits.
        be2.generate(["q", "q"], [{"temperature": 1.0, "seed": 1}, {"temperature": 1.0, "seed": 2}])
        assert len(srv.requests) == n + 2


def test_bad_base_url():
    with pytest.raises(LmstackError, match="--base-url"):
        OpenAIBackend("m", "localhost:8000")
