"""OpenAI's request and response shapes: parsing with the errors OpenAI gives, and response building.

Requests are parsed by hand rather than by pydantic models so that every failure is a 400 in
OpenAI's error shape naming the field (FastAPI's validation would answer 422 in its own shape),
unknown fields are ignored as OpenAI's SDKs and lm-evaluation-harness expect, and JSON booleans are
not taken for integers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lmstack.errors import LmstackError
from lmstack.infer.grammar import Guide, compile_guide
from lmstack.infer.sampling import SamplingParams
from lmstack.infer.tools import check_tools, tool_names


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad(param: str, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


_MISSING = object()


def _get(body: dict, name: str):
    v = body.get(name, _MISSING)
    return _MISSING if v is None else v  # JSON null means "the default", as OpenAI treats it


def _get_typed(body, name, default, kind: type, what: str):
    v = _get(body, name)
    if v is _MISSING:
        return default
    if not isinstance(v, kind):
        raise bad(name, f"'{name}' must be {what}, got {type(v).__name__}")
    return v


def get_bool(body, name, default):
    return _get_typed(body, name, default, bool, "a boolean")


def get_int(body, name, default, lo=None, hi=None):
    v = _get(body, name)
    if v is _MISSING:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad(name, f"'{name}' must be an integer, got {type(v).__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise bad(name, f"'{name}' must be in {rng}, got {v}")
    return v


def get_float(body, name, default, lo=None, hi=None, lo_open=False):
    v = _get(body, name)
    if v is _MISSING:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise bad(name, f"'{name}' must be a number, got {type(v).__name__ if not isinstance(v, float) else v}")
    v = float(v)
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        left = "(" if lo_open else "["
        raise bad(name, f"'{name}' must be in {left}{lo}, {hi}], got {v:g}")
    return v


def get_str(body, name, default):
    return _get_typed(body, name, default, str, "a string")


def get_stop(body) -> list[str]:
    v = _get(body, "stop")
    if v is _MISSING:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise bad("stop", "'stop' must be a string or a list of strings")
    if len(v) > 16:
        raise bad("stop", f"'stop' takes at most 16 strings, got {len(v)}")
    return [s for s in v if s]


def get_logit_bias(body, vocab_size) -> dict[int, float] | None:
    v = _get(body, "logit_bias")
    if v is _MISSING:
        return None
    if not isinstance(v, dict):
        raise bad("logit_bias", "'logit_bias' must be an object mapping token ids to biases")
    out = {}
    for k, b in v.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise bad("logit_bias", f"'logit_bias' key {k!r} is not a token id") from None
        if not 0 <= tok < vocab_size:
            raise bad("logit_bias", f"'logit_bias' token id {tok} is outside the vocabulary (0..{vocab_size - 1})")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise bad("logit_bias", f"'logit_bias' value for {k} must be a number in [-100, 100]")
        out[tok] = float(b)
    return out


@dataclass
class Options:
    """What a completion or chat request asks for, beyond the prompt."""

    params: SamplingParams  # the per-choice seed is set from `seed` + choice
    seed: int | None
    n: int
    max_tokens: int | None  # None: up to the context
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None  # top-N log-probabilities per token (0: only the chosen token's)
    guided_by: str | None = None  # the field that asked for structured output (params.grammar)


# vLLM's guided-decoding extras (and the same keys inside its newer `structured_outputs` object).
GUIDED = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
          "guided_grammar": "lark"}
STRUCTURED = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "lark"}


def get_guide(body: dict) -> tuple[Guide | None, str | None]:
    """What the answer must follow, and the field that said so: OpenAI's `response_format` (json_object,
    json_schema) or one of vLLM's `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` (or
    `structured_outputs`); at most one."""
    found = []
    rf = _get(body, "response_format")
    if rf is not _MISSING:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise bad("response_format", "'response_format' must be {\"type\": \"text\" | \"json_object\" | "
                                         "\"json_schema\", ...}")
        if rf["type"] == "json_object":
            found.append(("response_format", Guide("json_object")))
        elif rf["type"] == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
                raise bad("response_format", "'response_format'.json_schema.schema must be a JSON schema object")
            found.append(("response_format", Guide("json_schema", js["schema"])))
    so = _get(body, "structured_outputs")
    extras = [(k, GUIDED[k], _get(body, k)) for k in GUIDED]
    if so is not _MISSING:
        if not isinstance(so, dict):
            raise bad("structured_outputs", "'structured_outputs' must be an object")
        extras += [(f"structured_outputs.{k}", STRUCTURED[k], _get(so, k)) for k in STRUCTURED]
    for name, kind, v in extras:
        if v is _MISSING:
            continue
        if kind == "json_schema" and isinstance(v, str):  # vLLM takes the schema as a JSON string too
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise bad(name, f"'{name}' is not valid JSON: {e}") from None
        found.append((name, Guide(kind, v)))
    if len(found) > 1:
        raise bad(found[1][0], f"give one of {', '.join(n for n, _ in found)}, not several")
    return (found[0][1], found[0][0]) if found else (None, None)


def parse_options(body: dict, vocab_size: int, chat: bool, model_stop_ids: list[int] = (), adapter: int = 0) -> Options:
    """Sampling and response options; `stop_token_ids` (a vLLM extra) adds to the model's own stop ids; `adapter`:
    the LoRA adapter the request's model name picked (0: the base)."""
    for name, asked in (("use_beam_search", get_bool(body, "use_beam_search", False)),  # vLLM's extras
                        ("num_beams", get_int(body, "num_beams", 1, 1) > 1)):
        if asked:
            raise bad(name, "beam search is not served; sample, or decode greedily with temperature 0")
    n = get_int(body, "n", 1, 1, 128)
    best_of = get_int(body, "best_of", n, 1, 128)
    if best_of != n:
        raise bad("best_of", "'best_of' other than n is not supported")
    max_tokens = get_int(body, "max_tokens", None if chat else 16, 0)
    if chat:
        max_tokens = get_int(body, "max_completion_tokens", max_tokens, 0)
    temperature = get_float(body, "temperature", 1.0, 0, 2)
    top_p = get_float(body, "top_p", 1.0, 0, 1, lo_open=True)
    top_k = get_int(body, "top_k", 0, -1)
    min_p = get_float(body, "min_p", 0.0, 0, 1)
    rep = get_float(body, "repetition_penalty", 1.0, 0, None, lo_open=True)
    freq = get_float(body, "frequency_penalty", 0.0, -2, 2)
    pres = get_float(body, "presence_penalty", 0.0, -2, 2)
    seed = get_int(body, "seed", None)
    stop = get_stop(body)
    stop_ids = _get(body, "stop_token_ids")
    if stop_ids is not _MISSING and (not isinstance(stop_ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in stop_ids)):
        raise bad("stop_token_ids", "'stop_token_ids' must be a list of integers")
    ignore_eos = get_bool(body, "ignore_eos", False)
    logit_bias = get_logit_bias(body, vocab_size)
    stream = get_bool(body, "stream", False)
    so = _get(body, "stream_options")
    include_usage = False
    if so is not _MISSING:
        if not isinstance(so, dict):
            raise bad("stream_options", "'stream_options' must be an object")
        include_usage = get_bool(so, "include_usage", False)
    if chat:
        echo = False
        want = get_bool(body, "logprobs", False)
        top = get_int(body, "top_logprobs", None, 0, 20)
        if top is not None and not want:
            raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
        logprobs = (top or 0) if want else None
    else:
        echo = get_bool(body, "echo", False)
        logprobs = get_int(body, "logprobs", None, 0, 20)
    guide, guide_field = get_guide(body)
    grammar = None
    if guide is not None:
        try:
            grammar = compile_guide(guide)
        except LmstackError as e:
            raise bad(guide_field, f"'{guide_field}': {e}") from None
    try:
        params = SamplingParams(
            max_new_tokens=max_tokens if max_tokens is not None else 1 << 30, temperature=temperature,
            top_k=max(top_k, 0), top_p=top_p, min_p=min_p, repetition_penalty=rep, frequency_penalty=freq,
            presence_penalty=pres, logit_bias=logit_bias, stop=stop,
            stop_token_ids=[*model_stop_ids, *stop_ids] if stop_ids is not _MISSING else None,
            ignore_eos=ignore_eos, seed=seed, logprobs=logprobs if logprobs else None, grammar=grammar,
            adapter=adapter,
        )
    except LmstackError as e:
        raise bad("sampling", str(e)) from None
    return Options(params, seed, n, max_tokens, stream, include_usage, echo, logprobs, guide_field)


def parse_prompts(value, tokenizer, vocab_size: int) -> list[tuple[list[int], str | None]]:
    """`prompt` as a string, a list of strings, a list of token ids or a list of lists of them.

    Returns (token ids, text or None) per prompt. Text is tokenised as the model's tokenizer does
    (a BOS where the tokenizer adds one); token ids are taken as they are, no BOS added.
    """
    if value is None:
        raise bad("prompt", "'prompt' is required")

    def ids_ok(lst, where):
        for t in lst:
            if isinstance(t, bool) or not isinstance(t, int):
                raise bad("prompt", f"{where} must hold integers (token ids)")
            if not 0 <= t < vocab_size:
                raise bad("prompt", f"{where}: token id {t} is outside the vocabulary (0..{vocab_size - 1})")
        if not lst:
            raise bad("prompt", f"{where} is empty")
        return list(lst)

    def text(s):
        if tokenizer is None:
            raise bad("prompt", "this model has no tokenizer: send token ids")
        ids = tokenizer.encode(s)
        if not ids:  # an empty prompt conditions on the start of a document, as OpenAI's models do
            ids = [tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id]
        return ids, s

    if isinstance(value, str):
        return [text(value)]
    if not isinstance(value, list) or not value:
        raise bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of lists "
                            "of token ids (and not empty)")
    if all(isinstance(v, str) for v in value):
        return [text(v) for v in value]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [(ids_ok(value, "'prompt'"), None)]
    if all(isinstance(v, list) for v in value):
        return [(ids_ok(v, f"'prompt'[{i}]"), None) for i, v in enumerate(value)]
    raise bad("prompt", "'prompt' mixes types: give strings, token ids, or lists of token ids")


def parse_messages(value) -> list[dict]:
    """OpenAI's `messages`: text content (a string or text parts); an assistant turn's `tool_calls` (their
    `arguments` JSON strings parsed into objects, which is what chat templates render, as vLLM does) and a `tool`
    turn's `tool_call_id` kept."""
    if not isinstance(value, list) or not value:
        raise bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad("messages", f"'messages'[{i}] must be an object")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise bad("messages", f"'messages'[{i}].role must be a string")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text can be served by a text model
            parts = []
            for p in content:
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise bad("messages", f"'messages'[{i}].content: only text parts are supported")
                parts.append(p["text"])
            content = "".join(parts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise bad("messages", f"'messages'[{i}].content must be a string or a list of text parts")
        msg = {"role": role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _history_calls(m["tool_calls"], i)
        for key in ("tool_call_id", "name"):
            if isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


def _history_calls(calls, i: int) -> list[dict]:
    if not isinstance(calls, list):
        raise bad("messages", f"'messages'[{i}].tool_calls must be a list")
    out = []
    for j, c in enumerate(calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise bad("messages", f"'messages'[{i}].tool_calls[{j}] must be {{id, type, function: {{name, arguments}}}}")
        args = f.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise bad("messages", f"'messages'[{i}].tool_calls[{j}].function.arguments is not JSON: {e}") \
                    from None
        out.append({"id": c.get("id"), "type": "function", "function": {"name": f["name"], "arguments": args}})
    return out


def parse_tools(body: dict) -> tuple[list[dict] | None, str | None]:
    """(`tools`, `tool_choice`): the choice "none", "auto", "required" or a tool's name (from {"type":
    "function", "function": {"name"}}); (None, None) without tools."""
    tools = _get(body, "tools")
    choice = _get(body, "tool_choice")
    if tools is _MISSING:
        if choice is not _MISSING and choice != "none":
            raise bad("tool_choice", "'tool_choice' needs 'tools'")
        return None, None
    try:
        check_tools(tools)
    except LmstackError as e:
        raise bad("tools", str(e)) from None
    if choice is _MISSING:
        return tools, "auto"
    if choice in ("none", "auto", "required"):
        return tools, choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or "
                                 "{\"type\": \"function\", \"function\": {\"name\": ...}}")
    if name not in tool_names(tools):
        raise bad("tool_choice", f"'tool_choice' names {name!r}, which is not among the tools")
    return tools, name


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
