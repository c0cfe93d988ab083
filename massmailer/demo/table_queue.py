"""The job table as the queue: due, unclaimed PENDING jobs by priority, then age.

An in-memory broker keeps no priority order (design.md, "Facts checked"), and the rows are durable
already, so in the embedded demo the table is the queue and publishing only wakes the workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from massmailer.jobstore import claimable, jobs
from massmailer.models.types import utcnow


def due_jobs(session: Session, now: datetime, limit: int) -> list[tuple[int, int]]:
    """Select (job id, priority) of due PENDING jobs nobody holds, highest priority, then oldest."""
    stmt = (
        select(jobs.c.job_id, jobs.c.priority)
        .where(claimable(now, now))
        .order_by(jobs.c.priority.desc(), jobs.c.job_id)
        .limit(limit)
    )
    return [(job_id, priority) for job_id, priority in session.execute(stmt)]


class TableQueue:
    """Hand out chunks of due job ids to a few worker threads, each id to one thread at a time."""

    def __init__(self, chunk_size: int, clock: Callable[[], datetime] = utcnow) -> None:
        self._chunk_size = chunk_size
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition()
        self._in_flight: set[int] = set()

    def take(self, session: Session) -> list[int]:
        """Return the next due job ids, all of one priority (maybe none); mark them in flight."""
        # The lock keeps two threads from selecting the same rows between select and claim; the
        # claim would stop a double send anyway, but the loser would have wasted its turn.
        with self._lock:
            limit = self._chunk_size + len(self._in_flight)
            candidates = due_jobs(session, self._clock(), limit)
            session.commit()  # end the read, so no snapshot is held while the chunk is sent
            free = [(i, p) for i, p in candidates if i not in self._in_flight]
            if not free:
                return []
            # One priority per chunk, as dispatch publishes them, so urgent mail never waits
            # behind backlog that happened to share its chunk.
            top = free[0][1]
            chunk = [i for i, p in free[: self._chunk_size] if p == top]
            self._in_flight.update(chunk)
            return chunk

    def done(self, job_ids: Sequence[int]) -> None:
        """Forget a chunk handed out by take(): its jobs are claimed and recorded, or given back."""
        with self._lock:
            self._in_flight.difference_update(job_ids)

    def wake(self) -> None:
        """Tell idle workers that new jobs may be due."""
        with self._work:
            self._work.notify_all()

    def wait(self, timeout: float) -> None:
        """Sleep until wake() or timeout (retries fall due without anyone waking us)."""
        with self._work:
            self._work.wait(timeout)


class TablePublisher:
    """The demo's Publisher: the committed row already is the queue entry, so it only wakes."""

    def __init__(self, queue: TableQueue) -> None:
        self._queue = queue

    def publish(self, job_ids: list[int], priority: int, delay_seconds: int = 0) -> None:
        """'Confirm' at once: the job rows are durable; a delayed one waits on next_attempt_at."""
        self._queue.wake()

    def publish_many(
        self, chunks: Sequence[tuple[list[int], int]], delay_seconds: int = 0
    ) -> list[bool]:
        """'Confirm' them all at once, as publish() does one."""
        self._queue.wake()
        return [True] * len(chunks)
