"""Reports that arrive after the provider's 250: a bounce fails a SENT job; every report that
names a job leaves an event (bounced, complained, deferred) in the same transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from massmailer.jobstore.core import jobs
from massmailer.jobstore.dbclock import db_now, dialect_name
from massmailer.jobstore.events import event, events, update_logging
from massmailer.models import EventType, Status
from massmailer.models.events import DETAIL_CHARS, ENHANCED_CHARS

BOUNCED_PREFIX = "bounced: "


def fail_bounced(
    session: Session, job_id: int, status: str | None, reason: str, now: datetime
) -> bool:
    """Fail a SENT job with last_error "bounced: <reason>" and log `bounced`; no commit.

    A job in any other state is left alone and nothing is logged.
    """
    stmt = (
        update(jobs)
        .where(jobs.c.job_id == job_id, jobs.c.status == Status.SENT)
        .values(status=Status.FAILED, last_error=(BOUNCED_PREFIX + reason)[:1000], updated_at=now)
    )
    logged = event(EventType.BOUNCED.value, enhanced_code=status, detail=reason)
    return bool(update_logging(session, stmt, logged, returning=[jobs.c.job_id]))


def log_report(
    session: Session, job_id: int, type_: EventType, status: str | None, detail: str | None
) -> None:
    """Log a report that changes no job state (a complaint, a delay) on its job; no commit."""
    session.execute(
        insert(events).values(
            job_id=job_id,
            type=type_.value,
            enhanced_code=(status or None) and status[:ENHANCED_CHARS],
            detail=(detail or None) and detail[:DETAIL_CHARS],
            at=db_now(dialect_name(session)),
        )
    )
