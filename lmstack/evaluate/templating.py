"""Jinja2 templates and expressions over task records, with errors that name the task, field and record.

Templates (`prompt`, `description`, few-shot `target`/`rationale`) render text; expressions
(`choices`, `target`) return values: `choices.text`, `[sol1, sol2]`, `choices.label.index(answerKey)`,
`mc2_targets.labels | indices_of(1)`. Undefined variables are errors (StrictUndefined), so a typo in
a config never renders an empty string silently.
"""

from __future__ import annotations

import re

import jinja2
import jinja2.meta

from lmstack.errors import LmstackError


def _regex_replace(value, pattern, repl=""):
    return re.sub(pattern, repl, str(value))


def _indices_of(values, wanted=1):
    return [i for i, v in enumerate(values) if v == wanted]


def _wikihow_clean(text):
    """HellaSwag's preprocessing (lm-evaluation-harness): WikiHow's bracketed artifacts removed."""
    text = str(text).strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _letters(n):
    return [chr(ord("A") + i) for i in range(int(n if isinstance(n, int) else len(n)))]


ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
ENV.filters.update(regex_replace=_regex_replace, indices_of=_indices_of, letters=_letters,
                   wikihow_clean=_wikihow_clean)
ENV.globals.update(letters=_letters, enumerate=enumerate, zip=zip, len=len, range=range)


class Template:
    """A compiled text template or value expression from a task config."""

    def __init__(self, source, where: str, expression: bool = False):
        self.source, self.where, self.expression = source, where, expression
        try:
            if expression:
                self._fn = ENV.compile_expression(str(source), undefined_to_none=False)
                ast = ENV.parse("{{ " + str(source) + " }}")
            else:
                self._t = ENV.from_string(str(source))
                ast = ENV.parse(str(source))
        except jinja2.TemplateSyntaxError as e:
            raise LmstackError(f"{where}: invalid template {str(source)!r}: {e.message}") from None
        self.variables = jinja2.meta.find_undeclared_variables(ast) - set(ENV.globals)

    def check(self, record: dict, what: str = "records") -> None:
        """Every variable the template uses is a field of `record` (fail early, naming the variable)."""
        missing = sorted(v for v in self.variables if v not in record)
        if missing:
            raise LmstackError(f"{self.where}: template variable {', '.join(repr(m) for m in missing)} is not a "
                               f"field of the {what} (fields: {', '.join(sorted(record)) or 'none'})")

    def __call__(self, record: dict, index: int | None = None, **extra):
        ctx = {**record, **extra}
        try:
            if self.expression:
                value = self._fn(**ctx)
                if isinstance(value, jinja2.Undefined):
                    value._fail_with_undefined_error()
                return value
            return self._t.render(**ctx)
        except jinja2.UndefinedError as e:
            at = f" (record {index})" if index is not None else ""
            raise LmstackError(f"{self.where}{at}: missing template variable: {e.message}") from None
        except (TypeError, ValueError, AttributeError, IndexError, KeyError, jinja2.TemplateError) as e:
            at = f" (record {index})" if index is not None else ""
            raise LmstackError(f"{self.where}{at}: {str(self.source)!r} failed: {e.__class__.__name__}: {e}") from None
