"""Per-key quotas: requests per second (GCRA with a burst) and recipients per UTC day.

The counters live in Redis so they hold across web processes and hosts; without REDIS_URL (the
embedded demo) they live in the process. Each check answers 0 when allowed, else the seconds to
wait (the Retry-After). Times come from the Redis server's clock so hosts need not agree.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis

DAY_SECONDS = 86_400

# KEYS: tat. ARGV: interval_us, tolerance_us. Returns 0 or the microseconds to wait.
_REQUEST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - now - tolerance
if wait > 0 then return wait end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"""

# KEYS: prefix of the day counters. ARGV: count, cap. Returns 0 or the seconds to midnight UTC.
_RECIPIENTS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local day = math.floor(now / 86400)
local key = KEYS[1] .. day
local count = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', key) or 0)
if used + count > tonumber(ARGV[2]) then return math.max(1, (day + 1) * 86400 - now) end
redis.call('INCRBY', key, count)
redis.call('EXPIRE', key, 2 * 86400)
return 0
"""


@dataclass(frozen=True)
class Quota:
    """One key's limits, its own or the configured defaults."""

    rate_per_second: float
    burst: int
    recipients_per_day: int


class Quotas(Protocol):
    def take_request(self, key_id: int, quota: Quota) -> float:
        """Count one request; return 0, or the seconds to wait before the next is allowed."""

    def take_recipients(self, key_id: int, count: int, quota: Quota) -> float:
        """Count recipients toward today's cap; return 0, or the seconds until it resets."""


class RedisQuotas:
    """Quotas shared by every web process through Redis (two short Lua scripts)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._prefix = prefix + "quota:"
        self._request = client.register_script(_REQUEST_LUA)
        self._recipients = client.register_script(_RECIPIENTS_LUA)

    def take_request(self, key_id: int, quota: Quota) -> float:
        interval = 1_000_000 / quota.rate_per_second
        tolerance = interval * max(0, quota.burst - 1)
        wait_us = self._request(
            keys=[f"{self._prefix}{key_id}:tat"], args=[int(interval), int(tolerance)]
        )
        return int(wait_us) / 1_000_000

    def take_recipients(self, key_id: int, count: int, quota: Quota) -> float:
        wait = self._recipients(
            keys=[f"{self._prefix}{key_id}:rcpt:"], args=[count, quota.recipients_per_day]
        )
        return float(wait)


class MemoryQuotas:
    """The same quotas inside one process (the demo has no Redis)."""

    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tat: dict[int, float] = {}
        self._days: dict[int, tuple[int, int]] = {}

    def take_request(self, key_id: int, quota: Quota) -> float:
        interval = 1 / quota.rate_per_second
        tolerance = interval * max(0, quota.burst - 1)
        with self._lock:
            now = self._clock()
            tat = max(self._tat.get(key_id, now), now)
            wait = tat - now - tolerance
            if wait > 0:
                return wait
            self._tat[key_id] = tat + interval
            return 0.0

    def take_recipients(self, key_id: int, count: int, quota: Quota) -> float:
        with self._lock:
            now = self._clock()
            day = int(now // DAY_SECONDS)
            seen_day, used = self._days.get(key_id, (day, 0))
            used = used if seen_day == day else 0
            if used + count > quota.recipients_per_day:
                return max(1.0, (day + 1) * DAY_SECONDS - now)
            self._days[key_id] = (day, used + count)
            return 0.0


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
