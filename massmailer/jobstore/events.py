"""Log an event for each job a guarded UPDATE changed, in the same statement where possible.

On PostgreSQL the UPDATE becomes a data-modifying CTE and the events are inserted from its
RETURNING rows, in one statement and one round trip:

    WITH changed AS (UPDATE email_jobs … RETURNING job_id, <event columns>, <caller's columns>),
         logged AS (INSERT INTO email_events … SELECT … FROM changed WHERE type IS NOT NULL)
    SELECT <caller's columns> FROM changed

A row the guard kept out is not returned, so a change that did not happen logs nothing. SQLite
(the demo) has no data-modifying CTEs: there the UPDATE … RETURNING runs first and the events
are inserted from its rows, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    Text,
    Update,
    cast,
    func,
    insert,
    literal,
    null,
    select,
)
from sqlalchemy.orm import Session

from massmailer.jobstore.dbclock import db_now, dialect_name
from massmailer.models import EmailEvent, EmailJob, EventType
from massmailer.models.events import DETAIL_CHARS, ENHANCED_CHARS, PROVIDER_CHARS
from massmailer.models.types import utcnow

events = EmailEvent.__table__
jobs = EmailJob.__table__

FIELDS = ("type", "provider", "smtp_code", "enhanced_code", "detail")
_BOUNDS = {"provider": PROVIDER_CHARS, "enhanced_code": ENHANCED_CHARS, "detail": DETAIL_CHARS}


def event(
    type_: str | ColumnElement,
    *,
    provider: ColumnElement | None = None,
    smtp_code: ColumnElement | None = None,
    enhanced_code: ColumnElement | None = None,
    detail: str | ColumnElement | None = None,
) -> dict[str, ColumnElement]:
    """The event to log per changed row, as SQL over that row; a NULL type logs nothing."""
    values = {
        "type": type_,
        "provider": provider,
        "smtp_code": smtp_code,
        "enhanced_code": enhanced_code,
        "detail": detail,
    }
    return {name: _sql(name, value) for name, value in values.items()}


def _sql(name: str, value: Any) -> ColumnElement:
    # Typed, even NULL: in a CTE an untyped NULL is text, which an integer column refuses.
    type_ = Integer() if name == "smtp_code" else Text()
    if value is None:
        return cast(null(), type_)
    if not isinstance(value, ColumnElement):
        value = literal(value, type_)
    if name in _BOUNDS:
        return func.substr(value, 1, _BOUNDS[name])  # bounded where it enters the table
    return value


def update_logging(
    session: Session,
    stmt: Update,
    logged: Mapping[str, ColumnElement],
    returning: Sequence[ColumnElement] = (),
    params: Sequence[Mapping[str, Any]] | None = None,
) -> list[Row]:
    """Run a guarded UPDATE of email_jobs, log one event per changed row; return `returning`.

    `params`: a list of parameter sets runs the statement once per set (SQLite's one-row form);
    on PostgreSQL give at most one. No commit.
    """
    if dialect_name(session) == "postgresql":
        query = logged_update(stmt, logged, returning)
        rows = session.execute(query, (params or [{}])[0]).all()
        return rows if returning else []
    return _in_two_statements(session, stmt, _labelled(logged), returning, params)


def logged_update(
    stmt: Update, logged: Mapping[str, ColumnElement], returning: Sequence[ColumnElement] = ()
) -> Select:
    """The one-statement form (PostgreSQL): the UPDATE in a CTE, the INSERT from its rows."""
    labelled = _labelled(logged)
    changed = stmt.returning(*labelled, *returning).cte("changed")
    cols = list(changed.c)
    source = select(*cols[: len(labelled)], db_now("postgresql")).where(
        changed.c.ev_type.is_not(None)
    )
    log = insert(events).from_select(["job_id", *FIELDS, "at"], source).cte("logged")
    wanted = cols[len(labelled) :] or [func.count()]
    return select(*wanted).select_from(changed).add_cte(log)


def _labelled(logged: Mapping[str, ColumnElement]) -> list[ColumnElement]:
    return [
        jobs.c.job_id.label("ev_job_id"),
        *(logged[name].label(f"ev_{name}") for name in FIELDS),
    ]


def _in_two_statements(session, stmt, labelled, returning, params) -> list[Row]:
    stmt = stmt.returning(*labelled, *returning)
    rows: list[Row] = []
    for p in params if params is not None else [{}]:
        rows += session.execute(stmt, p).all()
    n, now = len(labelled), utcnow()
    entries = [
        {"job_id": r[0], **dict(zip(FIELDS, r[1:n], strict=True)), "at": now}
        for r in rows
        if r[1] is not None
    ]
    if entries:
        session.execute(insert(events), entries)
    return [r[n:] for r in rows]


def log_unsubscribed(session: Session, job_id: int, address: str, detail: str) -> None:
    """Log `unsubscribed` on the job an unsubscribe link came from, once. No commit.

    Only if the job still exists and was sent to that address; a second click logs nothing.
    """
    already = (
        select(events.c.id)
        .where(events.c.job_id == job_id, events.c.type == EventType.UNSUBSCRIBED.value)
        .exists()
    )
    source = select(
        jobs.c.job_id,
        literal(EventType.UNSUBSCRIBED.value),
        _sql("detail", detail),
        db_now(dialect_name(session)),
    ).where(jobs.c.job_id == job_id, func.lower(jobs.c.recipient) == address.lower(), ~already)
    session.execute(insert(events).from_select(["job_id", "type", "detail", "at"], source))
