"""batches: one template and its sender for many jobs, one job per recipient."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow

_UNCONFIRMED = text("unconfirmed_since IS NOT NULL")


class Batch(db.Model):
    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint("priority BETWEEN 0 AND 9", name="priority_range"),
        Index("ix_batches_api_key_id_created_at", "api_key_id", "created_at"),
        Index(
            "ix_batches_unconfirmed_since",
            "unconfirmed_since",
            postgresql_where=_UNCONFIRMED,
            sqlite_where=_UNCONFIRMED,
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    # The template lives here once; each job keeps only its variables (email_jobs.template_vars)
    # and its rendered subject, and delivery renders text and html when it sends.
    subject_template: Mapped[str] = mapped_column(Text)
    text_template: Mapped[str | None] = mapped_column(Text)
    html_template: Mapped[str | None] = mapped_column(Text)
    sender: Mapped[str] = mapped_column(String(255))
    sender_name: Mapped[str | None] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(default=0, server_default="0")
    category: Mapped[str] = mapped_column(
        String(20), default="transactional", server_default="transactional"
    )
    send_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    accepted: Mapped[int] = mapped_column(default=0, server_default="0")  # jobs created
    rejected: Mapped[int] = mapped_column(default=0, server_default="0")  # recipients refused
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set while some chunk's publish is unconfirmed (its jobs were copied stamped as enqueued);
    # the sweep unstamps the waiting jobs of a batch left so past the grace (migration 0008).
    unconfirmed_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
