"""Hand committed jobs to the queue in chunks of one priority, then stamp what was confirmed."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import groupby
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError
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

    def publish_many(
        self, chunks: Sequence[tuple[list[int], int]], delay_seconds: int = 0
    ) -> list[bool]:
        """Queue (job_ids, priority) chunks together; return whether the queue holds each."""


# A chunk's messages are sent at once by its process's sender threads, so a chunk of a few dozen
# keeps many SMTP sessions busy; a group is still cut into at least SPREAD chunks (while that keeps
# them at MIN_CHUNK or more) so that a batch reaches every worker slot of a small fleet. Large
# groups get chunks of `size`, which amortise the claim and the outcome writes best.
SPREAD = 8
MIN_CHUNK = 25


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
    confirmed, _ = _publish(publisher, dispatches, chunk_size, delay_seconds)
    if confirmed:
        _stamp(session, confirmed)
    return len(confirmed)


def dispatch_marked(
    session: Session,
    publisher: Publisher,
    dispatches: Sequence[Dispatch],
    *,
    chunk_size: int,
    batch_id: int,
) -> int:
    """Publish a marked batch's jobs (stamped at COPY); unstamp the unconfirmed ones, clear the
    mark. Return how many the queue confirmed.

    If the database fails here the mark stays, and the sweep unstamps the batch's waiting jobs
    after the grace: some may then be published twice, and their claim sends each once.
    """
    confirmed, failed = _publish(publisher, dispatches, chunk_size, 0)
    try:
        jobstore.confirm_batch(session, batch_id, [d.job_id for d in failed])
    except SQLAlchemyError as exc:
        logger.warning("event=mark_failed batch_id=%d error=%s", batch_id, type(exc).__name__)
        session.rollback()
    return len(confirmed)


def _publish(
    publisher: Publisher, dispatches: Sequence[Dispatch], chunk_size: int, delay_seconds: int
) -> tuple[list[Dispatch], list[Dispatch]]:
    """Publish in chunks; return the dispatches the queue confirmed and those it did not.

    The rows are committed, so what the queue did not take is not lost: the sweeper publishes it
    later.
    """
    cut = list(chunks(dispatches, chunk_size))
    if len(cut) > 1:  # their confirms awaited together: one round trip, not one per chunk
        held = publisher.publish_many(
            [([d.job_id for d in chunk], chunk[0].priority) for chunk in cut], delay_seconds
        )
    else:  # one chunk, or none: nothing to await together, and no channel opened for nothing
        held = [_publish_one(publisher, chunk, delay_seconds) for chunk in cut]
    confirmed: list[Dispatch] = []
    failed: list[Dispatch] = []
    for chunk, ok in zip(cut, held, strict=True):
        (confirmed if ok else failed).extend(chunk)
    if failed and len(cut) > 1:
        logger.warning(
            "event=publish_failed jobs=%d first_job_id=%d error=not_confirmed",
            len(failed),
            failed[0].job_id,
        )
    return confirmed, failed


def _publish_one(publisher: Publisher, chunk: list[Dispatch], delay_seconds: int) -> bool:
    ids = [d.job_id for d in chunk]
    try:
        publisher.publish(ids, chunk[0].priority, delay_seconds)
    except PublishError as exc:
        logger.warning(
            "event=publish_failed jobs=%d first_job_id=%d error=%r", len(ids), ids[0], str(exc)
        )
        return False
    return True


def _stamp(session: Session, confirmed: list[Dispatch]) -> None:
    """Stamp confirmed publishes; if the database fails here, the jobs only lack the stamp.

    An unstamped job is re-published by the sweeper after the grace period; its claim keeps the
    second message from sending anything twice. Raising instead would turn a job the queue holds
    into an error for the caller (the API would answer 5xx for a committed job).
    """
    try:
        jobstore.stamp_enqueued(session, confirmed, utcnow())
    except SQLAlchemyError as exc:
        logger.warning(
            "event=stamp_failed jobs=%d first_job_id=%d error=%s",
            len(confirmed),
            confirmed[0].job_id,
            type(exc).__name__,
        )
        session.rollback()
