"""How many sender threads may send at once: as many as help, judged by how fast replies come.

A sender thread mostly waits for a provider's reply, so a process keeps many of them
(MASSMAILER_SENDER_THREADS) to cover distant providers. Against a near provider the waits are
short and the threads wait for each other instead: every system call hands the GIL to another
thread, at the cost of a futex and a context switch each. Against the bench's local sinks, 16
threads a process delivered 4,986-5,110 emails/s at 248-258 µs of worker CPU an email, 64 threads
4,597-4,775/s at 270-285 µs; at a 20 ms round trip, 24 threads cut 2,688/s to 1,681/s.

So the limit follows the queueing the threads cause, as TCP Vegas and Netflix's concurrency-limits
do. Each pipelined stream of at least MIN_STREAM messages reports its seconds per message. Against
the provider's best pace of the last minute, a ratio near 1 means the threads wait for the network,
and more of them may help; a ratio well above 1 means they wait for each other. Every
INTERVAL_SECONDS the limit grows by STEP while the ratio is below GROW_BELOW, and loses a fifth
while it is above SHRINK_ABOVE, between the floor and the ceiling. The ratio taken is the lowest
among the providers heard from: a provider's own slowness shows in its ratio alone, the process's
contention in every provider's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_STREAM = 4  # shorter streams say little: two replies can come in one read
INTERVAL_SECONDS = 0.1
GROW_BELOW = 1.5
SHRINK_ABOVE = 2.0
STEP = 4
SHRINK = 0.8
BEST_WINDOW_SECONDS = 60.0


class _RecentBest:
    """The lowest value noted in the last half window to whole window (two halves, rotated)."""

    def __init__(self, window: float, now: float) -> None:
        self._half = window / 2
        self._rotated_at = now
        self._current = self._previous = float("inf")

    def note(self, value: float, now: float) -> float:
        elapsed = now - self._rotated_at
        if elapsed >= self._half:
            recent = self._current if elapsed < 2 * self._half else float("inf")
            self._previous, self._current = recent, float("inf")
            self._rotated_at = now
        self._current = min(self._current, value)
        return min(self._current, self._previous)


class ThreadLimit:
    """The number of sender threads that may run at once, adjusted from the streams' pace."""

    def __init__(
        self, ceiling: int, floor: int, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ceiling = ceiling
        self.floor = max(1, min(floor, ceiling))
        self.limit = ceiling
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._best: dict[str, _RecentBest] = {}
        self._ratios: dict[str, tuple[float, int]] = {}  # this interval's sum and count
        self._next_adjust = monotonic() + INTERVAL_SECONDS

    def note_stream(self, provider: str, messages: int, seconds: float) -> int | None:
        """Note a stream of `messages` replies that took `seconds` from the first to the last.

        Return the new limit when this note changed it, else None.
        """
        if messages < MIN_STREAM:
            return None
        pace = seconds / (messages - 1)
        now = self._monotonic()
        with self._lock:
            best = self._best.get(provider)
            if best is None:
                best = self._best[provider] = _RecentBest(BEST_WINDOW_SECONDS, now)
            ratio = pace / max(best.note(pace, now), 1e-6)
            total, count = self._ratios.get(provider, (0.0, 0))
            self._ratios[provider] = (total + ratio, count + 1)
            if now < self._next_adjust:
                return None
            self._next_adjust = now + INTERVAL_SECONDS
            queueing = min(total / count for total, count in self._ratios.values())
            self._ratios = {}
            limit = self._adjusted(queueing)
            if limit == self.limit:
                return None
            self.limit = limit
            return limit

    def _adjusted(self, queueing: float) -> int:
        if queueing < GROW_BELOW:
            return min(self.ceiling, self.limit + STEP)
        if queueing > SHRINK_ABOVE:
            return max(self.floor, int(self.limit * SHRINK))
        return self.limit
