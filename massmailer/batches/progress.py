"""A batch's progress (counts by status, send rate) and its cancellation."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.models import Batch, Status

batches = Batch.__table__


def own_batch(session: Session, batch_id: int, api_key_id: int) -> Batch | None:
    """Return the batch if this API key created it."""
    return session.scalar(select(Batch).where(Batch.id == batch_id, Batch.api_key_id == api_key_id))


def progress(session: Session, batch: Batch, now: datetime) -> dict:
    """The batch's state: counts by status, jobs in flight, the send rate."""
    stats = jobstore.batch_stats(session, batch.id, now)
    recent = stats.sent_last_minute / 60.0
    span = (
        (stats.last_sent_at - stats.first_sent_at).total_seconds()
        if stats.first_sent_at and stats.last_sent_at
        else 0.0
    )
    sent = stats.counts[Status.SENT]
    return {
        "id": batch.id,
        "status": _status(batch, stats.counts, now),
        "counts": stats.counts,
        "in_flight": stats.in_flight,
        "accepted": batch.accepted,
        "rejected": batch.rejected,
        "category": batch.category,
        "priority": batch.priority,
        "send_at": _iso(batch.send_at),
        "created_at": _iso(batch.created_at),
        "cancelled_at": _iso(batch.cancelled_at),
        "first_sent_at": _iso(stats.first_sent_at),
        "last_sent_at": _iso(stats.last_sent_at),
        "rate_per_second": {
            "last_minute": round(recent, 2),
            "overall": round(sent / span, 2) if span > 0 else None,
        },
    }


def _status(batch: Batch, counts: dict[str, int], now: datetime) -> str:
    if batch.cancelled_at is not None:
        return "CANCELLED"
    if counts[Status.PENDING] == 0:
        return "DONE"
    if batch.send_at is not None and batch.send_at > now:
        return "SCHEDULED"
    return "SENDING"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def cancel(session: Session, batch: Batch, now: datetime) -> dict:
    """Cancel every job of the batch nobody holds; report how many were in flight.

    The batch's cancelled_at is committed on its own first: from then on a worker handing a job
    back (retry, release) sees it and cancels the job instead of dispatching it, and any job it
    handed back before is unclaimed when the second statement cancels the batch's jobs. Only
    then are the statistics read, outside the transactions that matter.
    """
    session.execute(
        update(batches)
        .where(batches.c.id == batch.id, batches.c.cancelled_at.is_(None))
        .values(cancelled_at=now)
    )
    session.commit()
    cancelled, in_flight = jobstore.cancel_batch(session, batch.id, now)
    session.commit()
    counts = jobstore.batch_stats(session, batch.id, now).counts
    session.rollback()  # reads only: end the transaction
    return {
        "id": batch.id,
        "status": "CANCELLED",
        "cancelled": cancelled,
        "in_flight": in_flight,
        "counts": counts,
    }
