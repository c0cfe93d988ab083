"""Hand committed jobs to the queue in chunks of one priority, then stamp what was confirmed."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Protocol

from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.jobstore import Dispatch
from massmailer.models.types import utcnow

logger = logging.getLogger(__name__)


class PublishError(Exception):
    """The queue did not take a chunk (broker down, unroutable, not confirmed)."""


class Publisher(Protocol):
    def publish(self, job_ids: list[int], priority: int, delay_seconds: int = 0) -> None:
        """Queue one chunk; return only once the queue holds it, else raise PublishError."""


# A chunk is sent by one worker slot, one message after another. Against distant providers a
# few big chunks would leave most slots idle (bench/README.md: 2,000 emails in chunks of 200 ran
# 2.4x slower than in chunks of 20 on 32 threads), so a group is cut into at least SPREAD chunks
# while that keeps them at MIN_CHUNK or more; large groups still get chunks of `size`, which
# amortise the claim and the outcome writes best.
SPREAD = 32
MIN_CHUNK = 10


def chunk_length(count: int, size: int) -> int:
    """The chunk length for a group of count jobs, at most size."""
    return max(1, min(size, max(MIN_CHUNK, -(-count // SPREAD))))


def chunks(dispatches: Sequence[Dispatch], size: int) -> Iterator[list[Dispatch]]:
    """Split into chunks of at most size jobs, each of one priority, highest priority first."""
    ordered = sorted(dispatches, key=lambda d: (-d.priority, d.job_id))
    for _, same_priority in groupby(ordered, key=lambda d: d.priority):
        group = list(same_priority)
        length = chunk_length(len(group), size)
        for start in range(0, len(group), length):
            yield group[start : start + length]


def dispatch(
    session: Session,
    publisher: Publisher,
    dispatches: Sequence[Dispatch],
    *,
    chunk_size: int,
    delay_seconds: int = 0,
) -> int:
    """Publish the jobs; return how many the queue confirmed. The rest wait for the sweeper."""
    confirmed: list[Dispatch] = []
    for chunk in chunks(dispatches, chunk_size):
        ids = [d.job_id for d in chunk]
        try:
            publisher.publish(ids, chunk[0].priority, delay_seconds)
        except PublishError as exc:
            # The rows are committed, so nothing is lost: the sweeper publishes them later.
            logger.warning(
                "event=publish_failed jobs=%d first_job_id=%d error=%r", len(ids), ids[0], str(exc)
            )
            continue
        confirmed.extend(chunk)
    if confirmed:
        jobstore.stamp_enqueued(session, confirmed, utcnow())
    return len(confirmed)
