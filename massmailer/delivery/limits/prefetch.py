"""Slots of a fast rate schedule taken a few at a time, so a send at 1,000/s+ skips Redis.

A reservation costs a Redis round trip per send. At a provider rate of thousands a second that is
a large share of a worker's work, and one call could as well take the next few slots: they are
only milliseconds apart. A process keeps them here and hands them out to its sender threads.

The bounds that keep the schedule honest: a batch covers at most `BATCH_SECONDS` of the rate (so
slow schedules, such as 25/s, are reserved one by one as before); a slot handed out is used as any
reservation is; a slot not handed out within `STALE_SECONDS` after its time lapses unused, so a
process that stalls never spends an old slot late (unused slots only leave the rate unused).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from massmailer.delivery.providers.base import ProviderConfig

BATCH_SECONDS = 0.005
# Binds only above 12,800/s (BATCH_SECONDS binds below). At 16 a call, the reservations of the
# bench's sinks (100,000/s, never the bound) were 6 % of the workers' GIL samples, a third of it
# threads queueing for the one refilling.
MAX_BATCH = 64
STALE_SECONDS = 0.02

_EMPTY = -1.0  # no spare slot left: reserve in the store

ReserveMany = Callable[[ProviderConfig, float, int], list[float]]


def batch_size(rate_per_second: float | None) -> int:
    """How many slots one reservation takes at this rate (1: one by one)."""
    if not rate_per_second:
        return 1
    return max(1, min(MAX_BATCH, math.floor(rate_per_second * BATCH_SECONDS)))


class SlotBuffer:
    """Per-process spare slots by provider, refilled by one `reserve_many` call when empty."""

    def __init__(
        self, reserve_many: ReserveMany, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._reserve_many = reserve_many
        self._clock = clock
        self._lock = threading.Lock()
        self._refilling: dict[str, threading.Lock] = {}
        self._slots: dict[str, deque[float]] = {}  # slot times on self._clock

    def reserve(self, provider: ProviderConfig, horizon_seconds: float) -> float | None:
        """Seconds until a slot of this process's (0.0: now), or None when none is within reach."""
        wait = self._take(provider.name, horizon_seconds)
        if wait is not _EMPTY:
            return wait
        # One thread refills while the others of this provider wait for it, rather than each
        # making its own call: that call is what the buffer saves.
        with self._refill_lock(provider.name):
            wait = self._take(provider.name, horizon_seconds)
            if wait is not _EMPTY:
                return wait
            size = batch_size(provider.rate_per_second)
            waits = self._reserve_many(provider, horizon_seconds, size)
            if not waits:
                return None
            now = self._clock()
            with self._lock:
                self._slots.setdefault(provider.name, deque()).extend(now + w for w in waits[1:])
            return waits[0]

    def _take(self, name: str, horizon_seconds: float) -> float | None:
        """The wait until the next spare slot; None if it lies beyond the horizon; else _EMPTY."""
        now = self._clock()
        with self._lock:
            slots = self._slots.get(name)
            while slots and slots[0] < now - STALE_SECONDS:
                slots.popleft()
            if not slots:
                return _EMPTY
            if slots[0] - now > horizon_seconds:
                # Kept for a caller that may wait longer; a new reservation would lie further.
                return None
            return max(0.0, slots.popleft() - now)

    def _refill_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._refilling.setdefault(name, threading.Lock())
