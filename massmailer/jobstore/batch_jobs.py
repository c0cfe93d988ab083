"""A batch's jobs: progress counts, cancel, and cancelling jobs that come back after a cancel."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from massmailer.jobstore.core import BATCH_CANCELLED, jobs
from massmailer.jobstore.events import update_logging
from massmailer.jobstore.guards import still_pending
from massmailer.models import Batch, Status


@dataclass(frozen=True)
class BatchStats:
    counts: dict[str, int]  # every status present
    in_flight: int  # PENDING under a live claim: being sent right now
    sent_last_minute: int
    first_sent_at: datetime | None
    last_sent_at: datetime | None


def batch_stats(session: Session, batch_id: int, now: datetime) -> BatchStats:
    """Count a batch's jobs by status in one pass, with what the send rate needs."""
    live = and_(jobs.c.claim_token.is_not(None), jobs.c.lease_until >= now)
    recent = jobs.c.sent_at >= now - timedelta(minutes=1)
    stmt = (
        select(
            jobs.c.status,
            func.count(),
            func.sum(case((live, 1), else_=0)),
            func.sum(case((recent, 1), else_=0)),
            func.min(jobs.c.sent_at),
            func.max(jobs.c.sent_at),
        )
        .where(jobs.c.batch_id == batch_id)
        .group_by(jobs.c.status)
    )
    counts = {str(s): 0 for s in Status}
    in_flight = sent_recent = 0
    first = last = None
    for status, n, n_live, n_recent, first_sent, last_sent in session.execute(stmt):
        counts[status] = n
        in_flight += n_live or 0
        if status == Status.SENT:
            sent_recent, first, last = n_recent or 0, first_sent, last_sent
    return BatchStats(counts, in_flight, sent_recent, first, last)


def cancel_batch(session: Session, batch_id: int, now: datetime) -> tuple[int, int]:
    """Cancel the batch's PENDING jobs nobody holds; return (cancelled, in flight). No commit.

    In flight are the jobs still PENDING after the guarded UPDATE: claimed under a live lease
    when it ran. They may still be sent; nothing else of the batch will be.
    """
    stmt = (
        update(jobs)
        .where(
            jobs.c.batch_id == batch_id,
            jobs.c.status == Status.PENDING,
            or_(jobs.c.claim_token.is_(None), jobs.c.lease_until < now),
        )
        .values(status=Status.CANCELLED, updated_at=now, last_error="cancelled")
    )
    cancelled = update_logging(session, stmt, BATCH_CANCELLED, [jobs.c.job_id])
    in_flight = session.scalar(
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.batch_id == batch_id, jobs.c.status == Status.PENDING)
    )
    return len(cancelled), in_flight or 0


def cancel_if_batch_cancelled(session: Session, job_ids: Sequence[int], now: datetime) -> set[int]:
    """Cancel those of job_ids (unclaimed, PENDING) whose batch was cancelled; return them.

    Jobs in flight when their batch was cancelled may finish sending, but one that comes back for
    a retry must not go out later: this catches it before it is dispatched again. No commit.
    """
    if not job_ids:
        return set()
    batches = Batch.__table__
    cancelled_batches = select(batches.c.id).where(batches.c.cancelled_at.is_not(None))
    stmt = (
        update(jobs)
        .where(
            jobs.c.job_id.in_(list(job_ids)),
            still_pending(),
            jobs.c.claim_token.is_(None),
            jobs.c.batch_id.in_(cancelled_batches.scalar_subquery()),
        )
        .values(status=Status.CANCELLED, updated_at=now, last_error="cancelled")
    )
    rows = update_logging(session, stmt, BATCH_CANCELLED, [jobs.c.job_id])
    return {row[0] for row in rows}
