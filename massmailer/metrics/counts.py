"""Jobs per status, overall and per batch, in milliseconds at any table size.

On PostgreSQL the figures come from job_counts, which triggers keep exact in the same
transactions that change email_jobs (models/job_counts.py); reading it touches a few rows per
status instead of every job. The embedded demo (SQLite, a few thousand jobs) counts directly.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from massmailer import jobstore
from massmailer.models import JobCount, Status

counts_table = JobCount.__table__


def _kept(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def job_counts(session: Session) -> dict[str, int]:
    """Jobs per status, every status present."""
    if not _kept(session):
        return jobstore.count_by_status(session)
    counts = dict.fromkeys(map(str, Status), 0)
    rows = session.execute(
        select(counts_table.c.status, func.sum(counts_table.c.n))
        .where(counts_table.c.batch_id.is_(None))
        .group_by(counts_table.c.status)
    )
    for status, n in rows:
        counts[status] = int(n)
    return counts


def batch_counts(session: Session, batch_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """Each batch's jobs per status, every status present."""
    counts = {b: dict.fromkeys(map(str, Status), 0) for b in batch_ids}
    if not counts:
        return counts
    ids = list(counts)
    if _kept(session):
        c = counts_table.c
        query = select(c.batch_id, c.status, func.sum(c.n)).where(c.batch_id.in_(ids))
    else:
        c = jobstore.jobs.c
        query = select(c.batch_id, c.status, func.count()).where(c.batch_id.in_(ids))
    rows = session.execute(query.group_by(c.batch_id, c.status))
    for batch_id, status_name, count in rows:
        counts[batch_id][status_name] = int(count)
    return counts
