"""The one interface delivery uses for rate limits, connection caps and circuit breakers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from massmailer.limits.policy import BreakerState
from massmailer.providers.base import ProviderConfig


class Limits(Protocol):
    """Per-provider limits: Redis across the fleet in production, in-process for the demo.

    Rate: GCRA on `rate_per_second` with a burst of `burst_for(rate)`, plus an optional
    `rate_per_day` counted per UTC date. Connections: at most `max_connections` concurrent SMTP
    sessions, each held by a lease that expires if its holder dies. Breaker: opens after
    `failure_threshold` failures within `window_seconds`, refuses for `cooldown_seconds`, then
    lets exactly one probe through; the probe's success closes it, its failure re-opens it.

    Callers record only provider faults (`FailureKind.PROVIDER_FAULT`: connection refused, auth
    failure, TLS failure, a 5.7.x policy reply about the account) as breaker failures, never a
    recipient's bounce or a transient 4xx: those say nothing about the provider's health.
    """

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Take one send from the provider's rate; return 0.0 if taken, else seconds to wait."""
        ...

    def acquire_connection(self, provider: ProviderConfig) -> str | None:
        """Take a session slot under the provider's cap; return its lease token, or None if full."""
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
