"""The dashboard's figures, read from PostgreSQL with queries the existing indexes serve.

Sends per bucket and per provider use (status, updated_at): a final job's updated_at is the time
it became final, and nothing changes it afterwards; their cost follows the sends of the last ten
minutes, not the size of the table. Batch progress comes from job_counts (metrics/counts.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timedelta

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.config import Settings
from massmailer.delivery.warmup import describe, utc_date
from massmailer.extensions import db
from massmailer.metrics.counts import batch_counts
from massmailer.metrics.state import OpsState
from massmailer.models import Status

jobs = jobstore.jobs
RATE_WINDOW_SECONDS = 600
RATE_BUCKET_SECONDS = 10
FAILURES_SHOWN = 10
BATCHES_LOOKED_AT = 20


def dashboard_data(session: Session, settings: Settings, state: OpsState, now: datetime) -> dict:
    """Everything the page shows, as JSON-safe values."""
    try:
        data = {
            "rate": send_rate(session, now),
            "sent_last_minute": sent_per_provider(session, now),
            "failures": recent_failures(session),
            "batches": batches_in_progress(session),
        }
    finally:
        session.rollback()  # reads only: end the transaction
    return {
        "generated_at": now.isoformat(),
        "jobs": state.jobs,
        "queues": None if state.queues is None else [asdict(q) for q in state.queues],
        "providers": _providers(settings, state, data["sent_last_minute"]),
        "errors": state.errors,
        **data,
    }


def send_rate(
    session: Session,
    now: datetime,
    window: int = RATE_WINDOW_SECONDS,
    bucket: int = RATE_BUCKET_SECONDS,
) -> dict:
    """Jobs that became SENT or FAILED per bucket over the last window seconds, oldest first."""
    first = int(now.timestamp()) // bucket - window // bucket + 1
    start = datetime.fromtimestamp(first * bucket, now.tzinfo)
    slot = _bucket_of(session, jobs.c.updated_at, bucket).label("slot")
    rows = session.execute(
        select(slot, jobs.c.status, func.count())
        .where(jobs.c.status.in_((Status.SENT, Status.FAILED)), jobs.c.updated_at >= start)
        .group_by(slot, jobs.c.status)
    )
    series = {"SENT": [0] * (window // bucket), "FAILED": [0] * (window // bucket)}
    for index, status, count in rows:
        position = int(index) - first
        if 0 <= position < window // bucket:
            series[status][position] = count
    return {
        "start": start.isoformat(),
        "bucket_seconds": bucket,
        "sent": series["SENT"],
        "failed": series["FAILED"],
    }


def _bucket_of(session: Session, column, seconds: int):
    if session.get_bind().dialect.name == "postgresql":
        return func.floor(func.extract("epoch", column) / seconds)
    return cast(func.strftime("%s", column), Integer) // seconds  # the demo's SQLite


def sent_per_provider(session: Session, now: datetime, seconds: int = 60) -> dict[str, int]:
    """Jobs each provider delivered in the last `seconds`."""
    rows = session.execute(
        select(jobs.c.provider, func.count())
        .where(jobs.c.status == Status.SENT, jobs.c.updated_at >= now - timedelta(seconds=seconds))
        .group_by(jobs.c.provider)
    )
    return {provider: count for provider, count in rows if provider}


def recent_failures(session: Session, limit: int = FAILURES_SHOWN) -> list[dict]:
    """The latest FAILED jobs with their reasons, newest first."""
    rows = session.execute(
        select(
            jobs.c.job_id, jobs.c.recipient, jobs.c.provider, jobs.c.last_error, jobs.c.updated_at
        )
        .where(jobs.c.status == Status.FAILED)
        .order_by(jobs.c.updated_at.desc())
        .limit(limit)
    )
    return [
        {"job_id": j, "recipient": r, "provider": p, "reason": e, "at": at.isoformat()}
        for j, r, p, e, at in rows
    ]


def batches_in_progress(session: Session, looked_at: int = BATCHES_LOOKED_AT) -> list[dict] | None:
    """Progress of the latest batches that still have PENDING jobs; None without batches."""
    batches = db.metadata.tables.get("batches")
    batch_id = jobs.c.get("batch_id")
    if batches is None or batch_id is None:
        return None
    latest = session.execute(
        select(batches.c.id, batches.c.created_at).order_by(batches.c.id.desc()).limit(looked_at)
    ).all()
    if not latest:
        return []
    counts = batch_counts(session, [b for b, _ in latest])
    return [
        {"id": b, "created_at": created.isoformat(), "total": sum(counts[b].values()), **counts[b]}
        for b, created in latest
        if counts[b]["PENDING"]
    ]


def _providers(settings: Settings, state: OpsState, sent: dict[str, int]) -> list[dict]:
    health = state.providers or {}
    return [
        {
            "name": p.name,
            "sent_last_minute": sent.get(p.name, 0),
            "health": health.get(p.name),  # None when the limits store could not be read
            "rate_per_second": p.rate_per_second,
            "weight": p.weight,
            # The daily cap in force today: the warm-up's, else rate_per_day (None: no cap).
            "daily_cap": p.daily_cap(),
            "daily_cap_text": describe(p.warmup, p.daily_cap(), utc_date(time.time())),
        }
        for p in settings.providers
    ]
