"""Batch templates: Jinja2 in a sandbox, strict about undefined variables, HTML escaped by default.

Pure: no database, no I/O. A template is compiled once (per batch, per process) and rendered per
recipient; every failure is a TemplateError naming the part (subject, text, html) at fault.

The sandbox keeps templates away from the server's internals (no underscore attributes, no
globals, no mutation of lists or dicts). Against templates that try to exhaust memory or CPU,
every render runs under a budget enforced inside the render (template_budget.py): loop steps and
calls, the size of every value built (`~`, `+`, filters, method calls, captured blocks), the
strings built in all, a CPU backstop, and the size of the output. The cheap amplifiers (`*`, `**`,
`replace`) are capped tighter still. Going over the budget raises TemplateBudgetError: intake
answers 400 naming the template part, delivery fails the job as bad data on its first try.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import markupsafe
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from massmailer import template_budget
from massmailer.template_budget import BudgetExceeded, RenderBudget
from massmailer.template_substitution import fill, substitution_pieces

PARTS = ("subject", "text", "html")
MAX_VALUE_CHARS = 100_000  # the largest string or list `*` or `replace` may build
MAX_EXPONENT = 64
MAX_INT_BITS = 4096  # integers grow by repeated `*` and `**`: 10**64 ** 64 ** 64 …
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


# Filters that never turn their input into a string, so need no estimate of its printed size.
_NON_STRINGIFYING_FILTERS = frozenset(
    {
        "abs", "count", "d", "default", "dictsort", "first", "float", "int", "items", "last",
        "length", "list", "map", "max", "min", "reject", "rejectattr", "reverse", "round",
        "select", "selectattr", "sort", "sum", "unique",
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


class TemplateBudgetError(ValueError):
    """A render that went over its budget (steps, sizes or CPU); `part` names the part.

    Not a TemplateError: intake refuses the whole request for it (400 naming the template
    part) instead of rejecting one recipient after another at a second of CPU each. A
    ValueError, so delivery fails such a job as bad data on its first try.
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
    """The immutable sandbox, with every way of building values charged to the render budget."""

    code_generator_class = template_budget.BudgetCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    # Hooks the instrumented templates call as environment.<name> (template_budget.instrument).
    budget_loop = staticmethod(template_budget.budget_loop)
    budget_step = staticmethod(template_budget.charge_step)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return template_budget.instrument(super()._parse(source, name, filename))

    def budget_join(self, eval_ctx: Any, values: tuple) -> str:
        """`~`: estimate the joined size before building it."""
        _estimate(values)
        joined = markup_join(values) if eval_ctx.autoescape else str_join(values)
        template_budget.charge_size(joined)
        return joined

    def concat(self, pieces: Any) -> str:  # type: ignore[override]
        # Captured output ({% set %} blocks, macros, {% filter %} blocks); its pieces were
        # charged as they were built, the join is charged here.
        joined = "".join(pieces)
        template_budget.charge_size(joined)
        return joined

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        template_budget.charge_step()
        result = super().call(__context, __obj, *args, **kwargs)
        template_budget.charge_size(result)
        return result

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        template_budget.charge_step()
        if operator_name == "%":
            if isinstance(left, str):
                # "%999999999s" % x pads without limit before anything could measure it.
                raise SecurityError("string formatting with % is not allowed; use ~")
            return operator.mod(left, right)
        if operator_name == "**":
            return _power(left, right)
        if operator_name == "+":
            return _add(left, right)
        return _multiply(left, right)

    def wrap_str_format(self, value: Any) -> None:
        # Jinja hands out a sandboxed str.format, but "{:>999999999}" still pads without limit.
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str):
            return attr in SAFE_STR_METHODS
        if isinstance(obj, int | float):
            return False  # int.to_bytes(10**9) and friends
        return super().is_safe_attribute(obj, attr, value)


def _power(left: Any, right: Any) -> Any:
    if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
        raise SecurityError(f"exponents above {MAX_EXPONENT} are not allowed")
    if isinstance(left, int) and isinstance(right, int) and right > 0:
        _check_bits(max(1, abs(left).bit_length()) * right)
    return operator.pow(left, right)


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
        template_budget.charge_chars(len(left) + len(right))
    result = operator.add(left, right)
    template_budget.charge_size(result)
    return result


def _multiply(left: Any, right: Any) -> Any:
    for value, times in ((left, right), (right, left)):
        if isinstance(value, str | list | tuple) and isinstance(times, int):
            _check_size(len(value) * times)
    if isinstance(left, int) and isinstance(right, int):
        _check_bits(abs(left).bit_length() + abs(right).bit_length())
    result = operator.mul(left, right)
    template_budget.charge_size(result)
    return result


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise SecurityError(f"integers above {MAX_INT_BITS} bits are not allowed")


def _estimate(value: Any) -> int:
    """Printed size of a value, walking containers; stop (raise) as soon as it is too large."""
    budget = template_budget.current()
    if budget is None:
        return 0
    limit = budget.max_value_chars
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        budget.step()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
            total += 4 * len(item)
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
            total += 2 * len(item) + 2
        else:
            total += 24  # numbers (bounded by MAX_INT_BITS), None, booleans, undefined
        if total > limit:
            raise BudgetExceeded(f"a value of more than {limit} characters")
    return total


def _estimate_join(values: Any, separator: Any) -> None:
    """join builds the items plus a separator between each two: estimate both."""
    if isinstance(values, list | tuple) and isinstance(separator, str):
        template_budget.charge_chars(len(separator) * max(0, len(values) - 1))
    _estimate(values)


def _budgeted_filter(name: str, func: Callable) -> Callable:
    """Wrap a filter: estimate what it prints before, charge what it built after."""
    passes = getattr(func, "jinja_pass_arg", None)
    stringifies = name not in _NON_STRINGIFYING_FILTERS

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        value, *rest = args[1:] if passes is not None else args
        if name == "join":
            _estimate_join(value, rest[0] if rest else kwargs.get("d", ""))
        elif stringifies and not isinstance(value, str):
            _estimate(value)
        template_budget.charge_step()
        result = func(*args, **kwargs)
        if isinstance(result, Namespace):
            return result
        template_budget.charge_size(result)
        return result

    return wrapper


def _finalize(value: Any) -> Any:
    """Every {{ … }}: a container is printed with str(), so estimate its size first."""
    if type(value) in _CONTAINERS:  # the common case, a str or Markup, costs one lookup
        _estimate(value)
    return value


_CONTAINERS = frozenset({list, tuple, dict, set, frozenset})


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
    env = _Sandbox(
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    # range, lipsum, cycler, joiner, namespace, dict: not needed to fill in a message.
    env.globals.clear()
    filters = {name: f for name, f in env.filters.items() if name in SAFE_FILTERS}
    filters["replace"] = _html_replace_checked(filters["replace"]) if autoescape else _replace
    filters["sum"] = _numeric_sum
    env.filters = {name: _budgeted_filter(name, f) for name, f in filters.items()}
    return env


def _html_replace_checked(html_replace: Callable) -> Callable:
    """Jinja's replace (it keeps Markup escaping), refusing a result above MAX_VALUE_CHARS."""

    def checked(eval_ctx, value, old, new, count=None):
        text = str(value)
        hits = text.count(old) if count is None else min(count, text.count(old))
        _check_size(len(text) + hits * max(0, len(str(new)) - len(old)))
        return html_replace(eval_ctx, value, old, new, count)

    checked.jinja_pass_arg = html_replace.jinja_pass_arg  # type: ignore[attr-defined]
    return checked


def _numeric_sum(values: Any, attribute: Any = None, start: int | float = 0) -> int | float:
    """sum over numbers only: summing lists (start=[]) is quadratic in time and memory."""
    if attribute is not None:
        raise SecurityError("sum(attribute=…) is not allowed; map the attribute first")
    total = start
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SecurityError("sum adds numbers only")
        total = _add(total, value)
    if not isinstance(total, int | float):
        raise SecurityError("sum adds numbers only")
    return total


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


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
        self._substitutions = {
            part: substitution_pieces(_environment_of(part), getattr(source, part))
            for part in self._parts
        }

    def has(self, part: str) -> bool:
        """Tell whether the template has this part."""
        return part in self._parts

    def variables(self, part: str) -> set[str]:
        """Return the top-level variable names a part uses (empty if there is no such part)."""
        text = getattr(self.source, part)
        if text is None:
            return set()
        env = _environment_of(part)
        return meta.find_undeclared_variables(env.parse(text))

    def render(self, variables: Mapping[str, object], parts: tuple[str, ...] = PARTS) -> Rendered:
        """Fill in the given parts (the others come back None); raise TemplateError."""
        values = {p: self.render_part(p, variables) for p in parts if p in self._parts}
        return Rendered(values.get("subject"), values.get("text"), values.get("html"))

    def render_part(self, part: str, variables: Mapping[str, object]) -> str:
        """Fill in one part; raise TemplateError for an undefined variable or a forbidden access,
        TemplateBudgetError for a render over its budget."""
        pieces = self._substitutions[part]
        if pieces is not None:
            filled = fill(pieces, variables, markupsafe.escape if part == "html" else None)
            if filled is not None:
                self._check_output(part, len(filled))
                return filled
        budget = RenderBudget(max_value_chars=self.max_output_chars)
        try:
            with template_budget.active(budget):
                return self._stream(part, variables)
        except BudgetExceeded as exc:
            raise TemplateBudgetError(part, f"too costly to render: {exc}") from None
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
            self._check_output(part, size)
            pieces.append(piece)
        return "".join(pieces)

    def _check_output(self, part: str, size: int) -> None:
        if size > self.max_output_chars:
            raise TemplateError(part, f"renders to more than {self.max_output_chars} characters")


def compile_template(
    source: TemplateSource, max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS
) -> CompiledTemplate:
    """Compile every part; raise TemplateError naming the part with a syntax error."""
    return CompiledTemplate(source, max_output_chars)


def _environment_of(part: str) -> _Sandbox:
    return _HTML if part == "html" else _PLAIN


def _compile(part: str, text: str) -> Template:
    env = _environment_of(part)
    try:
        return env.from_string(text)
    except TemplateSyntaxError as exc:
        raise TemplateError(part, f"syntax error on line {exc.lineno}: {exc.message}") from None
    except (SecurityError, BudgetExceeded) as exc:
        raise TemplateError(part, f"not allowed: {exc}") from None
