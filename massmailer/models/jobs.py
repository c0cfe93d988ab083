"""email_jobs: one row per recipient; the original columns plus what delivery needs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow


class Status(StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


_PENDING = "status = 'PENDING'"
_CLAIMED = "status = 'PENDING' AND claim_token IS NOT NULL"
_UNSTAMPED = "status = 'PENDING' AND enqueued_at IS NULL"
_HAS_QUEUE_ID = "provider_queue_id IS NOT NULL"  # a COPY of new jobs adds nothing to it


def _partial_index(name: str, columns: list[str], where: str) -> Index:
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class EmailJob(db.Model):
    __tablename__ = "email_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('PENDING', 'SENT', 'FAILED', 'CANCELLED')", name="status_known"
        ),
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        # The sweeper and the status counts filter by status first.
        Index("ix_email_jobs_status_updated_at", "status", "updated_at"),
        Index("ix_email_jobs_api_key_id_created_at", "api_key_id", "created_at"),
        # The sweep's conditions (migration 0003), small partial indexes that the claim, which
        # goes by primary key, has no reason to prefer: claims to take back once their lease
        # lapsed; publishes never confirmed and scheduled jobs; jobs to expire by age.
        _partial_index("ix_email_jobs_claimed_lease_until", ["lease_until"], _CLAIMED),
        _partial_index("ix_email_jobs_unstamped", ["send_at", "updated_at"], _UNSTAMPED),
        _partial_index("ix_email_jobs_pending_created_at", ["created_at"], _PENDING),
        # Inbound reports from providers that rewrite Message-ID (SES, SendGrid) name this id.
        _partial_index("ix_email_jobs_provider_queue_id", ["provider_queue_id"], _HAS_QUEUE_ID),
    )

    # The original table, same names and meanings.
    job_id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    recipient: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(String(998))
    body: Mapped[str] = mapped_column(Text)  # the text part; empty when only HTML was given
    priority: Mapped[int] = mapped_column(default=0, server_default="0")  # higher goes first
    provider: Mapped[str | None] = mapped_column(String(50))  # the provider that delivered it
    status: Mapped[str] = mapped_column(String(20), default=Status.PENDING)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    # Message content beyond the original columns.
    recipient_name: Mapped[str | None] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(255))
    sender_name: Mapped[str | None] = mapped_column(String(255))
    html: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[list | None] = mapped_column(JSON)  # validated extra headers, [[name, value]]
    category: Mapped[str] = mapped_column(
        String(20), default="transactional", server_default="transactional"
    )
    message_id: Mapped[str] = mapped_column(String(255), unique=True)  # stable across retries
    # api_keys.id and batches.id, with no foreign key (migration 0008): a per-row check cost a
    # batch's COPY 4.5 µs a job, and neither parent is ever deleted (keys are revoked, batches
    # kept); the intake writes each job with the key it authenticated and the batch it inserted.
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    # A batch job's subject is rendered at intake; body is "" and html NULL because the parts
    # are rendered when it is sent from the batch's template and these variables.
    batch_id: Mapped[int | None] = mapped_column(BigIntId, index=True)
    template_vars: Mapped[dict | None] = mapped_column(JSON)

    # Scheduling, retry and the claim that keeps two workers from sending one job.
    send_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Bumped whenever the job is handed to the broker again, so a late confirm stamp of an
    # older publish cannot mark a newer one as enqueued.
    dispatch_seq: Mapped[int] = mapped_column(default=0, server_default="0")
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    failed_provider: Mapped[str | None] = mapped_column(String(50))  # avoid it on the next try

    # Outcome.
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    provider_queue_id: Mapped[str | None] = mapped_column(String(255))
    provider_reply: Mapped[str | None] = mapped_column(String(512))
