"""Every state change of email_jobs: one guarded statement each (compare-and-set).

Never read a row, decide in Python, then write it back.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from massmailer.jobstore.dbclock import db_now, db_shifted, dialect_name
from massmailer.jobstore.events import event, update_logging
from massmailer.jobstore.guards import still_pending
from massmailer.jobstore.outcome_writes import RELEASE, OutcomeRow, write_outcomes
from massmailer.models import Batch, EmailAttempt, EmailJob, EventType, Status

jobs = EmailJob.__table__
attempts_table = EmailAttempt.__table__
batches = Batch.__table__

# A delay-tier message can come back a moment before next_attempt_at (its TTL starts at the
# publish, the due time at the flush); a small tolerance spares such a job a detour via the sweeper.
CLOCK_TOLERANCE = timedelta(seconds=2)
# A lapsed claim stays untouchable this long: a live process that lost touch with the database
# (its lease ran down, it stopped starting sends) can still flush what it sent when the database
# answers, before the sweeper or another worker takes the job (a 250 always wins).
LEASE_GRACE_SECONDS = 15.0


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


def claimable(
    now: datetime | ColumnElement,
    due: datetime | ColumnElement,
    lapsed_before: datetime | ColumnElement | None = None,
    *,
    named_by_id: bool = False,
) -> ColumnElement[bool]:
    """PENDING, held by nobody (or by a lease lapsed before lapsed_before), and due by `due`.

    lapsed_before defaults to now minus the lease grace. `named_by_id`: the statement names its
    rows by id, so the status check must not steer the plan to a status index (`still_pending`);
    a query that looks for claimable jobs (the demo's queue) wants that index.
    """
    if lapsed_before is None:
        assert isinstance(now, datetime), "pass lapsed_before with a database clock"
        lapsed_before = now - timedelta(seconds=LEASE_GRACE_SECONDS)
    return and_(
        still_pending() if named_by_id else jobs.c.status == Status.PENDING,
        _free(lapsed_before),
        _due(due),
    )


def _free(lapsed_before: datetime | ColumnElement) -> ColumnElement[bool]:
    return or_(jobs.c.claim_token.is_(None), jobs.c.lease_until < lapsed_before)


def _due(due: datetime | ColumnElement) -> ColumnElement[bool]:
    return and_(
        or_(jobs.c.next_attempt_at.is_(None), jobs.c.next_attempt_at <= due),
        or_(jobs.c.send_at.is_(None), jobs.c.send_at <= due),
    )


def _batch_cancelled() -> ColumnElement[bool]:
    """The job belongs to a cancelled batch (a primary-key probe of batches per row)."""
    return exists().where(batches.c.id == jobs.c.batch_id, batches.c.cancelled_at.is_not(None))


def _batch_live() -> ColumnElement[bool]:
    """No batch, or one not cancelled.

    A correlated scalar subquery: one primary-key probe of batches per claimed row. (NOT EXISTS
    becomes an anti-join that hashes every cancelled batch, a cost growing with their number.)
    """
    cancelled_at = select(batches.c.cancelled_at).where(batches.c.id == jobs.c.batch_id)
    return cancelled_at.scalar_subquery().is_(None)


def claim(
    session: Session, job_ids: Sequence[int], token: str, lease_seconds: float
) -> list[ClaimedJob]:
    """Take the due, unclaimed PENDING jobs among job_ids under token; return only those taken.

    One guarded UPDATE … RETURNING, timed by the database's clock: lease_until is its now plus
    the lease. Among the jobs it could not take, those of a cancelled batch end CANCELLED and
    those not due yet lose their enqueued stamp, so the sweeper dispatches them when due (the
    message that brought them here is acked and gone).
    """
    ids = sorted(set(job_ids))
    if not ids:
        return []
    dialect = dialect_name(session)
    now, due = db_now(dialect), db_shifted(dialect, CLOCK_TOLERANCE.total_seconds())
    lapsed_before = db_shifted(dialect, -LEASE_GRACE_SECONDS)
    stmt = (
        update(jobs)
        .where(
            jobs.c.job_id.in_(ids),
            claimable(now, due, lapsed_before, named_by_id=True),
            _batch_live(),
        )
        .values(claim_token=token, lease_until=db_shifted(dialect, lease_seconds), updated_at=now)
        .returning(*_CLAIM_COLUMNS)
    )
    rows = session.execute(stmt).all()
    if len(rows) < len(ids):
        _settle_unclaimable(session, ids, dialect)
    session.commit()
    return sorted((ClaimedJob(*row) for row in rows), key=lambda j: j.job_id)


def _settle_unclaimable(session: Session, ids: list[int], dialect: str) -> None:
    """Cancel the free jobs of a cancelled batch; make free jobs not due yet findable again."""
    now, due = db_now(dialect), db_shifted(dialect, CLOCK_TOLERANCE.total_seconds())
    cancelled = _batch_cancelled()
    stmt = (
        update(jobs)
        .where(
            jobs.c.job_id.in_(ids),
            still_pending(),
            _free(db_shifted(dialect, -LEASE_GRACE_SECONDS)),
            or_(cancelled, ~_due(due)),
        )
        .values(
            status=case((cancelled, Status.CANCELLED.value), else_=jobs.c.status),
            last_error=case((cancelled, "cancelled"), else_=jobs.c.last_error),
            **_REDISPATCH,
            claim_token=None,
            lease_until=None,
            updated_at=now,
        )
    )
    update_logging(session, stmt, BATCH_CANCELLED)


def renew(
    connection_or_session: Connection | Session, tokens: Collection[str], lease_seconds: float
) -> set[str]:
    """Extend the leases of still-PENDING jobs held under tokens; return the tokens still holding.

    lease_until becomes the database's now plus the lease. Commits.
    """
    wanted = sorted(set(tokens))
    if not wanted:
        return set()
    bind = connection_or_session
    dialect = dialect_name(bind)
    held_rows = and_(jobs.c.claim_token.in_(wanted), jobs.c.status == Status.PENDING)
    stmt = update(jobs).values(lease_until=db_shifted(dialect, lease_seconds))
    if dialect == "postgresql":
        # Lock in job_id order, the order an outcome flush locks them in, so a renewal and a
        # flush of the same chunk wait for each other instead of deadlocking.
        locked = select(jobs.c.job_id).where(held_rows).order_by(jobs.c.job_id).with_for_update()
        stmt = stmt.where(jobs.c.job_id.in_(locked.scalar_subquery()), held_rows)
    else:
        stmt = stmt.where(held_rows)
    held = {row[0] for row in bind.execute(stmt.returning(jobs.c.claim_token))}
    bind.commit()
    return held


# The event of a job that a guarded UPDATE cancelled because its batch was (others log nothing).
BATCH_CANCELLED = event(
    case((jobs.c.status == Status.CANCELLED, EventType.CANCELLED.value)), detail="batch cancelled"
)

# Handing a job back to the broker: a new dispatch, not yet confirmed.
_REDISPATCH = {"dispatch_seq": jobs.c.dispatch_seq + 1, "enqueued_at": None}


def release(
    session: Session, token: str, job_ids: Iterable[int], now: datetime | None = None
) -> None:
    """Give back claimed jobs that were not tried, so they are dispatched again. No commit.

    `now` is unused (the database's clock stamps the change); kept for existing callers.
    """
    write_outcomes(session, token, [OutcomeRow(job_id, RELEASE) for job_id in job_ids])


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
                still_pending(),
            )
            .values(enqueued_at=now)
        )
    session.commit()


def cancel(session: Session, job_id: int, api_key_id: int | None, now: datetime) -> bool:
    """Cancel a PENDING job nobody holds; False when it is claimed or already final."""
    lapsed_before = db_shifted(dialect_name(session), -LEASE_GRACE_SECONDS)
    stmt = (
        update(jobs)
        .where(
            jobs.c.job_id == job_id,
            jobs.c.api_key_id == api_key_id,
            jobs.c.status == Status.PENDING,
            _free(lapsed_before),
        )
        .values(status=Status.CANCELLED, updated_at=now, last_error="cancelled")
    )
    changed = update_logging(
        session, stmt, event(EventType.CANCELLED.value, detail="cancelled"), [jobs.c.job_id]
    )
    session.commit()
    return len(changed) == 1


def take_lost(session: Session, grace: timedelta, limit: int) -> list[Dispatch]:
    """Pick PENDING jobs the broker cannot be holding, bump their dispatch seq; return them.

    That is: a publish never confirmed (no enqueued stamp) past the grace period, a scheduled or
    retrying job that fell due without an enqueued stamp (it was acked before it was due, or its
    delay-tier publish failed), or a claim whose lease lapsed more than the lease grace ago.
    Jobs legitimately waiting in a queue carry an enqueued stamp and are left alone. A picked job
    of a cancelled batch ends CANCELLED instead. Times are the database's.
    """
    dialect = dialect_name(session)
    now = db_now(dialect)
    waited = or_(jobs.c.send_at.is_not(None), jobs.c.next_attempt_at.is_not(None))
    unconfirmed = and_(
        jobs.c.claim_token.is_(None),
        jobs.c.enqueued_at.is_(None),
        _due(now),
        or_(waited, jobs.c.updated_at < db_shifted(dialect, -grace.total_seconds())),
    )
    expired = and_(
        jobs.c.claim_token.is_not(None),
        jobs.c.lease_until < db_shifted(dialect, -LEASE_GRACE_SECONDS),
    )
    picked = (
        select(jobs.c.job_id)
        .where(jobs.c.status == Status.PENDING, or_(unconfirmed, expired))
        .order_by(jobs.c.priority.desc(), jobs.c.job_id)
        .limit(limit)
    )
    if dialect == "postgresql":
        picked = picked.with_for_update(skip_locked=True)
    cancelled = _batch_cancelled()
    stmt = (
        update(jobs)
        .where(jobs.c.job_id.in_(picked.scalar_subquery()), jobs.c.status == Status.PENDING)
        .values(
            status=case((cancelled, Status.CANCELLED.value), else_=jobs.c.status),
            last_error=case((cancelled, "cancelled"), else_=jobs.c.last_error),
            **_REDISPATCH,
            claim_token=None,
            lease_until=None,
            updated_at=now,
        )
    )
    returned = [jobs.c.job_id, jobs.c.priority, jobs.c.dispatch_seq, jobs.c.status]
    rows = update_logging(session, stmt, BATCH_CANCELLED, returned)
    session.commit()
    return [Dispatch(i, p, seq) for i, p, seq, status in rows if status == Status.PENDING]


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
