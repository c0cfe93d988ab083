"""Operator actions on email_jobs: requeue failed jobs, purge old final ones."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from massmailer.jobstore.core import Dispatch, attempts_table, jobs, redispatch
from massmailer.models import Status

FINAL_STATUSES = (Status.SENT, Status.FAILED, Status.CANCELLED)


def requeue_failed(
    session: Session,
    now: datetime,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch_id: int | None = None,
    limit: int = 5000,
) -> list[Dispatch]:
    """Move up to limit FAILED jobs back to PENDING with attempts reset; return them to dispatch.

    `since`/`until` bound when they failed (updated_at). The status guard makes a second run a
    no-op: a moved job is PENDING, and its updated_at (now) lies past the `until` of the first run.
    """
    conditions = [jobs.c.status == Status.FAILED]
    if since is not None:
        conditions.append(jobs.c.updated_at >= since)
    if until is not None:
        conditions.append(jobs.c.updated_at < until)
    if batch_id is not None:
        conditions.append(jobs.c.batch_id == batch_id)
    picked = select(jobs.c.job_id).where(*conditions).order_by(jobs.c.job_id).limit(limit)
    return redispatch(
        session, picked, jobs.c.status == Status.FAILED, now=now,
        status=Status.PENDING,
        attempts=0,
        last_error=None,
        provider=None,
        failed_provider=None,
        next_attempt_at=None,
    )  # fmt: skip


def purge_final(session: Session, before: datetime, limit: int = 5000) -> int:
    """Delete up to limit final jobs last changed before `before`, with their attempts."""
    picked = (
        select(jobs.c.job_id)
        .where(jobs.c.status.in_(FINAL_STATUSES), jobs.c.updated_at < before)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Locked until the commit, so a concurrent requeue cannot revive a job being deleted.
        picked = picked.with_for_update(skip_locked=True)
    ids = list(session.scalars(picked))
    if not ids:
        session.rollback()
        return 0
    session.execute(attempts_table.delete().where(attempts_table.c.job_id.in_(ids)))
    result = session.execute(
        jobs.delete().where(jobs.c.job_id.in_(ids), jobs.c.status.in_(FINAL_STATUSES))
    )
    session.commit()
    return result.rowcount
