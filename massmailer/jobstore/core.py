"""Every state change of email_jobs: one guarded statement each (compare-and-set).

Never read a row, decide in Python, then write it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session

from massmailer.models import EmailAttempt, EmailJob, Status

jobs = EmailJob.__table__
attempts_table = EmailAttempt.__table__

# A delay-tier message can reach a worker a little before next_attempt_at on a host whose clock runs
# behind; a small tolerance keeps such a message from being skipped and the job stranded.
CLOCK_TOLERANCE = timedelta(seconds=2)


@dataclass(frozen=True)
class ClaimedJob:
    job_id: int
    recipient: str
    recipient_name: str | None
    sender: str
    sender_name: str | None
    subject: str
    body: str
    html: str | None
    headers: list | None
    priority: int
    attempts: int
    message_id: str
    failed_provider: str | None
    dispatch_seq: int
    category: str
    created_at: datetime | None = None  # when the API accepted it (accept-to-sent latency)
    batch_id: int | None = None  # a batch job renders the batch's template at send time
    template_vars: dict | None = None


@dataclass(frozen=True)
class Dispatch:
    """A job handed to the broker: the seq guards the enqueued stamp against a newer dispatch."""

    job_id: int
    priority: int
    seq: int


_CLAIM_COLUMNS = [jobs.c[name] for name in ClaimedJob.__dataclass_fields__]


def claimable(now: datetime, due: datetime) -> ColumnElement[bool]:
    """PENDING, held by nobody (or by a lapsed lease), and due by `due`."""
    return and_(
        jobs.c.status == Status.PENDING,
        or_(jobs.c.claim_token.is_(None), jobs.c.lease_until < now),
        or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= due),
        or_(jobs.c.send_at.is_(None), jobs.c.send_at <= due),
    )


def claim(
    session: Session, job_ids: Sequence[int], token: str, now: datetime, lease: timedelta
) -> list[ClaimedJob]:
    """Take the due, unclaimed PENDING jobs among job_ids under token; return only those taken."""
    stmt = (
        update(jobs)
        .where(jobs.c.job_id.in_(list(job_ids)), claimable(now, now + CLOCK_TOLERANCE))
        .values(claim_token=token, lease_until=now + lease, updated_at=now)
        .returning(*_CLAIM_COLUMNS)
    )
    rows = session.execute(stmt).all()
    session.commit()
    return sorted((ClaimedJob(*row) for row in rows), key=lambda j: j.job_id)


def _write_held(
    session: Session, token: str, rows: list[dict], now: datetime, **values: object
) -> None:
    """Apply values to each row's job still held under token, and end the claim."""
    if not rows:
        return
    held = and_(
        jobs.c.job_id == bindparam("b_job_id"),
        jobs.c.claim_token == token,
        jobs.c.status == Status.PENDING,
    )
    stmt = (
        update(jobs)
        .where(held)
        .values(**values, updated_at=now, claim_token=None, lease_until=None)
    )
    session.execute(stmt, rows)


# Handing a job back to the broker: a new dispatch, not yet confirmed.
_REDISPATCH = {"dispatch_seq": jobs.c.dispatch_seq + 1, "enqueued_at": None}


def mark_sent(session: Session, token: str, rows: list[dict], now: datetime) -> None:
    """rows: b_job_id, b_provider, b_queue_id, b_reply, b_charged (tries, with failovers)."""
    _write_held(
        session, token, rows, now,
        status=Status.SENT,
        provider=bindparam("b_provider"),
        provider_queue_id=bindparam("b_queue_id"),
        provider_reply=bindparam("b_reply"),
        attempts=jobs.c.attempts + bindparam("b_charged"),
        sent_at=now,
        last_error=None,
    )  # fmt: skip


def mark_failed(session: Session, token: str, rows: list[dict], now: datetime) -> None:
    """rows: b_job_id, b_provider, b_error, b_charged (1 when a provider was tried)."""
    _write_held(
        session, token, rows, now,
        status=Status.FAILED,
        provider=bindparam("b_provider"),
        last_error=bindparam("b_error"),
        attempts=jobs.c.attempts + bindparam("b_charged"),
    )  # fmt: skip


def mark_retry(session: Session, token: str, rows: list[dict], now: datetime) -> None:
    """rows: b_job_id, b_error, b_charged, b_next_attempt_at, b_failed_provider."""
    _write_held(
        session, token, rows, now,
        last_error=bindparam("b_error"),
        attempts=jobs.c.attempts + bindparam("b_charged"),
        next_attempt_at=bindparam("b_next_attempt_at"),
        failed_provider=bindparam("b_failed_provider"),
        **_REDISPATCH,
    )  # fmt: skip


def release(session: Session, token: str, job_ids: Iterable[int], now: datetime) -> None:
    """Give back claimed jobs that were not tried, so they are dispatched again."""
    _write_held(session, token, [{"b_job_id": i} for i in job_ids], now, **_REDISPATCH)


def record_attempts(session: Session, rows: list[dict]) -> None:
    """Insert one email_attempts row per try."""
    if rows:
        session.execute(insert(attempts_table), rows)


def stamp_enqueued(session: Session, dispatches: Sequence[Dispatch], now: datetime) -> None:
    """Mark jobs whose publish the broker confirmed, unless they were dispatched again since."""
    by_seq: dict[int, list[int]] = {}
    for d in dispatches:
        by_seq.setdefault(d.seq, []).append(d.job_id)
    for seq, ids in by_seq.items():
        session.execute(
            update(jobs)
            .where(
                jobs.c.job_id.in_(ids),
                jobs.c.dispatch_seq == seq,
                jobs.c.status == Status.PENDING,
            )
            .values(enqueued_at=now)
        )
    session.commit()


def cancel(session: Session, job_id: int, api_key_id: int | None, now: datetime) -> bool:
    """Cancel a PENDING job nobody holds; False when it is claimed or already final."""
    result = session.execute(
        update(jobs)
        .where(
            jobs.c.job_id == job_id,
            jobs.c.api_key_id == api_key_id,
            jobs.c.status == Status.PENDING,
            or_(jobs.c.claim_token.is_(None), jobs.c.lease_until < now),
        )
        .values(status=Status.CANCELLED, updated_at=now, last_error="cancelled")
    )
    session.commit()
    return result.rowcount == 1


def take_lost(session: Session, now: datetime, grace: timedelta, limit: int) -> list[Dispatch]:
    """Pick PENDING jobs the broker cannot be holding and bump their dispatch seq.

    That is: a publish never confirmed (no enqueued stamp) past the grace period, a scheduled job
    that fell due, or a claim whose lease expired. Jobs legitimately waiting in a queue carry an
    enqueued stamp and are left alone.
    """
    unconfirmed = and_(
        jobs.c.claim_token.is_(None),
        jobs.c.enqueued_at.is_(None),
        or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= now),
        or_(
            and_(jobs.c.send_at.is_(None), jobs.c.updated_at < now - grace),
            jobs.c.send_at <= now,
        ),
    )
    expired = and_(jobs.c.claim_token.is_not(None), jobs.c.lease_until < now)
    picked = (
        select(jobs.c.job_id)
        .where(jobs.c.status == Status.PENDING, or_(unconfirmed, expired))
        .order_by(jobs.c.priority.desc(), jobs.c.job_id)
        .limit(limit)
    )
    return redispatch(session, picked, jobs.c.status == Status.PENDING, now=now)


def redispatch(
    session: Session, picked: Select, guard: ColumnElement[bool], *, now: datetime, **values: object
) -> list[Dispatch]:
    """Hand the picked jobs (still matching guard) to the broker again; commit; return them.

    Any claim ends and the enqueued stamp is cleared, so if the new publish is not confirmed the
    sweeper finds the job again; `values` adds what else changes.
    """
    if session.get_bind().dialect.name == "postgresql":
        picked = picked.with_for_update(skip_locked=True)
    stmt = (
        update(jobs)
        .where(jobs.c.job_id.in_(picked.scalar_subquery()), guard)
        .values(**values, **_REDISPATCH, claim_token=None, lease_until=None, updated_at=now)
        .returning(jobs.c.job_id, jobs.c.priority, jobs.c.dispatch_seq)
    )
    rows = session.execute(stmt).all()
    session.commit()
    return [Dispatch(*row) for row in rows]


def count_by_status(session: Session) -> dict[str, int]:
    """Jobs per status, every status present."""
    counts = dict.fromkeys(Status, 0)
    for status, n in session.execute(select(jobs.c.status, func.count()).group_by(jobs.c.status)):
        counts[Status(status)] = n
    return {str(k): v for k, v in counts.items()}
