"""Instruction data for SFT: every common format read into conversations (lists of {role, content}).

Formats (detected per record):
- lmstack / OpenAI messages: {"messages": [{"role", "content"}, ...]}
- Alpaca: {"instruction", "input"?, "output"}
- ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}
- Hugging Face datasets by name: "hf:NAME[:CONFIG][:SPLIT]" (online), rows in any of the above formats.

A record that fits none, lacks a field or has an empty response is an error naming file and line,
unless skipping is asked for; then it is counted and reported (`LoadReport`), never silently dropped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from lmstack.errors import LmstackError
from lmstack.infer.tools import check_tools

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}


@dataclass
class LoadReport:
    read: int = 0
    kept: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"where", "reason"}

    def add_skip(self, where: str, reason: str):
        self.skipped.append({"where": where, "reason": reason})


def to_messages(rec: dict, where: str) -> list[dict]:
    """One record in any supported format -> a validated conversation."""
    if not isinstance(rec, dict):
        raise LmstackError(f"{where}: expected a JSON object")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise LmstackError(f"{where}: field 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
            content = m.get("content") if isinstance(m, dict) else None
            if calls is not None and content is None:
                content = ""  # OpenAI's assistant turn that only calls tools
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
                raise LmstackError(f"{where}: messages[{i}] needs string fields 'role' and 'content'")
            msg = {"role": m["role"], "content": content}
            if calls is not None:
                msg["tool_calls"] = _tool_calls(calls, f"{where}: messages[{i}].tool_calls")
            out.append(msg)
        if "tools" in rec:
            _check_tools(rec["tools"], where)
    elif "conversations" in rec:
        out = []
        for i, m in enumerate(rec["conversations"] or []):
            role = _SHAREGPT_ROLES.get(str(m.get("from", "")).lower()) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("value"), str):
                raise LmstackError(f"{where}: conversations[{i}] needs 'from' (human/gpt/system) and string 'value'")
            out.append({"role": role, "content": m["value"]})
    elif "instruction" in rec or "output" in rec:
        for k in ("instruction", "output"):
            if not isinstance(rec.get(k), str):
                raise LmstackError(f"{where}: missing or non-string field {k!r} (Alpaca format)")
        prompt = rec["instruction"] + (("\n\n" + rec["input"]) if rec.get("input") else "")
        out = [{"role": "user", "content": prompt}, {"role": "assistant", "content": rec["output"]}]
    else:
        raise LmstackError(f"{where}: unknown format (expected 'messages', Alpaca 'instruction'/'output', "
                           f"or ShareGPT 'conversations')")
    assistants = [m for m in out if m["role"] == "assistant"]
    if not assistants:
        raise LmstackError(f"{where}: no assistant turn to learn from")
    if any(not m["content"].strip() and not m.get("tool_calls") for m in assistants):
        raise LmstackError(f"{where}: empty assistant response")
    return out


_VALID_TOOLS: set[str] = set()  # tool lists already checked: a dataset repeats the same tools on every record


def _check_tools(tools, where: str) -> None:
    key = json.dumps(tools, sort_keys=True, default=str)
    if key in _VALID_TOOLS:
        return
    try:
        check_tools(tools)
    except LmstackError as e:
        raise LmstackError(f"{where}: {e}") from None
    _VALID_TOOLS.add(key)


def _tool_calls(calls, where: str) -> list[dict]:
    """An assistant turn's calls in OpenAI's form, {"type": "function", "function": {"name", "arguments"}}, the
    arguments an object (what chat templates render; OpenAI sends them as a JSON string)."""
    if not isinstance(calls, list) or not calls:
        raise LmstackError(f"{where}: must be a non-empty list of {{type: function, function: {{name, arguments}}}}")
    out = []
    for j, c in enumerate(calls):
        f = c.get("function", c) if isinstance(c, dict) else None
        args = f.get("arguments", {}) if isinstance(f, dict) else None
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise LmstackError(f"{where}[{j}].function.arguments: not JSON ({e.msg})") from None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not isinstance(args, dict):
            raise LmstackError(f"{where}[{j}]: needs function.name (a string) and function.arguments (an object)")
        out.append({"type": "function", "function": {"name": f["name"], "arguments": args}})
    return out


def _hf_rows(spec: str):
    parts = spec[3:].split(":")
    name, config, split = parts[0], (parts[1] or None) if len(parts) > 1 else None, \
        parts[2] if len(parts) > 2 else "train"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise LmstackError(f"{spec}: the Hugging Face hub is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1)")
    try:
        import datasets
    except ImportError:
        raise LmstackError(f"{spec}: needs the `datasets` package (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:
        raise LmstackError(f"{spec}: could not load ({str(e).splitlines()[0]})") from None
    for i, row in enumerate(ds):
        yield f"{spec}[{i}]", dict(row)


def _file_rows(path: Path):
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise LmstackError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        if path.suffix == ".json":
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise LmstackError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(data, list):
                raise LmstackError(f"{path}: a .json file must hold a list of records")
            for i, row in enumerate(data):
                yield f"{path}[{i}]", row
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", LmstackError(f"{path}:{lineno}: invalid JSON: {e.msg}")


def load_conversations(sources: list[str], skip_bad: bool = False, filter_fn=None) -> tuple[list[dict], LoadReport]:
    """Read conversations from files/HF specs. Returns ([{"messages", "source", ...record fields}], report).

    filter_fn(record) -> bool selects records (e.g. by cluster) before conversion.
    """
    report = LoadReport()
    out = []
    for src in sources:
        rows = _hf_rows(src) if src.startswith("hf:") else _file_rows(Path(src))
        for where, rec in rows:
            report.read += 1
            try:
                if isinstance(rec, Exception):
                    raise rec
                if filter_fn is not None and not filter_fn(rec):
                    report.read -= 1
                    continue
                msgs = to_messages(rec, where)
            except LmstackError as e:
                if not skip_bad:
                    raise
                report.add_skip(where, str(e).split(": ", 1)[-1])
                continue
            item = {k: v for k, v in rec.items() if k not in ("messages", "conversations")} if isinstance(rec, dict) \
                else {}
            item.update(messages=msgs, source=where)
            out.append(item)
            report.kept += 1
    return out, report
