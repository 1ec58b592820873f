"""Chat templates: rendering them the way `transformers` does, and finding the assistant turns in the result.

Templates are Jinja strings from model repos, i.e. untrusted code, so they run in jinja2's immutable sandbox
with the same options and helpers as `transformers.apply_chat_template`; otherwise a template that renders
one way here and another way in HF would silently train a model on a format it is never prompted with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmstack.errors import LmstackError

# ChatML, as used by SmolLM2 and Qwen (minus their default system prompts). With `tools` a system turn lists each
# tool as name(parameters) (a tiny model's context has no room for Qwen's JSON schemas); an assistant turn's
# `tool_calls` are written in the Hermes/Qwen format (<tool_call>{"name", "arguments"}</tool_call>) and a tool's
# result is its own `tool` turn. Conversations without tools render exactly as plain ChatML.
DEFAULT_CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\nTools:' }}{% for t in tools %}"
    "{{ ' ' + t['function']['name'] + '(' + ((t['function']['parameters'] or {})['properties'] or {}).keys()"
    "| join(', ') + ')' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is defined and message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] is defined %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>\\n' + {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson"
    " + '\\n</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class _GenerationTag(jinja2.ext.Extension):
    # HF templates may wrap assistant text in {% generation %}...{% endgeneration %}; we find assistant spans by
    # prefix rendering instead, so the tag only has to parse and pass its body through.
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson HTML-escapes; HF's does not, and the rendered text must match HF's byte for byte
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    # Underscore attributes are the way out of a sandbox through a namespace; HF forbids them too
    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat template: namespace attribute {name!r} is not allowed"
            )


@lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise LmstackError(f"chat template: Jinja syntax error on line {e.lineno}: {e.message}") from None


def _plain(value):
    # Templates should only ever see JSON-like data (HF does the same), never objects with callable methods
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def normalize_messages(messages: Sequence[Mapping]) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise LmstackError(
                f"chat message {i} is a {type(m).__name__}, expected a dict with 'role' and 'content'"
            )
        # OpenAI-style APIs send content=None; templates handle a missing key better than a None one
        out.append({k: _plain(v) for k, v in m.items() if v is not None})
    return out


@lru_cache(maxsize=32)
def renders_tools(template: str) -> bool:
    """Does the template read a `tools` variable (as Llama 3.1+, Qwen 2.5, Mistral and Hermes templates do)?"""
    env = jinja2.Environment(extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(env.parse(template))
    except jinja2.TemplateSyntaxError:
        return False


def render(
    template: str, messages: Sequence[Mapping], add_generation_prompt: bool = False, tools: list | None = None,
    **special_tokens
) -> str:
    """The conversation as text, as transformers' apply_chat_template renders it; `tools`: the OpenAI-style
    function definitions (only where the template reads them: `renders_tools`)."""
    compiled = compile_template(template)
    kwargs = {k: v for k, v in special_tokens.items() if v is not None}
    try:
        return compiled.render(
            messages=normalize_messages(messages),
            add_generation_prompt=add_generation_prompt,
            tools=_plain(tools) if tools else None,
            documents=None,
            **kwargs,
        )
    except jinja2.TemplateError as e:
        raise LmstackError(f"chat template: {type(e).__name__}: {e}") from None


def assistant_spans(render_fn: Callable[[list, bool], str], messages: Sequence[Mapping], full: str):
    """Char spans [start, end) of assistant turns in `full`, found by rendering conversation prefixes.

    Works for any template that renders a conversation as the concatenation of its turns, without needing the
    template to carry {% generation %} tags (few templates on the Hub do).
    """
    messages = list(messages)
    spans = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prompt = render_fn(messages[:i], True)
        if prompt == render_fn(messages[:i], False):
            raise LmstackError(
                "chat template: has no assistant marker (rendering with add_generation_prompt=True adds nothing), "
                "so assistant turns cannot be located and the model could not be prompted to answer"
            )
        turn = render_fn(messages[: i + 1], False)
        if not (turn.startswith(prompt) and full.startswith(turn)):
            raise LmstackError(
                f"chat template: does not render assistant turns as a suffix of the conversation before them "
                f"(message {i}: the rendering of messages[:{i}] with the generation prompt is not a prefix of the "
                f"rendering of messages[:{i + 1}], or that is not a prefix of the whole conversation); "
                "templates that rewrite earlier turns cannot be used for SFT masks"
            )
        start, end = len(prompt), len(turn)
        # Whitespace a template puts after the end-of-turn token (ChatML's "\n") is never generated, since
        # generation stops on that token, so it is not part of what the model should learn to say
        while end > start and turn[end - 1].isspace():
            end -= 1
        spans.append((start, end))
    return spans


def mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    mask = [0] * len(offsets)
    j = 0
    for t, (s, e) in enumerate(offsets):
        while j < len(spans) and s >= spans[j][1]:
            j += 1
        if j == len(spans):
            break
        if s >= spans[j][0] and e <= spans[j][1] and e > s:
            mask[t] = 1
    return mask
