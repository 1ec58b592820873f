"""Config dataclasses as options: help text from `#:` comments, argparse flags, and YAML mappings.

A config field documents itself where it is defined:

    steps: int = 1000  #: optimizer steps

(or with `#: ...` lines just above it). `field_help` reads those comments, `add_dataclass_args` turns the
fields into `--field-name` flags whose help is that text plus the default, `dataclass_from_args` builds
the config back from parsed flags, and `from_dict` builds one from a YAML mapping with a one-line error
naming where the mapping came from and the field at fault.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing

from lmstack.errors import LmstackError

# ---------------------------------------------------------------------------------------- help from `#:`


@functools.cache
def _own_help(cls: type) -> dict[str, str]:
    """{field: help} for the fields `cls` itself defines (not its bases)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined in a REPL or built dynamically: no source to read
        return {}
    comments: dict[int, str] = {}  # line -> text of a `#:` comment
    code_lines: set[int] = set()  # lines holding code tokens
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT and tok.string.startswith("#:"):
            comments[tok.start[0]] = tok.string[2:].strip()
        elif tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    node = ast.parse(src).body[0]
    out: dict[str, str] = {}
    for stmt in getattr(node, "body", []):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        parts = []
        line = stmt.lineno - 1  # `#:` lines just above the field (Sphinx style)
        above = []
        while line in comments and line not in code_lines:
            above.insert(0, comments[line])
            line -= 1
        parts += above
        parts += [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments and n in code_lines]
        if parts:
            out[stmt.target.id] = " ".join(p for p in parts if p)
    return out


def field_help(cls: type) -> dict[str, str]:
    """{field: help text} of a dataclass, from the `#:` comments of the class and of its bases (a field
    redefined without a comment keeps its base's text)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_help(klass))
    return out


# ---------------------------------------------------------------------------------------- types


def _base_type(t):
    """int | None -> int; other annotations unchanged."""
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else t
    return t


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _list_member(t):
    """list[str] of a `str | list[str]` field (one value or several), else None."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(t) if typing.get_origin(a) is list), None)
    return None


def _item_type(t, default):
    """Element type of a list/tuple field: from the annotation, else from the default's elements."""
    args = [a for a in typing.get_args(t) if a is not Ellipsis]
    if args and args[0] in (int, float, str):
        return args[0]
    if default and isinstance(default, (list, tuple)) and type(default[0]) in (int, float, str):
        return type(default[0])
    return str


def parse_value(text: str):
    """A command-line or `--set` value: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# ---------------------------------------------------------------------------------------- argparse


def _fmt_default(v) -> str:
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v)) if v else "none"
    if isinstance(v, dict):
        return json.dumps(v) if v else "none"
    return str(v)


def add_dataclass_args(p, cls) -> None:
    """One flag per field of `cls`: `--field-name`; bools as --x/--no-x; lists and tuples take several values,
    a `str | list[str]` field one or more (always a list here; a YAML mapping may give either); a dict field
    named `overrides` becomes the repeatable `--set KEY=VALUE`. Help: the field's `#:` text."""
    hints = typing.get_type_hints(cls)
    docs = field_help(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        t = _base_type(hints[f.name])
        h = docs.get(f.name, "")
        if f.name == "overrides":
            p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help=f"{h or 'model config override'}, e.g. --set n_layer=4 (repeatable)")
            continue
        required = default is dataclasses.MISSING
        shown = "" if required else f" (default: {_fmt_default(default)})"
        kw = {"help": (h + shown).strip(), "dest": f.name}
        if required:
            kw["required"] = True
        else:
            kw["default"] = list(default) if isinstance(default, tuple) else default
        if t is bool:
            p.add_argument(flag, action=_BoolFlag, **kw)
        elif typing.get_origin(t) in (list, tuple) or t in (list, tuple) or isinstance(default, (list, tuple)):
            p.add_argument(flag, nargs="*", type=_item_type(t, default), **kw)
        elif _list_member(t) is not None:
            p.add_argument(flag, nargs="+", type=_item_type(_list_member(t), default), **kw)
        else:
            p.add_argument(flag, type=t if t in (int, float, str) else str, **kw)


class _BoolFlag(argparse.BooleanOptionalAction):
    """--x / --no-x, with the help text as given (the stdlib action would append its own default)."""

    def __init__(self, option_strings, dest, default=None, required=False, help=None, **kw):
        super().__init__(option_strings, dest, default=default, required=required, help=None, **kw)
        self.help = help


def dataclass_from_args(cls, args):
    """The config back from parsed flags (`--set` pairs into the overrides dict, lists into tuples where
    the field is a tuple)."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if f.name == "overrides":
            d = {}
            for item in v:
                if "=" not in item:
                    raise LmstackError(f"--set {item!r}: expected KEY=VALUE")
                k, val = item.split("=", 1)
                d[k] = parse_value(val)
            v = d
        elif _is_tuple(_base_type(hints[f.name]), _default(f)) and v is not None:
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


def _is_tuple(t, default) -> bool:
    return t is tuple or typing.get_origin(t) is tuple or isinstance(default, tuple)


# ---------------------------------------------------------------------------------------- YAML mappings


def _check(value, t, default):
    """(whether `value` fits the field's type, the value to use: a list made a tuple for a tuple field)."""
    t = _base_type(t)
    if value is None:
        ok = t is type(None) or type(None) in typing.get_args(t) or default is None
        return (True, None) if ok else (False, None)
    if t is bool:
        return isinstance(value, bool), value
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:  # an int is a fine float, and is passed on as written (as YAML read it)
        return isinstance(value, (int, float)) and not isinstance(value, bool), value
    if t is str:
        return isinstance(value, str), value
    origin = typing.get_origin(t) or t
    if origin in (list, tuple) or isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False, value
        item = _item_type(t, default)
        items = []
        for x in value:
            if item is not str:  # str lists take numbers as written (e.g. widths: [32, 64])
                ok, x = _check(x, item, None)
                if not ok:
                    return False, value
            items.append(x)
        return True, tuple(items) if _is_tuple(t, default) else items
    if origin is dict:
        return isinstance(value, dict), value
    return True, value  # an annotation this check does not know: the dataclass decides


def _type_name(t) -> str:
    t = _base_type(t)
    return getattr(t, "__name__", None) if typing.get_origin(t) is None else str(t).replace("typing.", "")


def from_dict(cls, mapping: dict, where: str):
    """`cls(**mapping)` with each key checked: an unknown or mistyped field is a one-line LmstackError that
    starts with `where` (e.g. "configs/tiny-cpu.yaml: stage pretrain")."""
    if not isinstance(mapping, dict):
        raise LmstackError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(mapping).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kw = {}
    for key, value in mapping.items():
        if key not in fields:
            raise LmstackError(f"{where}: unknown field {key!r} for {cls.__name__} "
                               f"(known: {', '.join(fields)})")
        ok, value = _check(value, hints[key], _default(fields[key]))
        if not ok:
            raise LmstackError(f"{where}: field {key!r} expects {_type_name(hints[key])}, got {mapping[key]!r}")
        kw[key] = value
    missing = [n for n, f in fields.items() if n not in kw and _default(f) is dataclasses.MISSING]
    if missing:
        raise LmstackError(f"{where}: {cls.__name__} needs {', '.join(missing)}")
    return cls(**kw)


QUANTIZE_HELP = ("weight-only quantisation (CPU): auto keeps a GGUF file's int4/int8 weights quantised, none "
                 "dequantises them, int8/int4 quantise any checkpoint at load; quantised models compute in bf16 "
                 "(default: auto)")


def add_weights_args(p, dtypes=("fp32", "bf16")) -> None:
    """--dtype and --quantize: how a local model's weights are held."""
    p.add_argument("--dtype", default="fp32", choices=list(dtypes), help="weights dtype (default: fp32)")
    p.add_argument("--quantize", default="auto", choices=["auto", "none", "int8", "int4"], help=QUANTIZE_HELP)
