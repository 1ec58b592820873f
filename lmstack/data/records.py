"""JSONL records: instruction records and preference records, read and written one object a line.

Instruction record schema (the format every lmstack stage reads):
    {"id": str, "cluster": str, "task": str, "template": str, "style": "instruction" | "no_instruction" |
     "dataset_name", "lang": "en" | "ko", "messages": [{"role": "user", "content": str},
     {"role": "assistant", "content": str}], "choices": [str, ...] | null, "target": str,
     "split": "train" | "validation" | "test"}
Extra fields ("meta", "unsafe") are allowed. Errors name the file and line, so a bad record in a
big file can be found at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmstack.errors import LmstackError

STYLES = ("instruction", "no_instruction", "dataset_name")
LANGS = ("en", "ko")
SPLITS = ("train", "validation", "test")
ROLES = ("system", "user", "assistant")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, Korean kept readable); returns the count. Atomic: the file appears
    whole or not at all (written beside, then renamed), so a killed run never leaves half a file to resume from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the objects of a JSONL file; blank lines are skipped."""
    for _, obj in iter_jsonl_numbered(path):
        yield obj


def iter_jsonl_numbered(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) pairs of a JSONL file."""
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise LmstackError(f"{path}: cannot open ({e.strerror})") from e
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmstackError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
            if not isinstance(obj, dict):
                raise LmstackError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_jsonl(path: str | Path) -> list[dict]:
    return list(iter_jsonl(path))


def _need(rec: dict, key: str, typ, where: str):
    if key not in rec:
        raise LmstackError(f"{where}: missing field {key!r}")
    v = rec[key]
    if not isinstance(v, typ):
        raise LmstackError(f"{where}: field {key!r} must be {getattr(typ, '__name__', typ)}, got {type(v).__name__}")
    return v


def validate_messages(msgs, where: str) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise LmstackError(f"{where}: field 'messages' must be a non-empty list")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise LmstackError(f"{where}: messages[{i}] needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise LmstackError(f"{where}: messages[{i}] has unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise LmstackError(f"{where}: messages[{i}].content must be a string")


def validate_instruction_record(rec: dict, where: str = "record") -> dict:
    """Check `rec` against the instruction schema; raises LmstackError naming the bad field."""
    if not isinstance(rec, dict):
        raise LmstackError(f"{where}: expected a JSON object")
    for key in ("id", "cluster", "task", "template", "target"):
        _need(rec, key, str, where)
    if _need(rec, "style", str, where) not in STYLES:
        raise LmstackError(f"{where}: field 'style' must be one of {', '.join(STYLES)}, got {rec['style']!r}")
    if _need(rec, "lang", str, where) not in LANGS:
        raise LmstackError(f"{where}: field 'lang' must be one of {', '.join(LANGS)}, got {rec['lang']!r}")
    if _need(rec, "split", str, where) not in SPLITS:
        raise LmstackError(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {rec['split']!r}")
    validate_messages(_need(rec, "messages", list, where), where)
    if rec["messages"][-1]["role"] != "assistant":
        raise LmstackError(f"{where}: the last message must be the assistant's answer")
    if "choices" not in rec:
        raise LmstackError(f"{where}: missing field 'choices' (use null when there are none)")
    ch = rec["choices"]
    if ch is not None:
        if not isinstance(ch, list) or not all(isinstance(c, str) for c in ch) or not ch:
            raise LmstackError(f"{where}: field 'choices' must be a non-empty list of strings or null")
        if rec["target"] not in ch:
            raise LmstackError(f"{where}: target {rec['target']!r} is not one of the choices")
    return rec


def validate_preference_record(rec: dict, where: str = "record") -> dict:
    """A ranking ({prompt, answers, ranking}) or a pair ({prompt, chosen, rejected})."""
    _need(rec, "id", str, where)
    validate_messages(_need(rec, "prompt", list, where), where)
    if "answers" in rec:
        answers = _need(rec, "answers", list, where)
        ranking = _need(rec, "ranking", list, where)
        if sorted(ranking) != list(range(len(answers))):
            raise LmstackError(f"{where}: field 'ranking' must be a permutation of 0..{len(answers) - 1}")
    else:
        _need(rec, "chosen", str, where)
        _need(rec, "rejected", str, where)
    return rec


def read_instruction_records(path: str | Path) -> list[dict]:
    """Read and validate instruction records; errors carry file and line number."""
    out = []
    for lineno, rec in iter_jsonl_numbered(path):
        out.append(validate_instruction_record(rec, f"{path}:{lineno}"))
    return out


def unsafe_tag(rec: dict, where: str) -> bool:
    """A record's `unsafe` tag (IS_SAFETY(p) of Llama 2's reward): JSON true or false; absent or null is false.
    Anything else is a one-line error naming the record, since bool("false") would read as unsafe."""
    v = rec.get("unsafe")
    if v is None:
        return False
    if not isinstance(v, bool):
        rid = f" (id {rec['id']})" if isinstance(rec.get("id"), (str, int)) else ""
        got = json.dumps(v, ensure_ascii=False)
        got = got if len(got) <= 40 else got[:37] + "..."
        raise LmstackError(f"{where}{rid}: 'unsafe' must be true or false (a JSON boolean), got {got} "
                           f"({type(v).__name__})")
    return v
