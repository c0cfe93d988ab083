"""The one interface delivery uses for rate limits, connection caps and circuit breakers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from massmailer.delivery.limits.policy import BreakerState
from massmailer.delivery.providers.base import ProviderConfig


class Limits(Protocol):
    """Per-provider limits: Redis across the fleet in production, in-process for the demo.

    Rate: GCRA on the effective rate (`rate_per_second`, cut by throttle replies and restored by
    successes: limits/aimd.py) with a burst of `burst_for(rate)`, plus an optional daily cap
    counted per UTC date (`ProviderConfig.daily_cap`: the warm-up's cap of the day, else
    `rate_per_day`). A destination group's limit is scheduled the same way, through a
    provider-shaped `DestinationLimit.rate_subject` that has only a rate. Connections: at most
    `max_connections` concurrent SMTP sessions, each held by a lease that expires if its holder
    dies. Breaker: opens after `failure_threshold` failures within `window_seconds`, refuses for
    `cooldown_seconds`, then lets exactly one probe through; the probe's success closes it, its
    failure re-opens it.

    Callers record only provider faults (`FailureKind.PROVIDER_FAULT`: connection refused, auth
    failure, TLS failure, a 5.7.x policy reply about the account) as breaker failures, never a
    recipient's bounce or a transient 4xx: those say nothing about the provider's health.
    """

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Take one send from the provider's rate; return 0.0 if taken, else seconds to wait.

        Takes the rate and the daily count together; senders use `reserve_rate` at pick time
        and `take_daily` at send time instead, so a send that never happens spends no quota.
        """
        ...

    def reserve_rate(
        self, provider: ProviderConfig, horizon_seconds: float, now: float | None = None
    ) -> float | None:
        """Take the next slot in the provider's GCRA schedule if it falls within horizon_seconds.

        Return the seconds from now until that slot (0.0 = send now), or None when the next
        slot is further off than the horizon, or the daily cap is spent (then nothing is taken,
        so the schedule cannot run ahead). A provider with no rate limit returns 0.0 always.
        The daily count is not touched: `take_daily` does that when the send happens.
        `now` (Unix seconds) replaces the store's clock, for tests only.
        """
        ...

    def reserve_rate_many(
        self, provider: ProviderConfig, horizon_seconds: float, count: int, now: float | None = None
    ) -> list[float]:
        """Take up to `count` next slots, as `reserve_rate` would one by one, in one step.

        Return the seconds until each slot taken, in order; fewer than count (maybe none) when
        the schedule reaches the horizon or the daily cap is spent.
        """
        ...

    def take_daily(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Count one send against the daily cap in force at the moment the send happens.

        Return 0.0 if counted (or the provider has no daily cap), else the seconds until the
        daily cap resets (UTC midnight); nothing counted then.
        """
        ...

    def capacity_wait(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Seconds until `reserve_rate` could hand out a slot for now (rate or daily reset).

        Read-only: tells a caller refused by `reserve_rate` how far off the provider's capacity is.
        """
        ...

    def record_throttle(self, provider: ProviderConfig) -> float | None:
        """Apply a throttle reply: cut the provider's effective rate for a cool-down (AIMD).

        Return the effective rate it leaves (None: unlimited). See limits/aimd.py.
        """
        ...

    def note_sent(self, provider: ProviderConfig, count: int = 1) -> None:
        """Count successes: they raise a cut rate back additively after the cool-down.

        Cheap: the Redis store reports them at most once a second per process and provider.
        """
        ...

    def breaker_wait(self, provider_name: str) -> float:
        """Seconds until an open breaker lets a probe through (0.0 if closed or half-open).

        Read-only: it never takes the half-open breaker's probe (`allow_request` does).
        """
        ...

    def acquire_connection(self, provider: ProviderConfig, holder: str = "") -> str | None:
        """Take a session slot under the provider's cap; return its lease token, or None if full.

        A refused `holder` (one name per process) counts as waiting for a moment afterwards.
        """
        ...

    def connection_demand(self, provider: ProviderConfig, holder: str) -> int:
        """How many holders other than `holder` were refused a slot within the last moment."""
        ...

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool:
        """Extend a slot's lease; return False if it had already expired (the slot is lost)."""
        ...

    def release_connection(self, provider: ProviderConfig, token: str) -> None:
        """Give a session slot back."""
        ...

    def breaker_state(self, provider_name: str) -> BreakerState:
        """Return the provider's breaker state without changing it."""
        ...

    def allow_request(self, provider_name: str) -> bool:
        """Return whether a send may go to the provider now (taking the probe when half open)."""
        ...

    def record_success(self, provider_name: str) -> None:
        """Close the provider's breaker and forget its failures."""
        ...

    def record_failure(self, provider_name: str) -> BreakerState:
        """Count a provider fault; return the breaker state it leaves."""
        ...

    def snapshot(self, providers: Iterable[ProviderConfig]) -> dict[str, dict]:
        """Return each provider's breaker state, failures, rate headroom and sessions in use."""
        ...
