"""email_events: what happened to a job, one row per state change or report, oldest first.

Each row is written in the same transaction as the change it describes, from what the guarded
UPDATE returned (massmailer/jobstore/events.py), so a change that did not happen leaves no row.
`accepted` rows come from a trigger on email_jobs (migration 0005): intake makes no extra round
trip for them.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime


class EventType(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    DEFERRED = "deferred"  # a retry: the job waits in a delay tier
    FAILED = "failed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    CANCELLED = "cancelled"


# Bounds of the columns; every writer cuts its values to them where they enter.
PROVIDER_CHARS = 50
ENHANCED_CHARS = 16
DETAIL_CHARS = 1000

_TYPES = ", ".join(f"'{t}'" for t in EventType)


class EmailEvent(db.Model):
    __tablename__ = "email_events"
    __table_args__ = (
        CheckConstraint(f"type IN ({_TYPES})", name="type_known"),
        CheckConstraint(f"length(detail) <= {DETAIL_CHARS}", name="detail_bounded"),
        # A job's history, in order; and the retention purge by age.
        Index("ix_email_events_job_id_at", "job_id", "at"),
        Index("ix_email_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    # email_jobs.job_id, with no foreign key (migration 0008): events are written with their job
    # (a trigger, a guarded UPDATE's RETURNING) and deleted before it.
    job_id: Mapped[int] = mapped_column(BigIntId)
    type: Mapped[str] = mapped_column(String(16))
    # The database's clock; writers set it (statement_timestamp() on PostgreSQL).
    at: Mapped[datetime] = mapped_column(UtcDateTime, server_default=text("CURRENT_TIMESTAMP"))
    provider: Mapped[str | None] = mapped_column(String(PROVIDER_CHARS))
    smtp_code: Mapped[int | None]
    enhanced_code: Mapped[str | None] = mapped_column(String(ENHANCED_CHARS))
    detail: Mapped[str | None] = mapped_column(Text)
