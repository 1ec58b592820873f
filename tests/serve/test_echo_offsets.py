"""Echo + logprobs with a tokenizer that adds a BOS decoding to "<s>": `text_offset` indexes the returned
text (the BOS, which the echoed prompt text does not contain, sits at 0 and takes no room), and the remote
backend scoring through the server equals the local model's scoring."""

import json

import httpx
import pytest

from lmstack.backends import OpenAIBackend, get_backend
from tests.backends.fake_openai import bos_lm
from tests.serve.conftest import server_thread


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return bos_lm(tiny_tokenizer)


@pytest.fixture(scope="module")
def served(lm):
    with server_thread(lm) as s:
        yield s


def _streamed(url, body) -> dict:
    """The one choice of a streamed completion, its chunks joined."""
    text, lp = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                text += c["text"]
                for k, v in (c["logprobs"] or {}).items():
                    lp[k] += v
    return {"text": text, "logprobs": lp}


def test_text_offset_indexes_the_echoed_text(served, lm):
    tok = lm.tokenizer
    assert tok.add_bos and tok.decode([tok.bos_id]) == "<s>"
    body = {"model": "tiny", "echo": True, "logprobs": 1, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    cases = [("The small cat sat on the mat", True), ("Q: What is 3 plus 4?\nA:", True), ("고양이는 작다", True),
             ("", True), (tok.encode("<s>The cat"), False)]  # token ids: the text is their decoding, BOS and all
    checked = 0
    for prompt, text_prompt in cases:
        plain = httpx.post(served.v1 + "/completions", json={**body, "prompt": prompt}, timeout=60).json()["choices"]
        streamed = _streamed(served.v1 + "/completions", {**body, "prompt": prompt})
        for c in (plain[0], streamed):
            text, lp = c["text"], c["logprobs"]
            tokens, offs = lp["tokens"], lp["text_offset"]
            assert tokens[0] == "<s>" and offs[0] == 0
            assert offs == sorted(offs) and len(offs) == len(tokens)
            if text_prompt:
                assert text.startswith(prompt)
            for i in range(0 if not text_prompt else 1, len(tokens)):
                if "\ufffd" not in tokens[i]:  # half a character has no text of its own
                    assert text[offs[i]:].startswith(tokens[i]), (prompt, i, tokens[i], text[offs[i]:])
                    checked += 1
            assert c["text"] == plain[0]["text"] and offs == plain[0]["logprobs"]["text_offset"]
    assert checked > 40


def test_remote_backend_scores_through_the_server_as_the_local_model(served, lm):
    reqs = [("The small cat sat on the", " red mat."), ("Q: What is 3 plus 4?\nA:", " 7"), ("Mina lives ", "in Porto"),
            ("고양이는", " 작다."), ("<s>The cat", " sat")]
    texts = ["The small cat sat on the red mat.", "고양이는 작다. 강아지는 크다."]
    local = get_backend(lm).loglikelihood(reqs) + get_backend(lm).loglikelihood_rolling(texts)
    with OpenAIBackend("tiny", served.v1, api_key_env=None, concurrency=1) as be:
        remote = be.loglikelihood(reqs) + be.loglikelihood_rolling(texts)
    for r, want in zip(remote, local):
        assert r.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert r.n_tokens == want.n_tokens and r.is_greedy == want.is_greedy
