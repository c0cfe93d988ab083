"""Housekeeping: expire jobs too old to send; requeue failed ones; purge old jobs and events."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.orm import Session

from massmailer.jobstore.core import Dispatch, attempts_table, jobs, redispatch
from massmailer.jobstore.events import event, events, update_logging
from massmailer.models import EventType, Status

FINAL_STATUSES = (Status.SENT, Status.FAILED, Status.CANCELLED)
EXPIRED = "expired"
# A claim that lapsed this long ago has no process left to report a 250 for it (a live one
# renews its lease or flushes within seconds), so expiring the job cannot hide a send.
LAPSED_CLAIM_MARGIN = timedelta(minutes=5)
EXPIRE_BATCH = 5000
_EXPIRED_EVENT = event(EventType.FAILED.value, detail=EXPIRED)
PURGE_EVENTS_BATCH = 10_000


# Fold each (batch_id, status)'s appended changes into one row, dropping counts that reached 0.
# Rows appended after this statement's snapshot are left for the next run.
_COMPACT_JOB_COUNTS = text(
    """
    WITH folded AS (
      DELETE FROM job_counts c
      USING (
        SELECT batch_id, status FROM job_counts
        GROUP BY batch_id, status HAVING count(*) > 1 OR sum(n) = 0
      ) g
      WHERE c.batch_id IS NOT DISTINCT FROM g.batch_id AND c.status = g.status
      RETURNING c.batch_id, c.status, c.n
    )
    INSERT INTO job_counts (batch_id, status, n)
    SELECT batch_id, status, sum(n) FROM folded
    GROUP BY batch_id, status HAVING sum(n) <> 0
    """
)


def housekeep(
    session: Session,
    now: datetime,
    max_age: timedelta,
    event_retention: timedelta | None = None,
) -> int:
    """Each sweep's upkeep: expire overdue jobs, fold job_counts, drop events past retention.

    Return how many jobs expired.
    """
    expired = expire_overdue(session, now, max_age)
    compact_job_counts(session)
    if event_retention is not None:
        purge_events(session, now - event_retention)
    return expired


def purge_events(session: Session, before: datetime, limit: int = PURGE_EVENTS_BATCH) -> int:
    """Delete events older than `before`, up to limit per statement, until none is left.

    Return how many. Goes by the index on `at`; each batch commits, so no long transaction.
    """
    total = 0
    while True:
        picked = select(events.c.id).where(events.c.at < before).limit(limit)
        result = session.execute(events.delete().where(events.c.id.in_(picked.scalar_subquery())))
        session.commit()
        total += result.rowcount
        if result.rowcount < limit:
            return total


def compact_job_counts(session: Session) -> None:
    """Fold the rows the job_counts triggers appended (PostgreSQL only; see models/job_counts)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    session.execute(_COMPACT_JOB_COUNTS)
    session.commit()


def expire_overdue(session: Session, now: datetime, max_age: timedelta) -> int:
    """Fail PENDING jobs not sent within max_age of when they were due; return how many.

    A job is due when accepted, or at its send_at if that is later; every wait after that counts
    (retries, and uncharged waits for capacity alike), as an MTA's queue lifetime does. A job
    under a live claim is being sent and is left alone. One guarded UPDATE per batch of rows.
    """
    cutoff = now - max_age
    overdue = and_(
        jobs.c.status == Status.PENDING,
        jobs.c.created_at < cutoff,
        or_(jobs.c.send_at.is_(None), jobs.c.send_at < cutoff),
        or_(jobs.c.claim_token.is_(None), jobs.c.lease_until < now - LAPSED_CLAIM_MARGIN),
    )
    total = 0
    while True:
        picked = select(jobs.c.job_id).where(overdue).limit(EXPIRE_BATCH)
        if session.get_bind().dialect.name == "postgresql":
            picked = picked.with_for_update(skip_locked=True)
        stmt = (
            update(jobs)
            .where(jobs.c.job_id.in_(picked.scalar_subquery()), overdue)
            .values(
                status=Status.FAILED,
                last_error=EXPIRED,
                claim_token=None,
                lease_until=None,
                updated_at=now,
            )
        )
        n = len(update_logging(session, stmt, _EXPIRED_EVENT, [jobs.c.job_id]))
        session.commit()
        total += n
        if n < EXPIRE_BATCH:
            return total


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
    """Delete up to limit final jobs last changed before `before`, with attempts and events."""
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
    session.execute(events.delete().where(events.c.job_id.in_(ids)))
    result = session.execute(
        jobs.delete().where(jobs.c.job_id.in_(ids), jobs.c.status.in_(FINAL_STATUSES))
    )
    session.commit()
    return result.rowcount
