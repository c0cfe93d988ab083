"""Check a recipient's variables against a batch template without rendering it.

Intake reads the template once (`jinja2` AST) to learn which top-level variables a render would
certainly need: a name printed, iterated, tested for truth, compared or passed to a filter that
reads it, outside any branch. Such a name is *required*; every other name the template uses
(under `default`, inside an `if`/`for` body, the right of `and`/`or`, a test like `is defined`)
is *optional*. A recipient missing a required name is refused at intake; a recipient whose
optional names are missing when a branch needs them fails at send time, where the render (with
its budget, `templates.py`) stays authoritative.

Each recipient's variables are also bounded in bytes, length and depth, which bounds what a
send-time render can be fed. The JSON text checked here is the one stored with the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring

from jinja2 import Environment, meta, nodes

from massmailer.templates import PARTS, TemplateSource

MAX_VARS_BYTES = 10_000  # one recipient's variables, as UTF-8 JSON
MAX_VARS_ITEMS = 4_000  # entries in any one object or list
MAX_VARS_DEPTH = 4  # {"a": {"b": [ {"c": 1} ]}} is depth 4

# Filters whose first argument is read at once, so an undefined one raises UndefinedError
# (checked against Jinja by tests/test_batch_variables.py). Others (default, map, select,
# tojson ...) either accept an undefined value or fail differently: treated as optional.
STRICT_FILTERS = frozenset(
    {
        "capitalize", "count", "dictsort", "e", "escape", "first", "float", "forceescape",
        "int", "join", "last", "length", "list", "lower", "max", "min", "reverse", "safe",
        "sort", "string", "striptags", "sum", "title", "trim", "truncate", "upper",
        "urlencode", "urlize", "wordcount",
    }
)  # fmt: skip
# Comparisons that call the undefined value's __eq__/__lt__...; `in` reads only its right side.
_ORDERING_OPS = frozenset({"eq", "ne", "lt", "lteq", "gt", "gteq"})
# Parsing only: the syntax is Jinja's default in every environment of templates.py, and the tree
# does not depend on sandboxing or escaping.
_PARSER = Environment(keep_trailing_newline=True)


def _unencodable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON")


# One encoder, built once: json.dumps builds a new one per call, half the cost of a small dict.
# NaN and Infinity (which Python's parser accepts) are refused: PostgreSQL's json type is strict.
if c_make_encoder is not None:
    _encode = c_make_encoder(
        None, _unencodable, encode_basestring, None, ":", ",", False, False, False
    )
else:  # pragma: no cover - CPython always has the C encoder
    _encode = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).iterencode
_ARITHMETIC = (nodes.Add, nodes.Sub, nodes.Mul, nodes.Div, nodes.FloorDiv, nodes.Mod, nodes.Pow)


class VariablesError(ValueError):
    """A recipient's variables are refused; str() is the reason given back to the client."""


@dataclass(frozen=True)
class PartVariables:
    part: str
    required: tuple[str, ...]  # in order of first use
    optional: frozenset[str]


def part_variables(part: str, source: str, extra: frozenset[str] = frozenset()) -> PartVariables:
    """Return the required and optional top-level names of one template part."""
    tree = _PARSER.parse(source)
    undeclared = meta.find_undeclared_variables(tree) - extra
    required = tuple(dict.fromkeys(n for n in _strict_names(tree.body) if n in undeclared))
    return PartVariables(part, required, frozenset(undeclared - set(required)))


class TemplateVariables:
    """What a batch template needs from each recipient: required names per part."""

    def __init__(self, source: TemplateSource, given: frozenset[str] = frozenset()) -> None:
        # `given` names are supplied by MassMailer at send time (the unsubscribe link).
        self.parts = [
            part_variables(part, text, given if part != "subject" else frozenset())
            for part in PARTS
            if (text := getattr(source, part)) is not None
        ]
        self._all_required = frozenset(n for p in self.parts for n in p.required)

    def check(self, variables: Mapping[str, object]) -> None:
        """Raise VariablesError naming the first required variable that is missing."""
        if self._all_required.issubset(variables.keys()):
            return
        for part in self.parts:
            for name in part.required:
                if name not in variables:
                    raise VariablesError(
                        f"template {part.part}: missing variable: '{name}' is undefined"
                    )


def _strict_names(body: list[nodes.Node]) -> Iterator[str]:
    """Names that raise if undefined in statements run unconditionally."""
    for stmt in body:
        if isinstance(stmt, nodes.Output):
            for node in stmt.nodes:
                yield from _strict_expr(node)
        elif isinstance(stmt, nodes.If):
            yield from _strict_expr(stmt.test)  # bool() of an undefined value raises
        elif isinstance(stmt, nodes.For):
            yield from _strict_expr(stmt.iter)  # so does iterating it
        # set, with, macro, call and filter blocks: treated as optional (never required).


def _strict_expr(node: nodes.Node) -> Iterator[str]:
    """Names in an expression whose undefined value would raise while it is evaluated."""
    if isinstance(node, nodes.Name):
        if node.ctx == "load":
            yield node.name
    elif isinstance(node, nodes.Getattr | nodes.Getitem):
        yield from _strict_expr(node.node)
    elif isinstance(node, nodes.Filter):
        if node.name in STRICT_FILTERS and node.node is not None:
            yield from _strict_expr(node.node)
    elif isinstance(node, nodes.CondExpr):
        yield from _strict_expr(node.test)
    elif isinstance(node, nodes.And | nodes.Or):
        yield from _strict_expr(node.left)
    elif isinstance(node, nodes.Not | nodes.Neg | nodes.Pos):
        yield from _strict_expr(node.node)
    elif isinstance(node, nodes.Concat):
        for item in node.nodes:
            yield from _strict_expr(item)
    elif isinstance(node, _ARITHMETIC):
        yield from _strict_expr(node.left)
        yield from _strict_expr(node.right)
    elif isinstance(node, nodes.Compare):
        yield from _strict_compare(node)
    elif isinstance(node, nodes.Call):
        yield from _strict_expr(node.node)  # x.upper(): the attribute lookup raises


def _strict_compare(node: nodes.Compare) -> Iterator[str]:
    left = node.expr
    for op in node.ops:
        if op.op in _ORDERING_OPS:
            yield from _strict_expr(left)
            yield from _strict_expr(op.expr)
        elif op.op in ("in", "notin"):
            yield from _strict_expr(op.expr)
        break  # a chain (a < b < c) stops at the first false: only its first pair is certain


# --- bounds on one recipient's variables ---------------------------------------------------


def encode_variables(variables: Mapping[str, object]) -> str:
    """Return the variables as JSON after checking their size, length and depth."""
    try:
        text = "".join(_encode(variables, 0))
    except ValueError:
        raise VariablesError("vars must not hold NaN or Infinity") from None
    except RecursionError:
        raise VariablesError(f"vars nested deeper than {MAX_VARS_DEPTH} levels") from None
    # A character is at least one byte: encode only what could be within the bound.
    if len(text) > MAX_VARS_BYTES:
        raise VariablesError(f"vars larger than {MAX_VARS_BYTES} bytes as JSON")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise VariablesError("vars must be valid Unicode text") from None
    if size > MAX_VARS_BYTES:
        raise VariablesError(f"vars larger than {MAX_VARS_BYTES} bytes as JSON")
    # Most recipients' variables cannot break the other bounds, and the text shows it: each
    # level of nesting opens a bracket, and a container of n items takes 2n+1 characters.
    if text.count("{") + text.count("[") > MAX_VARS_DEPTH or len(text) > 2 * MAX_VARS_ITEMS:
        _check_shape(variables, 1)
    return text


def _check_shape(value: object, depth: int) -> None:
    """Refuse containers nested deeper than MAX_VARS_DEPTH or holding over MAX_VARS_ITEMS."""
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return
    if depth > MAX_VARS_DEPTH:
        raise VariablesError(f"vars nested deeper than {MAX_VARS_DEPTH} levels")
    if len(value) > MAX_VARS_ITEMS:
        raise VariablesError(f"vars hold a list or object of more than {MAX_VARS_ITEMS} items")
    for item in items:
        if isinstance(item, dict | list):
            _check_shape(item, depth + 1)
