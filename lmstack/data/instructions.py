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
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise LmstackError(f"{where}: messages[{i}] needs string fields 'role' and 'content'")
            out.append({"role": m["role"], "content": m["content"]})
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
    if any(not m["content"].strip() for m in assistants):
        raise LmstackError(f"{where}: empty assistant response")
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
