"""Batch templates: Jinja2 in a sandbox, strict about undefined variables, HTML escaped by default.

Pure: no database, no I/O. A template is compiled once (per batch, per process) and rendered per
recipient; every failure is a TemplateError naming the part (subject, text, html) at fault.

The sandbox keeps templates away from the server's internals (no underscore attributes, no
globals, no mutation of lists or dicts). Against templates that try to exhaust memory it caps
what the cheap amplifiers produce (`*`, `**`, `replace`, padding methods) and the size of the
rendered output; loops run only over the request's own data, and intake bounds the total time
spent rendering a request.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

PARTS = ("subject", "text", "html")
MAX_VALUE_CHARS = 100_000  # the largest string or list `*` or `replace` may build
MAX_EXPONENT = 64
DEFAULT_MAX_OUTPUT_CHARS = 1_000_000

# Filters a message template needs; the others can build huge values from small arguments
# (center, indent, format, batch and slice with fill) or make renders differ (random).
SAFE_FILTERS = frozenset(
    {
        "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first",
        "float", "forceescape", "int", "items", "join", "last", "length", "list", "lower",
        "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe",
        "select", "selectattr", "sort", "string", "striptags", "sum", "title", "tojson", "trim",
        "truncate", "unique", "upper", "urlencode", "urlize", "wordcount",
    }
)  # fmt: skip
# Methods templates may call on strings; padding (ljust, zfill ...) and replace are left out.
SAFE_STR_METHODS = frozenset(
    {
        "capitalize", "count", "endswith", "find", "isalnum", "isalpha", "isdigit", "isspace",
        "lower", "lstrip", "rsplit", "rstrip", "split", "splitlines", "startswith", "strip",
        "title", "upper",
    }
)  # fmt: skip


class TemplateError(ValueError):
    """A template that does not compile or render; `part` is subject, text or html.

    A ValueError so that delivery fails such a job as bad data rather than retrying it.
    """

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"template {part}: {message}")
        self.part = part
        self.message = message


@dataclass(frozen=True)
class TemplateSource:
    """A batch's template as the client gave it; text and/or html may be None."""

    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True)
class Rendered:
    subject: str | None
    text: str | None
    html: str | None


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with size limits on the operators that multiply sizes."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
            return operator.pow(left, right)
        for value, times in ((left, right), (right, left)):
            if isinstance(value, str | list | tuple) and isinstance(times, int):
                _check_size(len(value) * times)
        return operator.mul(left, right)

    def wrap_str_format(self, value: Any) -> None:
        # Jinja hands out a sandboxed str.format, but "{:>999999999}" still pads without limit.
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str):
            return attr in SAFE_STR_METHODS
        if isinstance(obj, int | float):
            return False  # int.to_bytes(10**9) and friends
        return super().is_safe_attribute(obj, attr, value)


def _check_size(size: int) -> None:
    if size > MAX_VALUE_CHARS:
        raise SecurityError(f"values larger than {MAX_VALUE_CHARS} characters are not allowed")


def _replace(value: object, old: str, new: str, count: int | None = None) -> str:
    """The replace filter, refusing a result above MAX_VALUE_CHARS."""
    text = str(value)
    hits = text.count(old) if count is None else min(count, text.count(old))
    _check_size(len(text) + hits * max(0, len(new) - len(old)))
    return text.replace(old, new, -1 if count is None else count)


def _environment(autoescape: bool) -> _Sandbox:
    env = _Sandbox(autoescape=autoescape, undefined=StrictUndefined, keep_trailing_newline=True)
    # range, lipsum, cycler, joiner, namespace, dict: not needed to fill in a message.
    env.globals.clear()
    env.filters = {name: f for name, f in env.filters.items() if name in SAFE_FILTERS}
    if not autoescape:
        env.filters["replace"] = _replace
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)
# The HTML replace filter must keep Markup escaping: wrap Jinja's own after the size check.
_html_replace = _HTML.filters["replace"]


def _html_replace_checked(eval_ctx, value, old, new, count=None):  # Jinja's replace, checked
    text = str(value)
    hits = text.count(old) if count is None else min(count, text.count(old))
    _check_size(len(text) + hits * max(0, len(str(new)) - len(old)))
    return _html_replace(eval_ctx, value, old, new, count)


_html_replace_checked.jinja_pass_arg = _html_replace.jinja_pass_arg  # type: ignore[attr-defined]
_HTML.filters["replace"] = _html_replace_checked


class CompiledTemplate:
    """A template compiled once; render() fills it in for one recipient."""

    def __init__(
        self, source: TemplateSource, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
    ) -> None:
        self.source = source
        self.max_output_chars = max_output_chars
        self._parts = {
            part: _compile(part, getattr(source, part))
            for part in PARTS
            if getattr(source, part) is not None
        }

    def has(self, part: str) -> bool:
        """Tell whether the template has this part."""
        return part in self._parts

    def variables(self, part: str) -> set[str]:
        """Return the top-level variable names a part uses (empty if there is no such part)."""
        text = getattr(self.source, part)
        if text is None:
            return set()
        env = _HTML if part == "html" else _PLAIN
        return meta.find_undeclared_variables(env.parse(text))

    def render(self, variables: Mapping[str, object], parts: tuple[str, ...] = PARTS) -> Rendered:
        """Fill in the given parts (the others come back None); raise TemplateError."""
        values = {p: self.render_part(p, variables) for p in parts if p in self._parts}
        return Rendered(values.get("subject"), values.get("text"), values.get("html"))

    def render_part(self, part: str, variables: Mapping[str, object]) -> str:
        """Fill in one part; raise TemplateError for an undefined variable or a forbidden access."""
        try:
            return self._stream(part, variables)
        except UndefinedError as exc:
            raise TemplateError(part, f"missing variable: {exc.message}") from None
        except SecurityError as exc:
            raise TemplateError(part, f"not allowed: {exc}") from None
        except RecursionError:
            raise TemplateError(part, "nested too deeply") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(part, f"cannot render: {type(exc).__name__}: {exc}") from None

    def _stream(self, part: str, variables: Mapping[str, object]) -> str:
        # Generate piece by piece so output that grows without bound is stopped early.
        pieces = []
        size = 0
        for piece in self._parts[part].generate(variables):
            size += len(piece)
            if size > self.max_output_chars:
                raise TemplateError(
                    part, f"renders to more than {self.max_output_chars} characters"
                )
            pieces.append(piece)
        return "".join(pieces)


def compile_template(
    source: TemplateSource, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
) -> CompiledTemplate:
    """Compile every part; raise TemplateError naming the part with a syntax error."""
    return CompiledTemplate(source, max_output_chars)


def _compile(part: str, text: str) -> Template:
    env = _HTML if part == "html" else _PLAIN
    try:
        return env.from_string(text)
    except TemplateSyntaxError as exc:
        raise TemplateError(part, f"syntax error on line {exc.lineno}: {exc.message}") from None
    except SecurityError as exc:
        raise TemplateError(part, f"not allowed: {exc}") from None
