"""Limits whose closed breakers are remembered in-process for a moment, sparing Redis per send.

(A fast rate schedule's slots are likewise taken a few per call: prefetch.py.)

Asking Redis whether a provider is healthy before every message, and telling it after every
success, cost two round trips per email: about a third of a worker's time against a fast
provider. A breaker seen closed is trusted for `ttl_seconds`; a success is reported only when the
breaker was not known to be closed (to close it, or to resolve a probe). Faults are always
reported. The price: another process's opening of a breaker reaches this one up to `ttl_seconds`
later, and successes no longer clear the fault count while closed, so the breaker trips on
`failure_threshold` faults within its window however many sends succeeded between them.
An open breaker is remembered the same way by `breaker_wait`, so the picks that draw a provider
that is down do not each ask Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.limits.policy import BreakerState, LimitSettings
from massmailer.delivery.limits.prefetch import SlotBuffer, batch_size
from massmailer.delivery.providers.base import ProviderConfig

DEFAULT_TTL_SECONDS = 1.0


class CachedBreakers:
    """A Limits that wraps another and caches its closed breakers for this process."""

    def __init__(
        self,
        inner: Limits,
        *,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl_seconds
        self._clock = clock
        self._closed_until: dict[str, float] = {}
        # Open breakers, also remembered for `ttl_seconds`: name -> (until, half-opens at).
        self._open: dict[str, tuple[float, float]] = {}
        self._slots = SlotBuffer(inner.reserve_rate_many)

    @property
    def settings(self) -> LimitSettings:
        """The wrapped store's breaker thresholds and lease lengths."""
        return self._inner.settings

    def _known_closed(self, provider_name: str) -> bool:
        return self._closed_until.get(provider_name, 0.0) > self._clock()

    def allow_request(self, provider_name: str) -> bool:
        """Return whether a send may go to the provider now (taking the probe when half open)."""
        if self._known_closed(provider_name):
            return True
        if self._inner.breaker_state(provider_name) == "closed":
            self._closed_until[provider_name] = self._clock() + self._ttl
            return True
        self._closed_until.pop(provider_name, None)
        return self._inner.allow_request(provider_name)

    def record_success(self, provider_name: str) -> None:
        """Close the breaker, unless it is already known to be closed."""
        self._open.pop(provider_name, None)
        if not self._known_closed(provider_name):
            self._inner.record_success(provider_name)

    def record_failure(self, provider_name: str) -> BreakerState:
        """Count a provider fault and forget that the breaker was closed."""
        self._closed_until.pop(provider_name, None)
        return self._inner.record_failure(provider_name)

    def breaker_state(self, provider_name: str) -> BreakerState:
        return self._inner.breaker_state(provider_name)

    def breaker_wait(self, provider_name: str) -> float:
        """Seconds until an open breaker half-opens; a closed or open one is remembered a while.

        A provider that is down is drawn by its weight's share of every pick: remembering that
        it is open spares Redis those lookups. The remembered wait is never longer than the ttl,
        so a breaker another process closes early is seen again within `ttl_seconds`.
        """
        now = self._clock()
        if self._known_closed(provider_name):
            return 0.0
        remembered_until, half_opens_at = self._open.get(provider_name, (0.0, 0.0))
        if remembered_until > now:
            return half_opens_at - now
        state = self._inner.breaker_state(provider_name)
        if state == "closed":
            self._closed_until[provider_name] = now + self._ttl
            return 0.0
        if state == "half_open":
            return 0.0
        wait = self._inner.breaker_wait(provider_name)
        self._open[provider_name] = (now + min(wait, self._ttl), now + wait)
        return wait

    def reserve_rate(
        self, provider: ProviderConfig, horizon_seconds: float, now: float | None = None
    ) -> float | None:
        """The next slot of the provider's schedule; a fast schedule's come a few per call."""
        if now is not None or batch_size(provider.rate_per_second) == 1:
            return self._inner.reserve_rate(provider, horizon_seconds, now)
        return self._slots.reserve(provider, horizon_seconds)

    def reserve_rate_many(
        self, provider: ProviderConfig, horizon_seconds: float, count: int, now: float | None = None
    ) -> list[float]:
        return self._inner.reserve_rate_many(provider, horizon_seconds, count, now)

    def record_throttle(self, provider: ProviderConfig) -> float | None:
        return self._inner.record_throttle(provider)

    def note_sent(self, provider: ProviderConfig, count: int = 1) -> None:
        self._inner.note_sent(provider, count)

    def take_daily(self, provider: ProviderConfig, now: float | None = None) -> float:
        return self._inner.take_daily(provider, now)

    def capacity_wait(self, provider: ProviderConfig, now: float | None = None) -> float:
        return self._inner.capacity_wait(provider, now)

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        return self._inner.try_acquire_rate(provider, now)

    def acquire_connection(self, provider: ProviderConfig, holder: str = "") -> str | None:
        return self._inner.acquire_connection(provider, holder)

    def connection_demand(self, provider: ProviderConfig, holder: str) -> int:
        return self._inner.connection_demand(provider, holder)

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool:
        return self._inner.refresh_connection(provider, token)

    def release_connection(self, provider: ProviderConfig, token: str) -> None:
        self._inner.release_connection(provider, token)

    def snapshot(self, providers: Iterable[ProviderConfig]) -> dict[str, dict]:
        return self._inner.snapshot(providers)
