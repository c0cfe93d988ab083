"""Pure: tell a "slow down" reply (421/450/451/454 with a known text or code) from other 4xx.

The patterns are data: `throttle_patterns.json` ships with the package, and an operator adds
their own with MASSMAILER_THROTTLE_PATTERNS_FILE (read in config.py). A pattern matches a reply
when every field it gives matches: the basic code among `codes`, the enhanced code exactly,
the `text` regex anywhere in the reply (case-insensitive). Only 4xx replies are ever a throttle:
a 5xx is a refusal, not a request to slow down.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

_BUILTIN = "throttle_patterns.json"


@dataclass(frozen=True)
class ThrottlePattern:
    """One known throttle reply: a basic code set, an enhanced code and/or a text regex."""

    name: str
    codes: frozenset[int]
    enhanced: str | None = None
    text: re.Pattern[str] | None = None
    source: str = field(default="", compare=False)

    def matches(self, code: int, enhanced: str | None, reply: str) -> bool:
        """Tell whether a reply (basic code, enhanced code, text) is this throttle."""
        if self.codes and code not in self.codes:
            return False
        if self.enhanced is not None and enhanced != self.enhanced:
            return False
        return self.text is None or self.text.search(reply) is not None


class ThrottleRules:
    """The patterns in force; `match` names the first one a reply fits, or None."""

    def __init__(self, patterns: Iterable[ThrottlePattern]) -> None:
        self.patterns = tuple(patterns)

    def __repr__(self) -> str:
        return f"ThrottleRules({len(self.patterns)} patterns)"

    def match(self, code: int | None, enhanced: str | None, reply: str) -> str | None:
        """Return the name of the pattern this reply fits, or None (only 4xx can fit)."""
        if code is None or not 400 <= code < 500:
            return None
        for pattern in self.patterns:
            if pattern.matches(code, enhanced, reply):
                return pattern.name
        return None


def parse_patterns(document: Any, where: str) -> tuple[ThrottlePattern, ...]:
    """Validate a patterns document ({"patterns": [...]} or a bare list); ValueError names where."""
    entries = document.get("patterns") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ValueError(f"{where} must be a list of patterns or {{'patterns': [...]}}")
    return tuple(_parse_one(entry, f"{where}[{i}]") for i, entry in enumerate(entries))


def _parse_one(entry: Any, where: str) -> ThrottlePattern:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    unknown = set(entry) - {"name", "codes", "enhanced", "text", "source"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    codes = entry.get("codes", [])
    if not isinstance(codes, list) or not all(isinstance(c, int) and 400 <= c < 500 for c in codes):
        raise ValueError(f"{where}: 'codes' must be a list of 4xx reply codes")
    enhanced, text = entry.get("enhanced"), entry.get("text")
    if enhanced is None and text is None:
        raise ValueError(f"{where}: give 'enhanced' or 'text' (a code alone is any 4xx)")
    if enhanced is not None and not re.fullmatch(r"4\.\d{1,3}\.\d{1,3}", str(enhanced)):
        raise ValueError(f"{where}: 'enhanced' must look like 4.7.28")
    try:
        regex = None if text is None else re.compile(str(text), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{where}: 'text' is not a valid regex: {exc}") from None
    name, source = entry.get("name") or where, entry.get("source", "")
    return ThrottlePattern(str(name), frozenset(codes), enhanced, regex, str(source))


@functools.cache
def builtin_patterns() -> tuple[ThrottlePattern, ...]:
    """The well-known throttle replies shipped with MassMailer."""
    text = resources.files(__package__).joinpath(_BUILTIN).read_text(encoding="utf-8")
    return parse_patterns(json.loads(text), _BUILTIN)


def default_rules() -> ThrottleRules:
    """Rules with the built-in patterns only (no operator file)."""
    return ThrottleRules(builtin_patterns())
