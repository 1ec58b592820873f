"""Tool calls in chat (OpenAI's `tools`): the two answer formats chat templates ask for, the grammar that forces a
call (`tool_choice` required or named, as vLLM does it: guided decoding), and parsing calls out of an answer.

- `hermes`: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call (Qwen 2.5, Hermes,
  SmolLM3 and most templates whose text mentions `<tool_call>`);
- `json`: the whole answer is `{"name": ..., "parameters": {...}}` (Llama 3.1-3.3's custom-tool format).
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass

from lmstack.errors import LmstackError
from lmstack.infer.grammar import Guide, check_schema

HERMES, JSON = "hermes", "json"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's `function.arguments`)


def call_format(template: str | None) -> str:
    """How the template's model writes a call: hermes where the template mentions <tool_call>, else json."""
    return HERMES if template and "<tool_call>" in template else JSON


def check_tools(tools) -> list[dict]:
    """OpenAI's `tools`: a list of {"type": "function", "function": {"name", "description"?, "parameters"?}}, each
    `parameters` a valid JSON schema. One line naming the first problem."""
    if not isinstance(tools, list) or not tools:
        raise LmstackError("tools: must be a non-empty list of {type: function, function: {name, parameters}}")
    names = set()
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(f, dict):
            raise LmstackError(f"tools[{i}]: must be {{\"type\": \"function\", \"function\": {{...}}}}")
        if not isinstance(f.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", f["name"]):
            raise LmstackError(f"tools[{i}].function.name: must be 1-64 letters, digits, _ . or -")
        if f["name"] in names:
            raise LmstackError(f"tools[{i}].function.name: {f['name']!r} is defined twice")
        names.add(f["name"])
        params = f.get("parameters", {"type": "object"})
        if not isinstance(params, dict):
            raise LmstackError(f"tools[{i}].function.parameters: must be a JSON schema object")
        check_schema(params, f"tools[{i}].function.parameters")
    return tools


def tool_names(tools: list[dict]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def forced_call(tools: list[dict], name: str | None, fmt: str) -> Guide:
    """The grammar of an answer that is exactly one call: of tool `name`, or (None) of any of `tools`, its
    arguments following the tool's parameter schema."""
    key = "arguments" if fmt == HERMES else "parameters"
    chosen = [t["function"] for t in tools if name is None or t["function"]["name"] == name]
    schemas = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                 key: f.get("parameters") or {"type": "object"}},
                "required": ["name", key], "additionalProperties": False} for f in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if fmt == JSON:
        return Guide("json_schema", schema)
    return Guide("lark", 'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: %json ' + json.dumps(schema))


def _call(obj) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def parse_calls(text: str, names: list[str]) -> tuple[str | None, list[ToolCall]]:
    """(the rest of the answer or None, the calls in it) for an answer in either format; only calls of tools in
    `names` count (an answer naming no such tool is plain content)."""
    calls, rest = [], text
    blocks = _BLOCK.findall(text)
    if blocks:
        for b in blocks:
            try:
                c = _call(json.loads(b))
            except json.JSONDecodeError:
                c = None
            if c is None or c.name not in names:
                return text, []
            calls.append(c)
        rest = _BLOCK.sub("", text).strip()
    else:
        try:
            obj = json.loads(text.strip())
        except json.JSONDecodeError:
            return text, []
        objs = obj if isinstance(obj, list) else [obj]
        calls = [_call(o) for o in objs]
        if not calls or any(c is None or c.name not in names for c in calls):
            return text, []
        rest = ""
    return (rest or None), calls


def may_become_call(text: str) -> bool:
    """Could an answer that starts with `text` still turn out to be a call (streaming holds it back until not)?"""
    t = text.lstrip()
    return not t or t[0] in "{[" or "<tool_call>".startswith(t[:11])


# ---- a built-in tool ----------------------------------------------------------------------------------------------

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression: + - * / // % ** ( ), gcd(a, b), lcm(a, b)",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}

_OPS = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mult": lambda a, b: a * b, "Div": lambda a, b: a / b,
        "FloorDiv": lambda a, b: a // b, "Mod": lambda a, b: a % b, "Pow": lambda a, b: a ** b}
_FUNCS = {"gcd": lambda *x: math.gcd(*x), "lcm": lambda *x: math.lcm(*x), "abs": abs, "min": min, "max": max,
          "round": round}


def calculate(expression: str) -> str:
    """The calculator tool: the value of an arithmetic expression as text (an integer without ".0"), or
    "error: ..." for anything else, as a tool returns an error to the model rather than raising. Parsed with `ast`
    and evaluated node by node (never `eval`); powers are capped so an answer stays small."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op).__name__ in _OPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
                raise ValueError("power too large")
            return _OPS[type(node.op).__name__](a, b)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS
                and not node.keywords and node.args):
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(f"unsupported: {ast.unparse(node)[:40]}")

    try:
        v = ev(ast.parse(str(expression).strip(), mode="eval"))
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError) as e:
        return f"error: {e}"
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(round(v, 6) if isinstance(v, float) else v)


BUILTIN_TOOLS = {"calculator": (CALCULATOR, lambda args: calculate(args.get("expression", "")))}


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates read them: an assistant turn's call arguments as objects (OpenAI sends them as
    JSON text; a template writes them with `tojson`). Other messages are unchanged."""
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if calls:
            m = {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": _args(c["function"])}}
                                     for c in calls]}
        out.append(m)
    return out


def _args(f: dict):
    a = f.get("arguments", {})
    if isinstance(a, str):
        try:
            return json.loads(a)
        except json.JSONDecodeError:
            return a
    return a
