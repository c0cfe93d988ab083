"""The database's clock: lease and due times are judged by PostgreSQL, never by a worker's clock.

A worker whose clock is off by minutes must neither take a live claim nor keep one too short, so
every lease and due-time comparison is written against `statement_timestamp()` (the start of the
statement, unlike `now()`, which is the start of a transaction that may have begun earlier).
SQLite (the embedded demo, one process) has no interval arithmetic; there this process's clock,
bound as a parameter, plays the database's part.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Float, cast, func, literal, type_coerce

from massmailer.models.types import UtcDateTime, utcnow


def dialect_name(bind: object) -> str:
    """The dialect of a Session or a Connection."""
    if isinstance(bind, Connection):
        return bind.dialect.name
    return bind.get_bind().dialect.name  # a Session or a scoped_session


def db_now(dialect: str) -> ColumnElement[datetime]:
    """The database's current time, as of the statement."""
    if dialect == "postgresql":
        return func.statement_timestamp(type_=UtcDateTime())
    return literal(utcnow(), UtcDateTime())


def db_shifted(dialect: str, seconds: float | ColumnElement) -> ColumnElement[datetime]:
    """The database's current time plus seconds (negative for the past); a column on PostgreSQL."""
    if dialect == "postgresql":
        interval = func.make_interval(0, 0, 0, 0, 0, 0, cast(seconds, Float))
        return type_coerce(func.statement_timestamp() + interval, UtcDateTime())
    if isinstance(seconds, ColumnElement):
        raise TypeError("per-row offsets need PostgreSQL; compute them in Python on SQLite")
    return literal(utcnow() + timedelta(seconds=seconds), UtcDateTime())
