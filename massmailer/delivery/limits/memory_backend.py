"""Limits for one process (the embedded demo, which has no Redis): same rules, kept in dicts."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from massmailer.delivery.limits import aimd
from massmailer.delivery.limits.aimd import AimdSettings, AimdState
from massmailer.delivery.limits.policy import (
    CONNECTION_LEASE_SECONDS,
    BreakerState,
    LimitSettings,
    gcra,
    gcra_headroom,
    gcra_reserve,
    gcra_wait,
    seconds_to_next_utc_day,
    utc_day,
)
from massmailer.delivery.providers.base import ProviderConfig


@dataclass
class _Breaker:
    opened_at: float | None = None
    probe_until: float = 0.0
    failures: deque[float] = field(default_factory=deque)


class MemoryLimits:
    """Rate limits, session caps and circuit breakers for the threads of a single process.

    Behaves like `RedisLimits` but counts only this process's sends: enough for the demo, wrong
    for a fleet. Times are wall-clock Unix seconds so that daily caps follow the UTC date.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        window_seconds: float = 30.0,
        cooldown_seconds: float = 15.0,
        connection_lease_seconds: float = CONNECTION_LEASE_SECONDS,
        probe_timeout_seconds: float = 30.0,
        aimd: AimdSettings | None = None,
    ) -> None:
        self.aimd = aimd or AimdSettings()
        self.settings = LimitSettings(
            failure_threshold=failure_threshold,
            window_seconds=window_seconds,
            cooldown_seconds=cooldown_seconds,
            connection_lease_seconds=connection_lease_seconds,
            probe_timeout_seconds=probe_timeout_seconds,
        )
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._daily: dict[str, tuple[int, int]] = {}  # name -> (UTC day, sends counted)
        self._sessions: dict[str, dict[str, float]] = {}  # name -> token -> lease expiry
        self._breakers: dict[str, _Breaker] = {}
        self._adaptive: dict[str, AimdState] = {}

    def try_acquire_rate(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Take one send from the provider's rate; return 0.0 if taken, else seconds to wait."""
        now = time.time() if now is None else now
        with self._lock:
            rate, cap = self._rate(provider), provider.daily_cap(now)
            used = self._used_today(provider.name, now)
            if cap is not None and used >= cap:
                return seconds_to_next_utc_day(now)
            if rate is not None:
                new_tat, wait = gcra(self._tat.get(provider.name, 0.0), now, rate)
                if wait:
                    return wait
                self._tat[provider.name] = new_tat
            if cap is not None:
                self._daily[provider.name] = (utc_day(now), used + 1)
            return 0.0

    def reserve_rate(
        self, provider: ProviderConfig, horizon_seconds: float, now: float | None = None
    ) -> float | None:
        """Take the next GCRA slot within the horizon; return seconds until it, or None."""
        now = time.time() if now is None else now
        with self._lock:
            rate, cap = self._rate(provider), provider.daily_cap(now)
            if cap is not None and self._used_today(provider.name, now) >= cap:
                return None
            if rate is None:
                return 0.0
            reserved = gcra_reserve(self._tat.get(provider.name, 0.0), now, rate, horizon_seconds)
            if reserved is None:
                return None
            self._tat[provider.name], wait = reserved
            return wait

    def reserve_rate_many(
        self, provider: ProviderConfig, horizon_seconds: float, count: int, now: float | None = None
    ) -> list[float]:
        """Take up to count next slots within the horizon; seconds until each."""
        waits = []
        for _ in range(count):
            wait = self.reserve_rate(provider, horizon_seconds, now)
            if wait is None:
                break
            waits.append(wait)
        return waits

    def take_daily(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Count one send against the daily cap; 0.0 if counted, else seconds to UTC midnight."""
        now = time.time() if now is None else now
        cap = provider.daily_cap(now)
        if cap is None:
            return 0.0
        with self._lock:
            used = self._used_today(provider.name, now)
            if used >= cap:
                return seconds_to_next_utc_day(now)
            self._daily[provider.name] = (utc_day(now), used + 1)
            return 0.0

    def capacity_wait(self, provider: ProviderConfig, now: float | None = None) -> float:
        """Seconds until a reservation could be had for now (rate or daily reset); read-only."""
        now = time.time() if now is None else now
        with self._lock:
            rate, cap = self._rate(provider), provider.daily_cap(now)
            if cap is not None and self._used_today(provider.name, now) >= cap:
                return seconds_to_next_utc_day(now)
            if rate is None:
                return 0.0
            return gcra_wait(self._tat.get(provider.name, 0.0), now, rate)

    def _rate(self, provider: ProviderConfig) -> float | None:
        """The effective rate: configured or temporary, times the AIMD factor (caller locks)."""
        return aimd.effective_rate(provider.rate_per_second, self._aimd_state(provider.name))

    def _aimd_state(self, name: str) -> AimdState:
        return self._adaptive.get(name) or AimdState()

    def record_throttle(self, provider: ProviderConfig) -> float | None:
        """Apply a throttle reply (aimd.cut); return the effective rate it leaves."""
        now, rate = time.time(), provider.rate_per_second
        with self._lock:
            state = aimd.cut(self._aimd_state(provider.name), now, rate, self.aimd)
            self._adaptive[provider.name] = state
            return aimd.effective_rate(rate, state)

    def note_sent(self, provider: ProviderConfig, count: int = 1) -> None:
        """Count successes: the rate estimate, and the additive increase of a cut rate."""
        now = time.time()
        with self._lock:
            state = aimd.note_sent(self._aimd_state(provider.name), count, now, self.aimd)
            self._adaptive[provider.name] = state

    def acquire_connection(self, provider: ProviderConfig, holder: str = "") -> str | None:
        """Take a session slot under the provider's cap; return its lease token, or None if full."""
        now = time.time()
        with self._lock:
            sessions = self._live_sessions(provider.name, now)
            if len(sessions) >= provider.max_connections:
                return None
            token = uuid.uuid4().hex
            sessions[token] = now + self.settings.connection_lease_seconds
            return token

    def refresh_connection(self, provider: ProviderConfig, token: str) -> bool:
        """Extend a slot's lease; return False if it had already expired (the slot is lost)."""
        now = time.time()
        with self._lock:
            sessions = self._live_sessions(provider.name, now)
            if token not in sessions:
                return False
            sessions[token] = now + self.settings.connection_lease_seconds
            return True

    def release_connection(self, provider: ProviderConfig, token: str) -> None:
        """Give a session slot back."""
        with self._lock:
            self._sessions.get(provider.name, {}).pop(token, None)

    def connection_demand(self, provider: ProviderConfig, holder: str) -> int:
        """Always 0: one process holds one pool per provider, so nobody else can be waiting."""
        return 0

    def _live_sessions(self, name: str, now: float) -> dict[str, float]:
        sessions = self._sessions.setdefault(name, {})
        for token in [t for t, expires in sessions.items() if expires <= now]:
            del sessions[token]
        return sessions

    def breaker_state(self, provider_name: str) -> BreakerState:
        """Return the provider's breaker state without changing it."""
        with self._lock:
            return self._state(self._breakers.get(provider_name, _Breaker()), time.time())

    def _state(self, breaker: _Breaker, now: float) -> BreakerState:
        if breaker.opened_at is None:
            return "closed"
        if now < breaker.opened_at + self.settings.cooldown_seconds:
            return "open"
        return "half_open"

    def breaker_wait(self, provider_name: str) -> float:
        """Seconds until an open breaker lets a probe through (0.0 if closed or half open)."""
        now = time.time()
        with self._lock:
            breaker = self._breakers.get(provider_name, _Breaker())
            if self._state(breaker, now) != "open":
                return 0.0
            return breaker.opened_at + self.settings.cooldown_seconds - now

    def allow_request(self, provider_name: str) -> bool:
        """Return whether a send may go to the provider now (taking the probe when half open)."""
        now = time.time()
        with self._lock:
            breaker = self._breakers.setdefault(provider_name, _Breaker())
            state = self._state(breaker, now)
            if state != "half_open":
                return state == "closed"
            if now < breaker.probe_until:
                return False
            breaker.probe_until = now + self.settings.probe_timeout_seconds
            return True

    def record_success(self, provider_name: str) -> None:
        """Close the provider's breaker and forget its failures."""
        with self._lock:
            self._breakers.pop(provider_name, None)

    def record_failure(self, provider_name: str) -> BreakerState:
        """Count a provider fault; return the breaker state it leaves (see `RedisLimits`)."""
        now = time.time()
        with self._lock:
            breaker = self._breakers.setdefault(provider_name, _Breaker())
            state = self._state(breaker, now)
            if state == "open":
                return state
            if state == "half_open":
                self._breakers[provider_name] = _Breaker(opened_at=now)
                return "open"
            self._forget_old_failures(breaker, now)
            breaker.failures.append(now)
            if len(breaker.failures) < self.settings.failure_threshold:
                return "closed"
            self._breakers[provider_name] = _Breaker(opened_at=now)
            return "open"

    def _forget_old_failures(self, breaker: _Breaker, now: float) -> None:
        while breaker.failures and breaker.failures[0] <= now - self.settings.window_seconds:
            breaker.failures.popleft()

    def snapshot(self, providers: Iterable[ProviderConfig]) -> dict[str, dict]:
        """Return each provider's breaker state, failures, rate headroom and sessions in use."""
        now = time.time()
        with self._lock:
            return {p.name: self._snapshot_one(p, now) for p in providers}

    def _snapshot_one(self, provider: ProviderConfig, now: float) -> dict:
        breaker = self._breakers.get(provider.name, _Breaker())
        self._forget_old_failures(breaker, now)
        rate, cap = self._rate(provider), provider.daily_cap(now)
        headroom = None
        if rate is not None:
            headroom = gcra_headroom(self._tat.get(provider.name, 0.0), now, rate)
        used = self._used_today(provider.name, now)
        return {
            "state": self._state(breaker, now),
            "failures": len(breaker.failures),
            "rate_headroom": headroom,
            "effective_rate": rate,
            "rate_factor": self._aimd_state(provider.name).factor,
            "daily_remaining": None if cap is None else max(0, cap - used),
            "daily_cap": cap,
            "seconds_to_daily_reset": seconds_to_next_utc_day(now),
            "connections_in_use": len(self._live_sessions(provider.name, now)),
            "max_connections": provider.max_connections,
        }

    def _used_today(self, name: str, now: float) -> int:
        day, used = self._daily.get(name, (utc_day(now), 0))
        return used if day == utc_day(now) else 0
