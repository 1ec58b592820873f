"""Load and faults on the real server process: bounded counts and time, loopback only."""

import asyncio
import json

import httpx
import pytest

psutil = pytest.importorskip("psutil")

BODY = {"model": "tiny", "prompt": "The small cat", "max_tokens": 24, "temperature": 0.8, "stream": True,
        "ignore_eos": True}
# Prompts of different lengths, so that requests join the running batch at different offsets.
PROMPTS = ["The", "Mina lives in Porto.", "def add(a, b):\n    return a + b\n", "Q: What is 3 plus 4?\nA:",
           "고양이는 작다.", "Emoji: 🙂🚀 and numbers 12345", "She has a dog named Rex. The cat is happy.", "A"]


async def _stream(c, url, body=BODY, leave_after=None):
    """Status, whether the stream ended properly ([DONE] after a finish_reason), and the text."""
    async with c.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None, ""
        text, finished, done, n = "", False, False, 0
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for ch in chunk["choices"]:
                text += ch["text"]
                finished |= ch["finish_reason"] is not None
            n += 1
            if leave_after is not None and n >= leave_after:
                return 200, "left", text  # leaving the context closes the connection mid-stream
        return 200, finished and done, text


async def _burst(url, n, seconds=60, greedy=False):
    limits = httpx.Limits(max_connections=n + 8)
    bodies = [{**BODY, "prompt": PROMPTS[i % len(PROMPTS)], "temperature": 0 if greedy else 0.8} for i in range(n)]
    async with httpx.AsyncClient(timeout=seconds, limits=limits) as c:
        return await asyncio.wait_for(asyncio.gather(*[_stream(c, url, b) for b in bodies]), seconds)


def _rss(proc):
    return psutil.Process(proc.pid).memory_info().rss


def test_64_concurrent_streaming_clients(server, tiny_lm):
    from lmstack.infer.engine import generate
    from lmstack.infer.sampling import SamplingParams

    sp = SamplingParams(max_new_tokens=BODY["max_tokens"], temperature=0, ignore_eos=True)
    alone = {p: generate(tiny_lm.model, [tiny_lm.encode(p)], sp, tiny_lm.tokenizer)[0].text for p in PROMPTS}
    asyncio.run(_burst(server.url, 64))  # warm-up: allocator pools, caches of the first full batch
    base = _rss(server.proc)
    for k in range(3):
        results = asyncio.run(_burst(server.url, 64, greedy=k == 0))
        codes = [r[0] for r in results]
        assert set(codes) <= {200, 429}, codes
        assert all(ok for code, ok, _ in results if code == 200)
        assert codes.count(200) >= 32
        if k == 0:  # continuous batching under real concurrency: each answer as if decoded alone
            for i, (code, _, text) in enumerate(results):
                assert code != 200 or text == alone[PROMPTS[i % len(PROMPTS)]], i
    assert httpx.get(server.url + "/health").json()["running"] == 0
    after = _rss(server.proc)
    assert after <= base * 1.15 + 16e6, (base / 1e6, after / 1e6)


def test_faults_mixed_into_load_do_not_disturb_others(server):
    url = server.url

    async def malformed(c, i):
        bodies = [b"{nope", b'{"prompt": 5}', b'{"prompt": "x", "max_tokens": -3}', b'{"messages": []}',
                  b'{"prompt": "x", "temperature": "hot"}', b"null", b'{"prompt": "x", "n": 1.5}', b""]
        path = "/v1/chat/completions" if i == 3 else "/v1/completions"
        r = await c.post(url + path, content=bodies[i % len(bodies)], headers={"content-type": "application/json"})
        return r.status_code

    async def oversized(c):
        r = await c.post(url + "/v1/completions", content=b"[" + b"1," * (3 << 20) + b"1]",
                         headers={"content-type": "application/json"})
        return r.status_code

    async def main():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=80)) as c:
            jobs = [_stream(c, url) for _ in range(24)]
            jobs += [_stream(c, url, {**BODY, "max_tokens": 100}, leave_after=2) for _ in range(8)]
            jobs += [malformed(c, i) for i in range(8)]
            jobs += [oversized(c)]
            return await asyncio.wait_for(asyncio.gather(*jobs), 60)

    res = asyncio.run(main())
    normal, left, bad, big = res[:24], res[24:32], res[32:40], res[40]
    assert all(code == 200 and ok is True for code, ok, _ in normal)
    assert all(r[1] == "left" for r in left)
    assert all(code == 400 for code in bad), bad
    assert big == 413
    health = httpx.get(url + "/health").json()
    assert health["running"] == 0 and health["waiting"] == 0
    ok = httpx.post(url + "/v1/completions", json={"prompt": "Mina", "max_tokens": 4}).json()
    assert ok["usage"]["completion_tokens"] == 4
