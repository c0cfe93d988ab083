"""A batch's publish, confirmed by one mark on the batch row instead of a stamp on every job.

A marked batch's jobs are copied already stamped as enqueued, so the sweep leaves them alone, and
`batches.unconfirmed_since` stands for the publish until the intake clears it (migration 0008).
A mark left past the grace means the request died between its commit and its confirms: the sweep
unstamps the batch's jobs that were never tried, and then publishes them as any unconfirmed job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import ColumnElement, Update, select, update
from sqlalchemy.orm import Session

from massmailer.jobstore.dbclock import db_shifted, dialect_name
from massmailer.models import Batch, EmailJob, Status

jobs = EmailJob.__table__
batches = Batch.__table__


def _untried(*where: ColumnElement[bool]) -> Update:
    """Unstamp the jobs matching where that nobody holds and nothing has dispatched again."""
    return (
        update(jobs)
        .where(
            *where,
            jobs.c.status == Status.PENDING,
            jobs.c.claim_token.is_(None),
            jobs.c.attempts == 0,
            jobs.c.dispatch_seq == 0,
        )
        .values(enqueued_at=None)
    )


def confirm_batch(session: Session, batch_id: int, unconfirmed_job_ids: Sequence[int]) -> None:
    """Clear the batch's mark; unstamp the jobs whose publish was not confirmed. Commits."""
    if unconfirmed_job_ids:
        session.execute(_untried(jobs.c.job_id.in_(unconfirmed_job_ids)))
    session.execute(update(batches).where(batches.c.id == batch_id).values(unconfirmed_since=None))
    session.commit()


def unmark_lapsed(session: Session, grace: timedelta) -> int:
    """Unstamp the untried jobs of batches marked longer than grace ago (database time), clear
    their marks; return how many batches. Commits."""
    lapsed_before = db_shifted(dialect_name(session), -grace.total_seconds())
    lapsed = list(
        session.scalars(
            select(batches.c.id)
            .where(batches.c.unconfirmed_since < lapsed_before)
            .with_for_update(skip_locked=True)
        )
    )
    if lapsed:
        session.execute(_untried(jobs.c.batch_id.in_(lapsed)))
        session.execute(
            update(batches).where(batches.c.id.in_(lapsed)).values(unconfirmed_since=None)
        )
    session.commit()
    return len(lapsed)
