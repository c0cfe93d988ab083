"""Pure rules shared by both backends: GCRA arithmetic, the burst, UTC days, breaker settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]

SECONDS_PER_DAY = 86_400
# A session slot is a lease its holder's pool refreshes every few seconds, so a crashed process's
# slots come back within this long, not after its jobs' lease.
CONNECTION_LEASE_SECONDS = 20.0
# A process refused a slot counts as waiting this long; holders above their share give one back.
CONNECTION_WANT_SECONDS = 1.0


@dataclass(frozen=True)
class LimitSettings:
    """Breaker thresholds and lease lengths, the same for every provider."""

    failure_threshold: int = 5
    window_seconds: float = 30.0
    cooldown_seconds: float = 15.0
    connection_lease_seconds: float = CONNECTION_LEASE_SECONDS
    # A probe whose sender died without reporting frees the slot for another after this long.
    probe_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        for name in ("window_seconds", "cooldown_seconds", "connection_lease_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.probe_timeout_seconds <= 0:
            raise ValueError("probe_timeout_seconds must be positive")


def burst_for(rate_per_second: float) -> float:
    """Return how many sends may go back to back after an idle spell: a tenth of a second's worth.

    Small enough that anything measured over a second or more sees the configured rate (the
    burst adds at most 10 %), large enough that a high rate need not be met send by send.
    """
    if rate_per_second <= 0:
        raise ValueError("rate_per_second must be positive (None means no limit)")
    return max(1.0, rate_per_second / 10)


def gcra(tat: float, now: float, rate_per_second: float) -> tuple[float, float]:
    """Apply GCRA: return (new theoretical arrival time, 0.0) on admit, else (tat, seconds to wait).

    `tat` is the stored theoretical arrival time (0 when none). One send moves it one emission
    interval into the future; a send is admitted while it stays within `burst` intervals of now.
    """
    interval = 1.0 / rate_per_second
    new_tat = max(tat, now) + interval
    allow_at = new_tat - burst_for(rate_per_second) * interval
    if allow_at > now:
        return tat, allow_at - now
    return new_tat, 0.0


def gcra_reserve(
    tat: float, now: float, rate_per_second: float, horizon_seconds: float
) -> tuple[float, float] | None:
    """Reserve the next GCRA slot: return (new tat, seconds until the slot), or None.

    The slot is the earliest time the next send conforms: `burst` intervals before its new
    theoretical arrival time, or now if that is past. None when the slot lies beyond
    `horizon_seconds`; the caller then keeps `tat`, so a schedule never runs further ahead than
    the horizon (plus the burst) however many reservers ask.
    """
    wait = gcra_wait(tat, now, rate_per_second)
    if wait > horizon_seconds:
        return None
    return max(tat, now) + 1.0 / rate_per_second, wait


def gcra_wait(tat: float, now: float, rate_per_second: float) -> float:
    """Return the seconds from `now` until the next send would conform (0.0: at once)."""
    interval = 1.0 / rate_per_second
    allow_at = max(tat, now) + interval - burst_for(rate_per_second) * interval
    return max(0.0, allow_at - now)


def gcra_headroom(tat: float, now: float, rate_per_second: float) -> int:
    """Return how many sends GCRA would admit right now, back to back."""
    interval = 1.0 / rate_per_second
    spare = now + burst_for(rate_per_second) * interval - max(tat, now)
    return max(0, math.floor(spare / interval + 1e-9))


def utc_day(now: float) -> int:
    """Return the UTC date of a Unix time as a day number (days since 1970-01-01)."""
    return math.floor(now / SECONDS_PER_DAY)


def seconds_to_next_utc_day(now: float) -> float:
    """Return the seconds from `now` until the next UTC midnight, when daily caps reset."""
    return (utc_day(now) + 1) * SECONDS_PER_DAY - now
