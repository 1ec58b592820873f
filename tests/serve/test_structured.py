"""Structured output and tool calls through the server, with the official `openai` client: JSON schemas, vLLM's
guided choice and regex, forced and parsed tool calls (streamed as deltas too), and their bad input."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
import torch

from lmstack.infer.tools import HERMES, JSON, call_format, may_become_call, parse_calls
from tests.serve.conftest import server_thread

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "pet", "tags"],
          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "pet": {"enum": ["cat", "dog", None]},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 8},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "required": ["a", "b"], "additionalProperties": False,
                                  "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                 "b": {"type": "integer", "minimum": 0, "maximum": 99}}}}}
# A Hermes-style template (Qwen 2.5's shape): tools in the system turn, calls in <tool_call> blocks, results as
# <tool_response>.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}"
    "<tool_call>\n{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}\n"
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def long_lm(tiny_tokenizer):
    """The tiny random model with a 1024-token context (tool definitions are long) and a template that renders
    tools."""
    from lmstack.lm import LM
    from lmstack.model.config import preset
    from lmstack.model.transformer import Transformer
    from lmstack.tokenizer.core import Tokenizer

    t = tiny_tokenizer
    tok = Tokenizer(t.backend, t.bos_token, t.eos_token, t.pad_token, TOOLS_TEMPLATE)
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=t.vocab_size, max_seq_len=1024, bos_token_id=t.bos_id,
                 eos_token_id=t.eos_id, pad_token_id=t.pad_id, init_std=0.3)
    return LM(Transformer(cfg).eval(), tok, {})


@pytest.fixture(scope="module")
def served(long_lm):
    with server_thread(long_lm, max_batch=32) as s:
        yield s


def _client(s):
    return openai.OpenAI(base_url=s.v1, api_key="x", max_retries=0)


def test_32_concurrent_sampled_requests_follow_their_json_schema(served):
    client = _client(served)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}

    def ask(i):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"Person {i}?"}],
                                           response_format=fmt, temperature=1.0, seed=i, max_tokens=120)
        return r.choices[0]

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    for a in answers:
        assert a.finish_reason == "stop", a
        jsonschema.validate(json.loads(a.message.content), SCHEMA)
    assert len({a.message.content for a in answers}) > 16  # sampled: different answers, each valid


def test_json_object_guided_choice_and_regex(served):
    client = _client(served)
    r = client.completions.create(model="tiny", prompt="x", max_tokens=60, seed=1,
                                  extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.choices[0].text), dict)
    r = client.completions.create(model="tiny", prompt="Pick:", max_tokens=8, n=6, seed=2,
                                  extra_body={"guided_choice": ["red", "green", "blue"]})
    assert {c.text for c in r.choices} <= {"red", "green", "blue"} and len(r.choices) == 6
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "code?"}], max_tokens=12,
                                       seed=3, extra_body={"guided_regex": r"[A-Z]{2}-[0-9]{3}"})
    assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", r.choices[0].message.content)
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "n?"}], max_tokens=12,
                                       seed=3, extra_body={"structured_outputs": {"regex": r"[0-9]{4}"}})
    assert re.fullmatch(r"[0-9]{4}", r.choices[0].message.content)


def test_structured_output_bad_input_is_a_400_naming_the_field(served):
    def post(body, path="/chat/completions"):
        r = httpx.post(served.v1 + path, json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                               **body})
        return r.status_code, r.json().get("error", {})

    for body, field in [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"guided_regex": "(("}, "guided_regex"),
        ({"guided_regex": r"[^\s\S]"}, "guided_regex"),  # matches nothing: no answer can start
        ({"guided_choice": []}, "guided_choice"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "required", "guided_regex": "a"}, "tool_choice"),
    ]:
        code, err = post(body)
        assert code == 400 and err["param"] == field, (body, err)
        assert "\n" not in err["message"]


def test_forced_tool_calls_with_the_openai_client(served):
    client = _client(served)
    msgs = [{"role": "user", "content": "Weather in Oslo for 3 days?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER, ADD], tool_choice="required",
                                       max_tokens=200, seed=0)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "add")
    schema = {"get_weather": WEATHER, "add": ADD}[call.function.name]["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    # A named tool, and the conversation continued with the call and its result (role "tool").
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER, ADD], max_tokens=200, seed=1,
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), ADD["function"]["parameters"])
    follow = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": "42"}]
    r = client.chat.completions.create(model="tiny", messages=follow, tools=[WEATHER, ADD], tool_choice="none",
                                       max_tokens=5, seed=2)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None


def test_streamed_tool_call_deltas_add_up_to_the_call(served):
    client = _client(served)
    kw = dict(model="tiny", messages=[{"role": "user", "content": "Add 2 and 3."}], tools=[ADD],
              tool_choice="required", max_tokens=200, seed=5)
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    calls, finish = {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        d = chunk.choices[0].delta
        assert not d.content
        for tc in d.tool_calls or []:
            got = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            got["id"] = tc.id or got["id"]
            got["name"] += (tc.function.name or "") if tc.function else ""
            got["arguments"] += (tc.function.arguments or "") if tc.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "add" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)  # same seed, same call


PLAIN_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_a_template_without_tools_is_refused(tiny_lm):
    from lmstack.lm import LM
    from lmstack.tokenizer.core import Tokenizer

    t = tiny_lm.tokenizer
    lm = LM(tiny_lm.model, Tokenizer(t.backend, t.bos_token, t.eos_token, t.pad_token, PLAIN_CHATML), {})
    with server_thread(lm) as s:
        r = httpx.post(s.v1 + "/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [ADD]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "does not render tools" in r.json()["error"]["message"]


def test_tool_calls_are_parsed_from_either_format():
    names = ["add", "get_weather"]
    content, calls = parse_calls('Sure.<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
                                 names)
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 1, "b": 2})]
    content, calls = parse_calls('{"name": "get_weather", "parameters": {"city": "Oslo"}}', names)
    assert content is None and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    assert parse_calls('{"name": "rm", "parameters": {}}', names) == ('{"name": "rm", "parameters": {}}', [])
    assert parse_calls("plain text", names) == ("plain text", [])
    assert parse_calls("<tool_call>{broken</tool_call>", names)[1] == []
    assert may_become_call("  <tool_") and may_become_call('{"na') and not may_become_call("Hello")
    assert call_format(TOOLS_TEMPLATE) == HERMES and call_format("{{ tools }}") == JSON
