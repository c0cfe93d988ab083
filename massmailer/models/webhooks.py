"""Webhook endpoints of API keys, the outbox of messages to deliver, and the log of every try.

Outbox rows for email events come from a trigger on email_events (migration 0007), in the same
transaction as the event; `batch.completed` and test messages are inserted by
massmailer/webhooks/outbox.py. A row is `pending` until due, `sending` while a worker holds its
claim (a lease: an expired one makes the row due again), then `delivered` or `failed`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow

OUTBOX_STATES = ("pending", "sending", "delivered", "failed")
_STATES = ", ".join(f"'{s}'" for s in OUTBOX_STATES)
_DUE = text("state IN ('pending', 'sending')")
_SENDING = text("state = 'sending'")


class WebhookEndpoint(db.Model):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_api_key_id", "api_key_id"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[str] = mapped_column(Text)  # space-separated event types
    # Needed in clear to sign; never logged, answered once at creation.
    secret: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookOutbox(db.Model):
    __tablename__ = "webhook_outbox"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATES})", name="state_known"),
        Index("ix_webhook_outbox_endpoint_id", "endpoint_id"),
        Index("ix_webhook_outbox_due", "next_attempt_at", postgresql_where=_DUE, sqlite_where=_DUE),
        # The claim counts each endpoint's requests in flight: a few rows, however long the
        # backlog (migration 0008).
        Index(
            "ix_webhook_outbox_sending",
            "endpoint_id",
            postgresql_where=_SENDING,
            sqlite_where=_SENDING,
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent, on every try
    state: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(server_default="0")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)


class WebhookDelivery(db.Model):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_endpoint_id_at", "endpoint_id", "at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    outbox_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("webhook_outbox.id", ondelete="CASCADE")
    )
    endpoint_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    attempt: Mapped[int]
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    outcome: Mapped[str] = mapped_column(String(16))  # delivered, retry, failed, disabled
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int]


class WebhookBatchNotified(db.Model):
    """Batches whose `batch.completed` is in the outbox: each is announced once."""

    __tablename__ = "webhook_batches_notified"

    batch_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    at: Mapped[datetime] = mapped_column(UtcDateTime)
