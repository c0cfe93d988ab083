"""Conditions that check rows a statement already names by id, written so no index serves them."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func

from massmailer.models import EmailJob, Status

jobs = EmailJob.__table__


def still_pending() -> ColumnElement[bool]:
    """status = PENDING, as a check on rows a statement finds by primary key.

    Right after a large batch lands the statistics still say few jobs are PENDING: ANALYZE is
    off the request path and runs at the next sweep. A bare `status = 'PENDING'` then leads the
    planner to read every PENDING job through the partial pending index for each claim and each
    outcome flush, instead of the chunk's rows by primary key: 25-30 ms of PostgreSQL CPU per
    statement with 60,000 jobs pending, about three quarters of its CPU in a fast run
    (bench/README.md). Wrapped in COALESCE (status is NOT NULL, so the result is the same), the
    condition matches no index, and the ids decide the plan whatever the statistics say.
    """
    return func.coalesce(jobs.c.status, "") == Status.PENDING.value
