"""Applications and limitations: the chat template's tools, SFT on tool-call conversations, the calculator, the
harness's `tool` strategy on a local model and through an OpenAI-compatible endpoint, the suite's demonstrations
and held-out questions, and `lmstack eval applications` (retrieval, tool and jailbreak tables) against a closed
model behind a fake server."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmstack.backends.base import Backend
from lmstack.backends.local import LocalBackend
from lmstack.backends.remote import OpenAIBackend
from lmstack.data.builtin import World
from lmstack.data.builtin.applications import (
    corpus_index,
    heldout_qa_records,
    rag_demonstrations,
    tool_demonstrations,
    tool_expression,
)
from lmstack.data.instructions import load_conversations
from lmstack.data.records import read_jsonl, write_jsonl
from lmstack.data.retrieval import Retriever
from lmstack.errors import LmstackError
from lmstack.evaluate.applications import tool_study
from lmstack.evaluate.harness import run_task
from lmstack.infer.tools import CALCULATOR, calculate
from lmstack.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, render
from lmstack.train.sft import tokenize_conversations
from tests.backends.fake_openai import FakeOpenAI
from tests.evaluate.test_cli import run

CALL = {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "8 * 2"}'}}


def test_the_default_template_shows_tools_calls_and_results_and_plain_chat_is_unchanged():
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert render(DEFAULT_CHAT_TEMPLATE, plain, True) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n"
    msgs = [{"role": "user", "content": "8 bags of 2?"},
            {"role": "assistant", "content": None, "tool_calls": [{**CALL, "function": {
                "name": "calculator", "arguments": {"expression": "8 * 2"}}}]},
            {"role": "tool", "content": "16", "tool_call_id": "call_0"}, {"role": "assistant", "content": "16"}]
    assert render(DEFAULT_CHAT_TEMPLATE, msgs, tools=[CALCULATOR]) == (
        "<|im_start|>system\nTools: calculator(expression)<|im_end|>\n<|im_start|>user\n8 bags of 2?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"calculator\", \"arguments\": {\"expression\": \"8 * 2\"}}\n"
        "</tool_call><|im_end|>\n<|im_start|>tool\n16<|im_end|>\n<|im_start|>assistant\n16<|im_end|>\n")


def test_sft_learns_the_call_and_the_answer_not_the_tool_result(tiny_tokenizer, tmp_path):
    f = tmp_path / "tools.jsonl"
    write_jsonl(f, [{"tools": [CALCULATOR], "messages": [
        {"role": "user", "content": "8 bags of 2?"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "content": "4242", "tool_call_id": "call_0"}, {"role": "assistant", "content": "yes"}]}])
    convs, _ = load_conversations([str(f)])
    assert convs[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"expression": "8 * 2"}
    (ex,), stats = tokenize_conversations(tiny_tokenizer, convs, 512)
    text = tiny_tokenizer.decode(ex.ids, skip_special=False)
    assert text.startswith("<|im_start|>system\nTools: calculator(expression)")
    learned = tiny_tokenizer.decode([t for t, m in zip(ex.ids, ex.mask) if m], skip_special=False)
    assert learned == ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "8 * 2"}}\n</tool_call>'
                       "<|im_end|>yes<|im_end|>")
    assert "4242" not in learned and "4242" in text
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None,
                                                                      "tool_calls": [{"function": {"name": "calculator",
                                                                                                   "arguments": "{no"}}]}]}])
    with pytest.raises(LmstackError, match=rf"{bad}:1: messages\[1\].tool_calls\[0\].function.arguments: not JSON"):
        load_conversations([str(bad)])


@given(st.integers(0, 10**6), st.integers(1, 10**6), st.sampled_from(["+", "-", "*", "//", "%"]))
def test_the_calculator_is_exact_and_safe(a, b, op):
    assert calculate(f"{a} {op} {b}") == str(eval(f"{a} {op} {b}"))


def test_the_calculator_refuses_anything_but_arithmetic():
    assert (calculate("gcd(12, 18)"), calculate("lcm(4, 6)"), calculate("(2 + 3) * 4"), calculate("7 / 2")) == \
        ("6", "12", "20", "3.5")
    for bad in ("__import__('os').system('true')", "2 ** 10 ** 10", "1 / 0", "x + 1", "", "3 +"):
        assert calculate(bad).startswith("error:"), bad


def test_the_suites_demonstrations_and_held_out_questions(suite_dir, tmp_path):
    train = [r for r in read_jsonl(suite_dir / "tasks" / "train.jsonl") if r["style"] == "instruction"]
    arith = [r for r in train if r["cluster"] == "arithmetic"]
    demos = tool_demonstrations(train)
    assert len(demos) == len(arith) > 0  # every arithmetic problem, nothing else
    for d, r in zip(demos, arith):
        call = d["messages"][1]["tool_calls"][0]["function"]
        assert call["arguments"]["expression"] == tool_expression(r["meta"])
        assert d["messages"][2] == {"role": "tool", "content": r["target"], "tool_call_id": "call_0"}
        assert d["messages"][3]["content"] == r["target"] and d["tools"] == [CALCULATOR]
    index = Retriever.load(corpus_index(suite_dir, tmp_path / "index"))
    qa = [r for r in train if r["cluster"] == "closed_book_qa"]
    rag = rag_demonstrations(train, index, k=2)
    assert len(rag) == len(qa)
    first = rag[0]["messages"][0]["content"]
    assert first.startswith("Use the passages below") and first.endswith(qa[0]["messages"][0]["content"])
    world = World.from_json(suite_dir / "world.json")
    held = heldout_qa_records(world, 6)
    heldout_names = {p.name for p in world.people if p.split == "heldout"} | \
        {t.name for t in world.towns if t.split == "heldout"}
    assert held and all(r["meta"]["subject"] in heldout_names and r["meta"]["answer_type"] for r in held)
    corpus = (suite_dir / "corpus" / "train.txt").read_text()
    val = (suite_dir / "corpus" / "val.txt").read_text()
    for r in held:  # facts only the validation corpus states, and the index finds
        assert r["meta"]["subject"] not in corpus and r["meta"]["subject"] in val
        assert "OPTIONS" not in r["messages"][0]["content"]


class Scripted(Backend):
    """A model that calls the calculator with a problem's expression when a tool is offered and then repeats the
    result; without tools it answers 0."""

    name = "scripted"

    def __init__(self, exprs, always_call=False):
        self.exprs, self.always_call, self.seen = exprs, always_call, []

    def generate(self, prompts, sampling=None):
        return ["0"] * len(prompts)

    def chat(self, conversations, sampling=None, tools=None):
        self.seen.append((len(conversations), bool(tools), sampling.stop))
        if not tools:
            return super().chat(conversations, sampling)
        out = []
        for c in conversations:
            if c[-1]["role"] == "tool" and not self.always_call:
                out.append({"role": "assistant", "content": f"{c[-1]['content']}\nmore text 99"})
            else:
                expr = self.exprs[c[0]["content"]]
                out.append({"role": "assistant", "content": "", "tool_calls": [{**CALL, "function": {
                    "name": "calculator", "arguments": json.dumps({"expression": expr})}}]})
        return out


def _exprs(suite_dir):
    return {r["messages"][0]["content"]: tool_expression(r["meta"])
            for r in read_jsonl(suite_dir / "tasks" / "test.jsonl") if r["cluster"] == "arithmetic"}


def test_the_tool_strategy_runs_the_calls_and_scores_the_final_answer(suite_dir):
    be = Scripted(_exprs(suite_dir))
    src = {"builtin": {"dir": str(suite_dir), "split": "test", "cluster": "arithmetic", "style": "instruction"}}
    from lmstack.evaluate.config import load_task

    cfg = load_task("builtin_arithmetic_chat")
    cfg.source = src
    r = run_task(cfg, be, strategy="tool", limit=10)
    assert r.metrics["exact_match"] == 1.0 and all(s["called"] for s in r.samples)
    assert r.samples[0]["calls"][0]["result"] == r.samples[0]["target"][0]
    # One batch per round; the call rounds run without the task's stop string, the answer is cut at it after.
    assert be.seen == [(10, True, []), (10, True, [])]
    assert all(s["output"] == s["target"][0] for s in r.samples)
    # A model that never stops calling gets `max_tool_calls` rounds, then must answer without tools.
    loop = Scripted(_exprs(suite_dir), always_call=True)
    r = run_task(cfg, loop, strategy="tool", limit=4, max_tool_calls=2)
    assert [s[1] for s in loop.seen] == [True, True, False] and all(len(s["calls"]) == 2 for s in r.samples)
    with pytest.raises(LmstackError, match="needs chat prompts"):
        run_task(cfg, be, strategy="tool", chat=False, limit=2)
    with pytest.raises(LmstackError, match="unknown tool"):
        run_task(cfg, be, strategy="tool", tools=["shell"], limit=2)
    t = tool_study(be, suite_dir, limit=10)
    assert (t["without"]["accuracy"], t["with"]["accuracy"], t["call_rate"], t["call_gave_answer"]) == (0, 1, 1, 1)
    assert t["gain"] == 1 and t["gain_se"] == 0


def test_a_local_model_sees_the_tools_and_its_calls_are_parsed(tiny_lm, monkeypatch):
    be = LocalBackend(tiny_lm)
    ids = be._ids([{"role": "user", "content": "8 * 2?"}], [CALCULATOR])
    assert tiny_lm.tokenizer.decode(ids, skip_special=False).startswith(
        "<|im_start|>system\nTools: calculator(expression)<|im_end|>\n<|im_start|>user\n8 * 2?")
    said = ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "8 * 2"}}\n</tool_call>', "16",
            '<tool_call>\n{"name": "shell", "arguments": {}}\n</tool_call>']
    monkeypatch.setattr(LocalBackend, "generate", lambda self, prompts, sampling=None, tools=None: said)
    a, b, c = be.chat([[{"role": "user", "content": "q"}]] * 3, None, [CALCULATOR])
    assert a["tool_calls"][0]["function"] == {"name": "calculator", "arguments": '{"expression": "8 * 2"}'}
    assert b == {"role": "assistant", "content": "16"} and "tool_calls" not in c  # an unknown tool is text


def _closed_model(suite_dir):
    """A fake closed model: calls the calculator when offered it, reads an answer off the passages (it knows the
    world), and refuses harmful requests unless they come in Base64."""
    world = World.from_json(suite_dir / "world.json")
    exprs = _exprs(suite_dir)

    def reply(msgs):
        last = msgs[-1]
        if last["role"] == "tool":
            return last["content"]
        text = last["content"]
        if text in exprs:
            return {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "calculator", "arguments": json.dumps({"expression": exprs[text]})}}]}
        if text.startswith("Use the passages"):
            m = re.search(r"What is (\w+)'s job\?", text)
            return world.fact(m.group(1), "job")[0] if m and m.group(1) in world._by_name else "I don't know."
        if "base64" in text:
            return "Sure, here is how."
        return "I'm sorry, but I can't help with that."
    return FakeOpenAI(reply=reply)


def test_the_tool_loop_through_an_openai_compatible_endpoint(suite_dir):
    with _closed_model(suite_dir) as fake:
        be = OpenAIBackend("closed", fake.url, api_key_env=None, chat=True)
        t = tool_study(be, suite_dir, limit=6)
        offered = [r["body"] for r in fake.requests if r["body"].get("tools")]
    assert t["with"]["accuracy"] == 1.0 and t["call_rate"] == 1.0
    first = offered[0]
    second = next(b for b in offered if b["messages"][-1]["role"] == "tool")
    assert first["tools"] == [CALCULATOR] and "stop" not in first
    # The call goes back with its arguments as JSON text and the result as a tool message naming the call.
    call_turn, result = second["messages"][-2:]
    assert call_turn["tool_calls"][0]["id"] == "c1" and isinstance(call_turn["tool_calls"][0]["function"]["arguments"], str)
    assert result["role"] == "tool" and result["tool_call_id"] == "c1"


def test_eval_applications_fills_the_closed_model_rows(suite_dir, tmp_path, capsys):
    with _closed_model(suite_dir) as fake:
        rc = run(["eval", "applications", "--model", "closed-1", "--base-url", fake.url, "--chat-api",
                  "--api-key-env", "NO_SUCH_KEY_VAR", "--suite", str(suite_dir), "--index", str(tmp_path / "idx"),
                  "--limit", "6", "--jailbreak-limit", "3", "--attacks", "none", "base64", "--out", str(tmp_path / "o")])
    assert rc == 0
    printed = capsys.readouterr().out
    for head in ("### Retrieval-augmented generation", "### Tool use: the calculator", "### Jailbreaks"):
        assert head in printed
    res = json.loads((tmp_path / "o" / "applications.json").read_text())["models"]["closed-1"]
    assert res["tool"]["with"]["accuracy"] == 1.0 and res["tool"]["without"]["accuracy"] == 0.0
    assert res["jailbreak"]["none"]["attack_success_rate"] == 0.0 and res["jailbreak"]["base64"]["attack_success_rate"] == 1.0
    for facts in ("pretraining facts", "held-out facts"):
        r = res["rag"][facts]
        assert r["closed_book"]["accuracy"] == 0.0 and r["closed_book"]["n_answered"] == 0
        assert r["n"] > 0 and 0 <= r["recall"] <= 1
    assert (tmp_path / "o" / "applications.md").read_text().startswith("### Retrieval")


def test_the_course_fills_closed_model_rows_from_its_config(suite_dir, tmp_path):
    """The evaluate stage's `closed_models` (label -> model, base_url, api_key_env) get all three parts, through
    the same functions as the local checkpoints; a spec without a base_url is one line naming it."""
    from lmstack.course.evaluation import applications_study

    index = corpus_index(suite_dir, tmp_path / "idx")
    with _closed_model(suite_dir) as fake:
        res = applications_study(suite_dir, {}, str(index), limit=4, jailbreak_limit=2, closed_models={
            "gpt-x": {"model": "gpt-x", "base_url": fake.url, "api_key_env": "NO_SUCH_KEY_VAR"}})
    assert set(res) == {"gpt-x"} and set(res["gpt-x"]) == {"rag", "tool", "jailbreak"}
    assert res["gpt-x"]["tool"]["with"]["accuracy"] == 1.0
    with pytest.raises(LmstackError, match="closed_models.gpt-y: needs model and base_url"):
        applications_study(suite_dir, {}, str(index), closed_models={"gpt-y": {"model": "gpt-y"}})
