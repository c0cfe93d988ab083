"""Pure: a provider's warm-up schedule, daily caps rising by day since a start date (UTC).

A new sending IP or domain earns its reputation gradually: day 0 (the start date) may send
`daily_caps[0]`, day 1 `daily_caps[1]`, and so on. Before the start date the first cap applies
(a warm-up not yet begun is not a licence to send in full); after the list ends the provider's
own `rate_per_day` does (or nothing). While the schedule runs, a `rate_per_day` below the day's
cap still wins.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime


@dataclass(frozen=True)
class Warmup:
    """Daily caps by day since `start` (day 0 is the start date itself)."""

    start: date
    daily_caps: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.daily_caps:
            raise ValueError("must hold at least one cap")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.daily_caps):
            raise ValueError("must be whole numbers of at least 1")
        if any(b < a for a, b in itertools.pairwise(self.daily_caps)):
            raise ValueError("must not decrease (a warm-up rises)")

    def day_of(self, today: date) -> int:
        """The schedule's day number for `today` (negative before the start)."""
        return (today - self.start).days

    def cap_on(self, today: date, after: int | None) -> int | None:
        """The daily cap in force on `today`; `after` is the cap once the schedule ends."""
        day = self.day_of(today)
        if day >= len(self.daily_caps):
            return after
        cap = self.daily_caps[max(day, 0)]
        return cap if after is None else min(cap, after)


def describe(warmup: Warmup | None, cap: int | None, today: date) -> str:
    """The daily cap in force for people: `1000 (warm-up day 2 of 5)`, `none`, `5000`."""
    text = "none" if cap is None else str(cap)
    if warmup is None:
        return text
    day, days = warmup.day_of(today), len(warmup.daily_caps)
    if day < 0:
        return f"{text} (warm-up starts {warmup.start.isoformat()})"
    if day >= days:
        return f"{text} (warm-up done)"
    return f"{text} (warm-up day {day + 1} of {days})"


def utc_date(now: float) -> date:
    """The UTC date of a Unix time (the day daily caps count in)."""
    return datetime.fromtimestamp(now, UTC).date()
