"""Limits shared by every worker process and host, kept in Redis and changed by Lua scripts."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from massmailer.limits import lua
from massmailer.limits.policy import (
    BreakerState,
    LimitSettings,
    burst_for,
    gcra_headroom,
    seconds_to_next_utc_day,
    utc_day,
)
from massmailer.providers.base import ProviderConfig

if TYPE_CHECKING:
    import redis

_US = 1_000_000
_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")
# An open breaker that nobody probes (its provider left the configuration) goes after a day;
# if the provider is still there and still failing, the next faults open it again.
_OPENED_TTL_MS = 86_400_000


class RedisLimits:
    """Rate limits, session caps and circuit breakers that hold across the whole fleet.

    Creating one opens no connection (the scripts load on first use), so it may be built before
    a fork. Every key starts with `prefix` and carries the provider's name as a cluster hash tag,
    so one provider's keys share a slot and its scripts stay valid on Redis Cluster.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        prefix: str,
        failure_threshold: int = 5,
        window_seconds: float = 30.0,
        cooldown_seconds: float = 15.0,
        connection_lease_seconds: float = 60.0,
        probe_timeout_seconds: float = 30.0,
    ) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self.settings = LimitSettings(
            failure_threshold=failure_threshold,
            window_seconds=window_seconds,
            cooldown_seconds=cooldown_seconds,
            connection_lease_seconds=connection_lease_seconds,
            probe_timeout_seconds=probe_timeout_seconds,
        )
        register = redis_client.register_script
        self._rate = register(lua.RATE)
        self._acquire = register(lua.ACQUIRE_CONNECTION)
        self._refresh = register(lua.REFRESH_CONNECTION)
        self._state = register(lua.BREAKER_STATE)
        self._allow = register(lua.ALLOW_REQUEST)
        self._failure = register(lua.RECORD_FAILURE)
        self._snapshot = register(lua.SNAPSHOT)

    def _key(self, provider_name: str, part: str) -> str:
        return f"{self._prefix}{{{provider_name}}}:{part}"

    def _breaker_keys(self, provider_name: str) -> list[str]:
        return [self._key(provider_name, p) for p in ("opened", "probe", "failures")]

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Take one send from the provider's rate; return 0.0 if taken, else seconds to wait.

        `now` (Unix seconds) replaces the Redis server's clock, for tests only.
        """
        rate, daily = provider.rate_per_second, provider.rate_per_day
        if rate is None and daily is None:
            return 0.0
        interval = _US / rate if rate is not None else 0
        tolerance = burst_for(rate) * interval if rate is not None else 0
        keys = [self._key(provider.name, "rate"), self._key(provider.name, "daily")]
        args = [
            "" if now is None else repr(now * _US),
            repr(interval),
            repr(tolerance),
            -1 if daily is None else daily,
        ]
        return int(self._rate(keys=keys, args=args)) / _US

    def acquire_connection(self, provider: ProviderConfig) -> str | None:
        """Take a session slot under the provider's cap; return its lease token, or None if full."""
        token = uuid.uuid4().hex
        lease_us = round(self.settings.connection_lease_seconds * _US)
        keys = [self._key(provider.name, "sessions")]
        taken = self._acquire(keys=keys, args=[provider.max_connections, lease_us, token])
        return token if int(taken) else None

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool:
        """Extend a slot's lease; return False if it had already expired (the slot is lost)."""
        lease_us = round(self.settings.connection_lease_seconds * _US)
        keys = [self._key(provider.name, "sessions")]
        return bool(int(self._refresh(keys=keys, args=[lease_us, token])))

    def release_connection(self, provider: ProviderConfig, token: str) -> None:
        """Give a session slot back."""
        self._redis.zrem(self._key(provider.name, "sessions"), token)

    def breaker_state(self, provider_name: str) -> BreakerState:
        """Return the provider's breaker state without changing it."""
        code = self._state(keys=self._breaker_keys(provider_name)[:1], args=[self._cooldown_us])
        return _STATES[int(code)]

    def allow_request(self, provider_name: str) -> bool:
        """Return whether a send may go to the provider now (taking the probe when half open).

        Half open, one caller across the fleet gets the probe; if it never reports back, the
        probe slot frees itself after `probe_timeout_seconds`.
        """
        probe_ms = round(self.settings.probe_timeout_seconds * 1000)
        keys = self._breaker_keys(provider_name)[:2]
        return bool(int(self._allow(keys=keys, args=[self._cooldown_us, probe_ms])))

    def record_success(self, provider_name: str) -> None:
        """Close the provider's breaker and forget its failures."""
        self._redis.delete(*self._breaker_keys(provider_name))

    def record_failure(self, provider_name: str) -> BreakerState:
        """Count a provider fault; return the breaker state it leaves.

        Closed, it opens at `failure_threshold` faults within `window_seconds`. Half open, the
        fault is the probe's and re-opens it for another cool-down. Open, faults from sends that
        began before it opened change nothing.
        """
        args = [
            self._cooldown_us,
            round(self.settings.window_seconds * _US),
            self.settings.failure_threshold,
            uuid.uuid4().hex,
            _OPENED_TTL_MS,
        ]
        return _STATES[int(self._failure(keys=self._breaker_keys(provider_name), args=args))]

    def snapshot(self, providers: Iterable[ProviderConfig]) -> dict[str, dict]:
        """Return each provider's breaker state, failures, rate headroom and sessions in use."""
        window_us = round(self.settings.window_seconds * _US)
        return {p.name: self._snapshot_one(p, window_us) for p in providers}

    def _snapshot_one(self, provider: ProviderConfig, window_us: int) -> dict:
        name = provider.name
        keys = [self._key(name, part) for part in ("rate", "daily", "sessions", "opened")]
        keys.append(self._key(name, "failures"))
        now_us, state, failures, tat, day, used, sessions = self._snapshot(
            keys=keys, args=[self._cooldown_us, window_us]
        )
        now = int(now_us) / _US
        headroom = None
        if provider.rate_per_second is not None:
            headroom = gcra_headroom(float(tat or 0) / _US, now, provider.rate_per_second)
        daily_remaining = None
        if provider.rate_per_day is not None:
            used_today = int(used) if day and int(day) == utc_day(now) else 0
            daily_remaining = max(0, provider.rate_per_day - used_today)
        return {
            "state": _STATES[int(state)],
            "failures": int(failures),
            "rate_headroom": headroom,
            "daily_remaining": daily_remaining,
            "seconds_to_daily_reset": seconds_to_next_utc_day(now),
            "connections_in_use": int(sessions),
            "max_connections": provider.max_connections,
        }

    @property
    def _cooldown_us(self) -> int:
        return round(self.settings.cooldown_seconds * _US)
