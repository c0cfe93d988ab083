"""The suppression list: who must never be mailed again."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from massmailer.models import Suppression

table = Suppression.__table__


def suppressed_among(session: Session, addresses: Iterable[str]) -> set[str]:
    """Return the lower-cased addresses among `addresses` that are suppressed."""
    wanted = {a.lower() for a in addresses}
    if not wanted:
        return set()
    rows = session.execute(select(table.c.email).where(table.c.email.in_(wanted)))
    return {row[0] for row in rows}


def add_many(session: Session, entries: Sequence[tuple[str, str, str]], now: datetime) -> None:
    """Suppress (email, reason, detail) entries; an address already suppressed keeps its reason."""
    if not entries:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    rows = {
        e.lower(): {"email": e.lower(), "reason": r, "detail": d, "created_at": now}
        for e, r, d in entries
    }
    stmt = dialect.insert(table).values(list(rows.values())).on_conflict_do_nothing()
    session.execute(stmt)
