"""Limits shared by every worker process and host, kept in Redis and changed by Lua scripts."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from massmailer.delivery.limits import lua
from massmailer.delivery.limits.aimd import AimdSettings, AimdState, effective_rate
from massmailer.delivery.limits.policy import (
    CONNECTION_LEASE_SECONDS,
    CONNECTION_WANT_SECONDS,
    BreakerState,
    LimitSettings,
    gcra_headroom,
    seconds_to_next_utc_day,
    utc_day,
)
from massmailer.delivery.providers.base import ProviderConfig

if TYPE_CHECKING:
    import redis

_US = 1_000_000
_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")
# An open breaker that nobody probes (its provider left the configuration) goes after a day;
# if the provider is still there and still failing, the next faults open it again.
_OPENED_TTL_MS = 86_400_000
# A provider's AIMD state that nobody updates for an hour (nobody sends to it) is forgotten:
# its next sends start at the full rate, and a throttle reply cuts it again.
_AIMD_TTL_MS = 3_600_000
# Each process reports its successes to the fleet's AIMD state at most this often per provider.
REPORT_EVERY_SECONDS = 1.0


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
        connection_lease_seconds: float = CONNECTION_LEASE_SECONDS,
        probe_timeout_seconds: float = 30.0,
        aimd: AimdSettings | None = None,
    ) -> None:
        self._redis = redis_client
        self.aimd = aimd or AimdSettings()
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
        self._reserve = register(lua.RESERVE)
        self._take_daily = register(lua.TAKE_DAILY)
        self._capacity_wait = register(lua.CAPACITY_WAIT)
        self._breaker_wait = register(lua.BREAKER_WAIT)
        self._acquire = register(lua.ACQUIRE_CONNECTION)
        self._refresh = register(lua.REFRESH_CONNECTION)
        self._demand = register(lua.CONNECTION_DEMAND)
        self._state = register(lua.BREAKER_STATE)
        self._allow = register(lua.ALLOW_REQUEST)
        self._failure = register(lua.RECORD_FAILURE)
        self._snapshot = register(lua.SNAPSHOT)
        self._throttle = register(lua.THROTTLE)
        self._note_sent = register(lua.NOTE_SENT)
        # Successes not yet reported, when each provider was last reported, and the unrated
        # providers a throttle gave a temporary rate (only those need a reservation in Redis).
        self._report_lock = threading.Lock()
        self._unreported: dict[str, int] = {}
        self._reported_at: dict[str, float] = {}
        self._temporary_rate: set[str] = set()

    def _key(self, provider_name: str, part: str) -> str:
        return f"{self._prefix}{{{provider_name}}}:{part}"

    def _breaker_keys(self, provider_name: str) -> list[str]:
        return [self._key(provider_name, p) for p in ("opened", "probe", "failures")]

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Take one send from the provider's rate; return 0.0 if taken, else seconds to wait.

        `now` (Unix seconds) replaces the Redis server's clock, for tests only.
        """
        if self._unlimited(provider, now):
            return 0.0
        args = [_clock_arg(now), _rate_arg(provider), _cap_arg(provider.daily_cap(now))]
        return int(self._rate(keys=self._rate_keys(provider), args=args)) / _US

    def reserve_rate(
        self, provider: ProviderConfig, horizon_seconds: float, now: float | None = None
    ) -> float | None:
        """Take the next GCRA slot within the horizon; return seconds until it, or None.

        One script call, so reservers in any number of processes get distinct, increasing
        slots, and a refused one changes nothing. A spent daily cap refuses too (read only).
        """
        waits = self.reserve_rate_many(provider, horizon_seconds, 1, now)
        return waits[0] if waits else None

    def reserve_rate_many(
        self, provider: ProviderConfig, horizon_seconds: float, count: int, now: float | None = None
    ) -> list[float]:
        """Take up to count next slots within the horizon in one call; seconds until each."""
        if self._unlimited(provider, now):
            return [0.0] * count
        horizon = repr(horizon_seconds * _US)
        cap = _cap_arg(provider.daily_cap(now))
        args = [_clock_arg(now), _rate_arg(provider), horizon, cap, count]
        return [int(w) / _US for w in self._reserve(keys=self._rate_keys(provider), args=args)]

    def take_daily(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Count one send against the daily cap; 0.0 if counted, else seconds to UTC midnight."""
        cap = provider.daily_cap(now)  # the warm-up's cap today, else rate_per_day
        if cap is None:
            return 0.0
        keys = [self._key(provider.name, "daily")]
        return int(self._take_daily(keys=keys, args=[_clock_arg(now), cap])) / _US

    def capacity_wait(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Seconds until a reservation could be had for now (rate or daily reset); read-only."""
        if self._unlimited(provider, now):
            return 0.0
        args = [_clock_arg(now), _rate_arg(provider), _cap_arg(provider.daily_cap(now))]
        return int(self._capacity_wait(keys=self._rate_keys(provider), args=args)) / _US

    def _rate_keys(self, provider: ProviderConfig) -> list[str]:
        return [self._key(provider.name, part) for part in ("rate", "daily", "aimd")]

    def _unlimited(self, provider: ProviderConfig, now: float | None = None) -> bool:
        """No limit to check in Redis: no rate, no daily cap, no temporary rate from a throttle.

        An unrated provider costs no round trip per send; this process learns of a temporary
        rate from its own throttle replies and from its success reports (at most a second late).
        """
        return (
            provider.rate_per_second is None
            and provider.daily_cap(now) is None
            and provider.name not in self._temporary_rate
        )

    def record_throttle(self, provider: ProviderConfig) -> float | None:
        """Apply a throttle reply fleet-wide (aimd.cut); return the effective rate it leaves."""
        s = self.aimd
        args = [
            _rate_arg(provider),
            repr(s.decrease),
            repr(s.min_factor),
            round(s.cut_spacing_seconds * _US),
            repr(s.floor_per_second),
            round(s.estimate_seconds * _US),
            _AIMD_TTL_MS,
        ]
        factor, base = self._throttle(keys=[self._key(provider.name, "aimd")], args=args)
        return self._learn(provider, factor, base)

    def note_sent(self, provider: ProviderConfig, count: int = 1) -> None:
        """Count successes; report them to the fleet's AIMD state at most once a second."""
        now = time.monotonic()
        with self._report_lock:
            pending = self._unreported.get(provider.name, 0) + count
            if now - self._reported_at.get(provider.name, 0.0) < REPORT_EVERY_SECONDS:
                self._unreported[provider.name] = pending
                return
            self._unreported[provider.name] = 0
            self._reported_at[provider.name] = now
        s = self.aimd
        args = [
            pending,
            repr(s.increase_per_second),
            round(s.cooldown_seconds * _US),
            round(s.max_step_seconds * _US),
            round(s.estimate_seconds * _US),
            _AIMD_TTL_MS,
        ]
        factor, base = self._note_sent(keys=[self._key(provider.name, "aimd")], args=args)
        self._learn(provider, factor, base)

    def _learn(self, provider: ProviderConfig, factor: bytes, base: bytes) -> float | None:
        """Remember whether an unrated provider has a temporary rate; return the effective rate."""
        if base:
            self._temporary_rate.add(provider.name)
        else:
            self._temporary_rate.discard(provider.name)
        configured = provider.rate_per_second
        rate = configured if configured is not None else (float(base) if base else None)
        return None if rate is None else rate * float(factor)

    def acquire_connection(self, provider: ProviderConfig, holder: str = "") -> str | None:
        """Take a session slot under the provider's cap; return its lease token, or None if full.

        A refused `holder` (one per process) counts as waiting for a while: `connection_demand`.
        """
        token = uuid.uuid4().hex
        lease_us = round(self.settings.connection_lease_seconds * _US)
        want_us = round(CONNECTION_WANT_SECONDS * _US)
        keys = [self._key(provider.name, "sessions"), self._key(provider.name, "wanted")]
        args = [provider.max_connections, lease_us, token, holder, want_us]
        return token if int(self._acquire(keys=keys, args=args)) else None

    def connection_demand(self, provider: ProviderConfig, holder: str) -> int:
        """How many holders other than `holder` were refused a slot within the last moment."""
        return int(self._demand(keys=[self._key(provider.name, "wanted")], args=[holder]))

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

    def breaker_wait(self, provider_name: str) -> float:
        """Seconds until an open breaker lets a probe through (0.0 if closed or half open)."""
        keys = self._breaker_keys(provider_name)[:1]
        return int(self._breaker_wait(keys=keys, args=[self._cooldown_us])) / _US

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
        parts = ("rate", "daily", "sessions", "opened", "failures", "aimd")
        keys = [self._key(name, part) for part in parts]
        now_us, state, failures, tat, day, used, sessions, factor, base = self._snapshot(
            keys=keys, args=[self._cooldown_us, window_us]
        )
        now = int(now_us) / _US
        adaptive = AimdState(float(factor or 1), float(base) if base else None)
        rate = effective_rate(provider.rate_per_second, adaptive)
        headroom = None if rate is None else gcra_headroom(float(tat or 0) / _US, now, rate)
        daily_remaining, cap = None, provider.daily_cap(now)
        if cap is not None:
            used_today = int(used) if day and int(day) == utc_day(now) else 0
            daily_remaining = max(0, cap - used_today)
        return {
            "state": _STATES[int(state)],
            "failures": int(failures),
            "rate_headroom": headroom,
            "effective_rate": rate,
            "rate_factor": adaptive.factor,
            "daily_remaining": daily_remaining,
            "daily_cap": cap,
            "seconds_to_daily_reset": seconds_to_next_utc_day(now),
            "connections_in_use": int(sessions),
            "max_connections": provider.max_connections,
        }

    @property
    def _cooldown_us(self) -> int:
        return round(self.settings.cooldown_seconds * _US)


def _clock_arg(now: float | None) -> str:
    """The scripts' clock argument: '' for the Redis server's clock, else microseconds."""
    return "" if now is None else repr(now * _US)


def _rate_arg(provider: ProviderConfig) -> str:
    """The configured rate per second for the scripts ('0': none); they apply the AIMD factor."""
    rate = provider.rate_per_second
    return "0" if rate is None else repr(float(rate))


def _cap_arg(daily: int | None) -> int:
    return -1 if daily is None else daily
