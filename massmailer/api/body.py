"""Read a request's JSON body and URL safely: text PostgreSQL can store, bounded nesting.

PostgreSQL text and JSON cannot hold NUL (psycopg2 raises before the query is sent) and UTF-8
cannot encode a lone surrogate, which JSON's \\ud800 escapes can produce; both would surface as
a 500 far from the request. Deep nesting would exhaust the parser's recursion. All three are
refused here with a 400 naming where they were found.
"""

from __future__ import annotations

import re

from flask import request

from massmailer.validation import ValidationError

MAX_DEPTH = 32  # objects and arrays inside each other; a request needs fewer than five
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# What a raw body needs before its parsed strings can hold NUL or a lone surrogate: a \u0000 or
# \ud800-\udfff escape, a UTF-8-encoded surrogate (json decodes with surrogatepass), or a NUL
# byte (any UTF-16 or UTF-32 body has them). A body without any is checked for depth alone.
_SUSPECT_BYTES = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|\xed[\xa0-\xbf]|\x00")


def json_body() -> object:
    """The request's JSON document, or a 400 naming the body (or the bad field)."""
    try:
        payload = request.get_json(silent=True)
    except RecursionError:
        raise ValidationError("body", f"must not nest deeper than {MAX_DEPTH} levels") from None
    if payload is None:
        raise ValidationError(
            "body", "the request body must be JSON (Content-Type: application/json)"
        )
    if _SUSPECT_BYTES.search(request.get_data(cache=True)) or not _nesting_within(payload):
        check_text(payload)  # walks every string too, and names where it fails
    return payload


def check_text(payload: object) -> None:
    """Refuse NUL, lone surrogates (in keys and values) and nesting deeper than MAX_DEPTH."""
    stack: list[tuple[object, str, int]] = [(payload, "body", 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _check_string(value, where)
        elif isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise ValidationError(where, f"must not nest deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                inner = f"{where}[{key}]" if isinstance(key, int) else _field(where, key)
                stack.append((item, inner, depth + 1))


def _nesting_within(payload: object) -> bool:
    """Whether no container lies deeper than MAX_DEPTH (a walk of containers only)."""
    stack: list[tuple[object, int]] = [(payload, 0)] if isinstance(payload, dict | list) else []
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            return False
        for item in value.values() if isinstance(value, dict) else value:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
    return True


def integral_numbers(payload: object, *names: str) -> None:
    """Turn 3.0 into 3 in these top-level fields: JSON (and JSON Schema) make no difference."""
    if isinstance(payload, dict):
        for name in names:
            value = payload.get(name)
            if isinstance(value, float) and value.is_integer():
                payload[name] = int(value)


def check_query(allowed: tuple[str, ...]) -> None:
    """Refuse query parameters the endpoint does not read: a typo must not pass silently."""
    for name in request.args:
        if name not in allowed:
            raise ValidationError(f"query.{name[:40]}", "is not a known query parameter")


def check_url() -> None:
    """before_request: the same rule for the path and the query string."""
    _check_string(request.path, "path")
    for name, value in request.args.items(multi=True):
        _check_string(name, "query")
        _check_string(value, f"query.{name[:40]}")


def _field(where: str, key: str) -> str:
    _check_string(key, where)
    name = key[:40]
    return name if where == "body" else f"{where}.{name}"


def _check_string(value: str, where: str) -> None:
    if _BAD_TEXT.search(value):
        raise ValidationError(where, "must not contain NUL characters or unpaired surrogates")
