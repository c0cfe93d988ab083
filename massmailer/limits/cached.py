"""Limits whose closed breakers are remembered in-process for a moment, sparing Redis per send.

Asking Redis whether a provider is healthy before every message, and telling it after every
success, cost two round trips per email: about a third of a worker's time against a fast
provider. A breaker seen closed is trusted for `ttl_seconds`; a success is reported only when the
breaker was not known to be closed (to close it, or to resolve a probe). Faults are always
reported. The price: another process's opening of a breaker reaches this one up to `ttl_seconds`
later, and successes no longer clear the fault count while closed, so the breaker trips on
`failure_threshold` faults within its window however many sends succeeded between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from massmailer.limits.interface import Limits
from massmailer.limits.policy import BreakerState, LimitSettings
from massmailer.providers.base import ProviderConfig

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
        if not self._known_closed(provider_name):
            self._inner.record_success(provider_name)

    def record_failure(self, provider_name: str) -> BreakerState:
        """Count a provider fault and forget that the breaker was closed."""
        self._closed_until.pop(provider_name, None)
        return self._inner.record_failure(provider_name)

    def breaker_state(self, provider_name: str) -> BreakerState:
        return self._inner.breaker_state(provider_name)

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        return self._inner.try_acquire_rate(provider, now)

    def acquire_connection(self, provider: ProviderConfig) -> str | None:
        return self._inner.acquire_connection(provider)

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool:
        return self._inner.refresh_connection(provider, token)

    def release_connection(self, provider: ProviderConfig, token: str) -> None:
        self._inner.release_connection(provider, token)

    def snapshot(self, providers: Iterable[ProviderConfig]) -> dict[str, dict]:
        return self._inner.snapshot(providers)
