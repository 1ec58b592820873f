"""API keys, the queue bound, timeouts, body limits and disconnects, on in-process servers.

A forward hook slows the model (10 ms a step) so that requests overlap predictably on any machine.
"""

import argparse
import asyncio
import time

import httpx
import pytest

from lmstack.lm import load
from tests.serve.conftest import server_thread

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def slow_lm(tiny_ckpt):
    lm = load(tiny_ckpt)
    lm.model.register_forward_hook(lambda *a: time.sleep(0.01))
    return lm


LONG = {"model": "tiny", "prompt": "The", "max_tokens": 100, "temperature": 0, "ignore_eos": True}


def test_api_key_guards_every_endpoint_but_health(tiny_lm):
    with server_thread(tiny_lm, api_key="sekret") as s, httpx.Client() as c:
        assert c.get(s.url + "/health").status_code == 200
        calls = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "x"}),
                 ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
                 ("GET", "/tokenizer_info", None), ("POST", "/tokenize", {"prompt": "x"}),
                 ("POST", "/detokenize", {"tokens": [1]})]
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
                r = c.request(method, s.url + path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
            ok = c.request(method, s.url + path, json=body, headers={"Authorization": "Bearer sekret"})
            assert ok.status_code == 200, (path, ok.text)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.v1, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=s.v1, api_key="sekret", max_retries=0)
        assert good.completions.create(model="tiny", prompt="The", max_tokens=2).usage.completion_tokens == 2


def test_api_key_from_the_environment_and_localhost_default(tiny_ckpt, monkeypatch):
    from lmstack.cli import serve as cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    monkeypatch.setenv("LMSTACK_API_KEY", "from-env")
    args = p.parse_args(["--model", str(tiny_ckpt)])
    assert args.host == "127.0.0.1" and args.port == 8000
    _, cfg, _ = cli.build(args)
    assert cfg.api_key == "from-env" and cfg.served == [str(tiny_ckpt)]  # vLLM: the --model string as given
    _, cfg, _ = cli.build(p.parse_args(["--model", str(tiny_ckpt), "--api-key", "flag"]))
    assert cfg.api_key == "flag"


def test_queue_bound_answers_429_and_others_still_finish(slow_lm):
    with server_thread(slow_lm, max_batch=1, max_queue=1) as s:
        async def main():
            async with httpx.AsyncClient(timeout=30) as c:
                body = {**LONG, "max_tokens": 30}
                return await asyncio.gather(*[c.post(s.v1 + "/completions", json=body) for _ in range(6)])

        codes = sorted(r.status_code for r in asyncio.run(main()))
        # One request runs and one may wait (whether the first was admitted to the batch before the second
        # arrived is a race); the rest are refused with 429 at once instead of queueing without bound.
        assert codes.count(200) >= 1 and codes.count(429) >= 3 and set(codes) <= {200, 429}, codes
        r = httpx.post(s.v1 + "/completions", json={**LONG, "max_tokens": 2})
        assert r.status_code == 200


def test_rate_limit_error_body_and_retry_after(slow_lm):
    with server_thread(slow_lm, max_batch=1, max_queue=1) as s:
        with httpx.Client(timeout=30) as c, c.stream("POST", s.v1 + "/completions", json={**LONG, "stream": True}):
            with c.stream("POST", s.v1 + "/completions", json={**LONG, "stream": True}) as queued:
                assert queued.status_code == 200  # waits for a slot
                r = c.post(s.v1 + "/completions", json=LONG)
                assert r.status_code == 429 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_timeout_and_the_server_keeps_serving(slow_lm):
    with server_thread(slow_lm, timeout=0.3) as s:
        r = httpx.post(s.v1 + "/completions", json=LONG, timeout=30)
        assert r.status_code == 408 and r.json()["error"]["type"] == "timeout_error"
        lines = [ln for ln in httpx.post(s.v1 + "/completions", json={**LONG, "stream": True}, timeout=30)
                 .text.splitlines() if ln.startswith("data:")]
        assert "timed out" in lines[-2] and lines[-1] == "data: [DONE]"
        assert httpx.post(s.v1 + "/completions", json={**LONG, "max_tokens": 3}).status_code == 200
        assert httpx.get(s.url + "/health").json()["running"] == 0


def test_disconnect_frees_the_slot(slow_lm):
    with server_thread(slow_lm) as s:
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", s.v1 + "/completions", json={**LONG, "stream": True}) as r:
                lines = r.iter_lines()  # held: dropping the iterator would close the response
                next(lines)
                assert httpx.get(s.url + "/health").json()["running"] == 1
            t0 = time.monotonic()  # 100 tokens take >= 1 s; the slot must free well before
            while httpx.get(s.url + "/health").json()["running"] and time.monotonic() - t0 < 0.8:
                time.sleep(0.02)
            assert httpx.get(s.url + "/health").json()["running"] == 0


def test_oversized_bodies_get_413(tiny_lm):
    with server_thread(tiny_lm, max_body=1 << 16) as s:
        big = b'{"prompt": "' + b"a" * (1 << 17) + b'"}'
        r = httpx.post(s.v1 + "/completions", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: counted while it arrives
            for _ in range(8):
                yield b" " * (1 << 14)

        r = httpx.post(s.v1 + "/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(s.v1 + "/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_a_failing_step_fails_its_batch_not_the_server(tiny_lm):
    with server_thread(tiny_lm) as s:
        sched = s.app.state.server.sched

        def boom():
            raise RuntimeError("injected")

        sched.gen.add = lambda *a, **k: boom()  # this Generation breaks; the scheduler replaces it
        r = httpx.post(s.v1 + "/completions", json={"prompt": "The", "max_tokens": 3}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        r = httpx.post(s.v1 + "/completions", json={"prompt": "The", "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def test_compare_options_are_checked_before_serving(tiny_ckpt, tmp_path):
    import argparse

    from lmstack.cli import serve as cli
    from lmstack.errors import LmstackError

    p = argparse.ArgumentParser()
    cli.add_arguments(p)

    def build(*extra):
        return cli.build(p.parse_args(["--model", str(tiny_ckpt), "--served-model-name", "tiny", *extra]))

    with pytest.raises(LmstackError, match="--compare and --labels go together"):
        build("--compare", "tiny", "tiny")
    with pytest.raises(LmstackError, match="give 2 to 4 names, got 5"):
        build("--compare", *["tiny"] * 5, "--labels", str(tmp_path / "l.jsonl"))
    with pytest.raises(LmstackError, match="--compare 'gpt-9': not a served name"):
        build("--compare", "tiny", "gpt-9", "--labels", str(tmp_path / "l.jsonl"))
    with pytest.raises(LmstackError, match=r"--labels .*/no/such/dir/l.jsonl: cannot append to it"):
        build("--compare", "tiny", "tiny", "--labels", str(tmp_path / "no" / "such" / "dir" / "l.jsonl"))
    _, cfg, _ = build("--compare", "tiny", "tiny", "--labels", str(tmp_path / "l.jsonl"))
    assert cfg.compare == ("tiny", "tiny") and (tmp_path / "l.jsonl").read_text() == ""
