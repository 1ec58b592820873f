"""The server's batch lives as long as the server: once requests are answered, cancelled or timed out, no
state of theirs stays behind (engine and scheduler maps, the batch's KV cache, penalty state, the requests)."""

import gc
import time
import weakref

import httpx

from tests.serve.conftest import server_thread


def test_no_request_state_outlives_its_request(tiny_lm):
    body = {"model": "tiny", "prompt": "The cat", "temperature": 0, "ignore_eos": True}
    with server_thread(tiny_lm, max_batch=4) as s, httpx.Client(timeout=60) as c:
        srv = s.app.state.server
        refs, submit = [], srv.sched.submit

        def watched(group):
            refs.extend(weakref.ref(r.request) for r in group.rows)
            return submit(group)

        srv.sched.submit = watched
        for i in range(4):
            c.post(s.v1 + "/completions", json={**body, "max_tokens": 3 + i, "n": 2, "stop": ["zzz"], "logprobs": 2,
                                                "repetition_penalty": 1.2, "frequency_penalty": 0.5, "seed": i,
                                                "temperature": 0.7})
            c.post(s.v1 + "/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                     "max_tokens": 4, "stream": True, "presence_penalty": 0.4})
            c.post(s.v1 + "/completions", json={**body, "prompt": [5] * 127, "max_tokens": 9})  # room for one
            with c.stream("POST", s.v1 + "/completions", json={**body, "max_tokens": 100, "stream": True}) as r:
                for k, _ in enumerate(r.iter_lines()):  # the client leaves mid-stream: its row is cancelled
                    if k == 4:
                        break
        deadline = time.monotonic() + 30
        while c.get(s.url + "/health").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the scheduler's tick after the last one
        sched, gen = srv.sched, srv.sched.gen
        assert len(refs) == 4 * (2 + 1 + 1 + 1)
        assert sched.running == {} and not sched.waiting and sched.waiting_groups == {} and sched.admitting == []
        assert gen.requests == {} and gen.running == []
        assert gen.cache is None and gen.seen is None and gen.counts is None
        srv.sched.submit = submit
        gc.collect()
        assert [r for r in refs if r() is not None] == []
