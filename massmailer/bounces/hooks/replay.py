"""Remember what a provider signed once (Mailgun tokens, SendGrid signatures) for a while.

A signature over a timestamp stays valid for as long as the timestamp is accepted; within
that window the same signed value seen twice is a replay. Redis holds what was seen so every
web process agrees; without Redis (the embedded demo) the process remembers.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Protocol

import redis


class SeenOnce(Protocol):
    def first_time(self, value: str, ttl_seconds: int) -> bool: ...


class RedisSeenOnce:
    """SET NX with a TTL: true the first time a value is offered within the TTL."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix + "hook-seen:"

    def first_time(self, value: str, ttl_seconds: int) -> bool:
        key = self._prefix + hashlib.sha256(value.encode()).hexdigest()
        return bool(self._client.set(key, b"1", nx=True, ex=ttl_seconds))


class MemorySeenOnce:
    """The same within one process."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, value: str, ttl_seconds: int) -> bool:
        now = time.monotonic()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if t > now}
            if value in self._seen:
                return False
            self._seen[value] = now + ttl_seconds
            return True
