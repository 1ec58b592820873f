"""The HTTP API through real clients: the official `openai` package, and raw HTTP for the legacy details."""

import json

import httpx
import pytest

from lmstack.infer.engine import generate
from lmstack.infer.logprobs import token_logprobs
from lmstack.infer.sampling import SamplingParams

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0, timeout=30)


def _greedy(lm, ids, n, **kw):
    return generate(lm.model, [ids], SamplingParams(max_new_tokens=n, temperature=0, **kw), lm.tokenizer)[0]


def test_models_health_and_tokenizer_endpoints(server, tiny_lm):
    tok = tiny_lm.tokenizer
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    models = httpx.get(server.v1 + "/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["model_max_length"] == 128
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "The cat 🙂"}).json()
    assert ids["tokens"] == tok.encode("The cat 🙂") and ids["count"] == len(ids["tokens"])
    chat = httpx.post(server.url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["tokens"] == tok.encode_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)[0]
    text = httpx.post(server.url + "/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text == "The cat 🙂"


def test_greedy_completions_match_the_engine_for_every_prompt_form(client, tiny_lm):
    tok = tiny_lm.tokenizer
    r = client.completions.create(model="tiny", prompt="The small cat", max_tokens=10, temperature=0)
    ref = _greedy(tiny_lm, tok.encode("The small cat"), 10)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == ref.finish_reason
    assert r.usage.prompt_tokens == len(tok.encode("The small cat")) and r.usage.completion_tokens == len(ref.ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    prompts = ["Mina lives", "def add(a, b):", "Q: What"]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in r.choices] == list(range(6))
    for c in r.choices:
        assert c.text == _greedy(tiny_lm, tok.encode(prompts[c.index // 2]), 6).text
    # Token ids go in as they are: no BOS added.
    ids = [tok.bos_id, *tok.encode("The cat")]
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert r.choices[0].text == _greedy(tiny_lm, ids, 5).text and r.usage.prompt_tokens == len(ids)
    r = client.completions.create(model="tiny", prompt=[ids, ids[1:]], max_tokens=5, temperature=0)
    assert [c.text for c in r.choices] == [_greedy(tiny_lm, ids, 5).text, _greedy(tiny_lm, ids[1:], 5).text]


def test_echo_logprobs_score_every_prompt_token(server, tiny_lm):
    tok = tiny_lm.tokenizer
    seqs = [tok.encode("The small cat sat on the mat"), tok.encode("고양이는 작다")]
    for max_tokens in (0, 1):
        body = {"model": "tiny", "prompt": seqs, "echo": True, "logprobs": 2, "max_tokens": max_tokens,
                "temperature": 0}
        out = httpx.post(server.v1 + "/completions", json=body, timeout=30).json()
        assert [c["index"] for c in out["choices"]] == [0, 1]
        for c, ids, ref in zip(out["choices"], seqs, token_logprobs(tiny_lm.model, seqs)):
            lp = c["logprobs"]
            n = len(ids) + max_tokens
            assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
            assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
            assert lp["token_logprobs"][1:len(ids)] == pytest.approx(ref, abs=1e-4)
            assert c["text"].startswith(tok.decode(ids))
            assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
            if c["index"] == 0:  # ASCII: every token is whole characters
                assert "".join(lp["tokens"][:3]) == c["text"][:lp["text_offset"][3]]
            for t in range(1, n):  # top-2 plus the token itself when it is not among them
                top = lp["top_logprobs"][t]
                assert 1 <= len(top) <= 3 and max(top.values()) >= lp["token_logprobs"][t]
            if max_tokens:
                assert lp["text_offset"][-1] == len(tok.decode(ids))
        assert out["usage"]["completion_tokens"] == 2 * max_tokens


def test_sampling_parameters(client, tiny_lm):
    tok = tiny_lm.tokenizer

    def one(**kw):
        kw.setdefault("max_tokens", 12)
        return client.completions.create(model="tiny", prompt="The", **kw).choices

    a, b = one(temperature=1.0, seed=3), one(temperature=1.0, seed=3)
    assert a[0].text == b[0].text
    two = one(temperature=1.0, seed=3, n=2)  # choice i is seeded with seed + i
    assert two[0].text == a[0].text and two[1].text == one(temperature=1.0, seed=4)[0].text
    full = one(temperature=0, extra_body={"ignore_eos": True})[0].text
    stop = full[4:6]
    cut = one(temperature=0, stop=[stop], extra_body={"ignore_eos": True})[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
    forced = one(temperature=0, logit_bias={str(tok.eos_id): 100})[0]
    assert forced.text == "" and forced.finish_reason == "stop"
    ref = _greedy(tiny_lm, tok.encode("The"), 12, frequency_penalty=0.5, presence_penalty=0.5,
                  repetition_penalty=1.3)
    pen = one(temperature=0, frequency_penalty=0.5, presence_penalty=0.5,
              extra_body={"repetition_penalty": 1.3, "top_k": 5, "min_p": 0.05, "unknown_field": [1, 2]})
    assert pen[0].text == ref.text
    assert len(one(temperature=0.8, top_p=0.5, extra_body={"top_k": 3, "min_p": 0.1})) == 1


def test_chat_and_streaming(client, tiny_lm):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where does Mina live?"}]
    tok = tiny_lm.tokenizer
    # The random model would end its turn at once; push the end-of-turn tokens down for a longer answer.
    bias = {t: -100.0 for t in tok.stop_ids}
    kw = dict(model="tiny", messages=msgs, max_tokens=12, temperature=0, logit_bias={str(t): -100 for t in bias})
    r = client.chat.completions.create(**kw)
    ref = _greedy(tiny_lm, tiny_lm.chat_ids(msgs), 12, logit_bias=bias)
    assert len(ref.ids) == 12
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(tiny_lm.chat_ids(msgs)) and r.usage.completion_tokens == 12
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.text
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    # Without the bias the model ends its turn on its own stop token.
    short = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0).choices[0]
    plain = _greedy(tiny_lm, tiny_lm.chat_ids(msgs), 12)
    assert short.message.content == plain.text and short.finish_reason == plain.finish_reason
    stream = client.completions.create(model="tiny", prompt="Mina", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == _greedy(tiny_lm, tiny_lm.encode("Mina"), 8).text
    lp = client.chat.completions.create(**{**kw, "max_tokens": 3}, logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 for t in content)


def test_errors_in_openai_shape(server, client):
    def post(body, path="/completions", raw=None):
        r = httpx.post(server.v1 + path, content=raw if raw is not None else json.dumps(body), timeout=30,
                       headers={"content-type": "application/json"})
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        return r.status_code, err

    assert post(None, raw=b"{not json")[0] == 400
    assert post(None, raw=b"[1, 2]")[0] == 400
    code, err = post({"prompt": "x", "max_tokens": "ten"})
    assert code == 400 and err["param"] == "max_tokens"
    for field, value in [("temperature", 5), ("top_p", 0), ("n", 0), ("max_tokens", -1), ("logprobs", 50),
                         ("presence_penalty", 3), ("echo", "yes"), ("stop", [1]), ("logit_bias", {"x": 1}),
                         ("use_beam_search", True), ("num_beams", 4)]:  # beam search: refused, not ignored
        code, err = post({"prompt": "x", field: value})
        assert code == 400 and err["param"] == field, (field, err)
    for prompt in ([], [1, "a"], [[]], [10 ** 6], None):
        assert post({"prompt": prompt})[0] == 400
    code, err = post({"prompt": list(range(5)) * 30})
    assert code == 400 and "128" in err["message"] and err["code"] == "context_length_exceeded"
    assert post({"messages": "hi"}, "/chat/completions")[0] == 400
    assert post({"messages": [{"role": "user", "content": 3}]}, "/chat/completions")[0] == 400
    assert post({"prompt": "x", "model": "gpt-9"})[0] == 404
    assert httpx.get(server.url + "/nope").status_code == 404
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", temperature=-1)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 200}])
    assert "128" in e.value.body["message"]


def test_stream_events_survive_clients_that_split_on_unicode_line_breaks():
    """httpx (the openai client's transport) splits a stream at every str.splitlines() separator: text holding
    U+0085, U+2028 or U+2029 must still arrive as one `data:` line that decodes to the same text."""
    from lmstack.serve.app import _sse

    text = "a\u2028b\u2029c\x85d\ne 한국어"
    event = _sse({"choices": [{"text": text}]})
    lines = [x for x in event.splitlines() if x]
    assert len(lines) == 1 and json.loads(lines[0][6:])["choices"][0]["text"] == text
    assert "한국어" in lines[0]  # other text stays readable


def test_served_names_follow_vllm(server, tiny_ckpt):
    """--served-model-name tiny tiny-alias, --model PATH: all three are served, "tiny" is reported; /v1/models lists
    them; lm-eval's `model=PATH` (how vLLM users write it) is answered, another name is a 404."""
    listed = httpx.get(server.url + "/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny", "tiny-alias", str(tiny_ckpt)]
    for name in ("tiny", "tiny-alias", str(tiny_ckpt)):
        r = httpx.post(server.url + "/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "tiny", r.text
        assert httpx.get(f"{server.url}/v1/models/{name}").json()["id"] == name
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny-other", "prompt": "x"})
    assert r.status_code == 404 and "'tiny-alias'" in r.json()["error"]["message"]
