"""Pure: group recipient domains (Google, Yahoo, Microsoft...) and the rate limit of each group.

The group table is data: `destination_groups.json` ships with the package and an operator's file
(MASSMAILER_DESTINATION_GROUPS_FILE, read in config.py) adds groups or replaces one's domains.
A domain pattern is a domain (`gmail.com`, matched exactly) or a name and any public suffix
(`yahoo.*`: yahoo.com, yahoo.co.uk, yahoo.com.br, up to three labels after the name).
A group limited by MASSMAILER_DESTINATION_LIMITS gets its own fleet-wide GCRA schedule, keyed
like a provider's (`rate_subject`), so both limit backends enforce it unchanged.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from massmailer.delivery.providers.base import ProviderConfig

_BUILTIN = "destination_groups.json"
# The limits stores key a destination's schedule by this name (a provider may not take it).
SUBJECT_PREFIX = "~dest:"
_GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_ANY_SUFFIX = re.compile(rf"({_LABEL}(?:\.{_LABEL})*)\.\*")
_MAX_SUFFIX_LABELS = 3


@dataclass(frozen=True)
class DestinationGroups:
    """Which group a recipient's domain belongs to: exact domains, then `name.*` patterns."""

    exact: Mapping[str, str]  # domain -> group
    any_suffix: tuple[tuple[str, str], ...] = ()  # (name, group) for `name.*`

    def group_of(self, recipient: str) -> str | None:
        """Return the group of the recipient's domain (case-insensitive), or None."""
        domain = recipient.rpartition("@")[2].strip().rstrip(".").lower()
        group = self.exact.get(domain)
        if group is not None:
            return group
        for name, group in self.any_suffix:
            suffix = domain[len(name) + 1 :]
            if domain.startswith(name + ".") and suffix and suffix.count(".") < _MAX_SUFFIX_LABELS:
                return group
        return None

    @property
    def names(self) -> frozenset[str]:
        """Every group the table knows."""
        return frozenset(self.exact.values()) | {g for _, g in self.any_suffix}


@dataclass(frozen=True)
class DestinationLimit:
    """A rate for one group, applied to its recipients across all providers."""

    group: str
    rate_per_second: float

    @functools.cached_property
    def rate_subject(self) -> ProviderConfig:
        """What the limits stores schedule: a provider-shaped key with only a rate."""
        return ProviderConfig(
            f"{SUBJECT_PREFIX}{self.group}", "", 0, rate_per_second=self.rate_per_second
        )


@dataclass(frozen=True)
class DestinationLimits:
    """The groups and the limited ones: `limit_for(recipient)` is what a sender asks."""

    groups: DestinationGroups
    limits: Mapping[str, DestinationLimit]

    def limit_for(self, recipient: str) -> DestinationLimit | None:
        """The limit of the recipient's group, or None (no group, or the group is unlimited)."""
        if not self.limits:
            return None
        group = self.groups.group_of(recipient)
        return None if group is None else self.limits.get(group)


def parse_groups(document: Any, where: str) -> dict[str, tuple[str, ...]]:
    """Validate a groups document ({"groups": {name: [pattern, ...]}}); ValueError names where."""
    table = document.get("groups") if isinstance(document, dict) else None
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be an object {{'groups': {{name: [domain, ...]}}}}")
    parsed: dict[str, tuple[str, ...]] = {}
    for name, patterns in table.items():
        label = f"{where}.groups.{name}"
        if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
            raise ValueError(f"{label}: a group name is lowercase letters, digits, - and _")
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"{label} must be a list of domains")
        parsed[name] = tuple(_pattern(p, label) for p in patterns)
    return parsed


def _pattern(raw: str, label: str) -> str:
    pattern = raw.strip().lower()
    if not (_DOMAIN.fullmatch(pattern) or _ANY_SUFFIX.fullmatch(pattern)):
        raise ValueError(f"{label}: {raw!r} is neither a domain nor name.* (like yahoo.*)")
    return pattern


def build_groups(*tables: Mapping[str, tuple[str, ...]]) -> DestinationGroups:
    """Merge tables, later ones replacing a group's domains; a domain may be in one group only."""
    merged: dict[str, tuple[str, ...]] = {}
    for table in tables:
        merged.update(table)
    owner: dict[str, str] = {}
    for group, patterns in merged.items():
        for pattern in patterns:
            if owner.setdefault(pattern, group) != group:
                raise ValueError(f"{pattern} is in two groups: {owner[pattern]} and {group}")
    exact = {p: g for p, g in owner.items() if not p.endswith(".*")}
    suffixed = tuple((p[:-2], g) for p, g in owner.items() if p.endswith(".*"))
    return DestinationGroups(exact, suffixed)


def parse_limits(
    document: Any, where: str, groups: DestinationGroups
) -> dict[str, DestinationLimit]:
    """Validate {group: {"rate_per_second": n}}; ValueError names the group and the field."""
    if not isinstance(document, dict):
        raise ValueError(f"{where} must be an object {{group: {{'rate_per_second': n}}}}")
    limits = {}
    for group, entry in document.items():
        label = f"{where}.{group}"
        if group not in groups.names:
            known = ", ".join(sorted(groups.names))
            raise ValueError(f"{label}: unknown group (the groups are {known})")
        if not isinstance(entry, dict):
            raise ValueError(f"{label} must be an object {{'rate_per_second': n}}")
        unknown = set(entry) - {"rate_per_second"}
        if unknown:
            raise ValueError(f"{label}: unknown field(s) {sorted(unknown)}")
        rate = entry.get("rate_per_second")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ValueError(f"{label}: 'rate_per_second' must be a number above 0")
        limits[group] = DestinationLimit(group, float(rate))
    return limits


@functools.cache
def builtin_groups() -> dict[str, tuple[str, ...]]:
    """The well-known mailbox providers' domains shipped with MassMailer."""
    text = resources.files(__package__).joinpath(_BUILTIN).read_text(encoding="utf-8")
    return parse_groups(json.loads(text), _BUILTIN)


def default_destinations() -> DestinationLimits:
    """The shipped groups, none of them limited."""
    return DestinationLimits(build_groups(builtin_groups()), {})
