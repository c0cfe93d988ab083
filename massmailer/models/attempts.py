"""email_attempts: one row per try, successful or not."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow


class EmailAttempt(db.Model):
    __tablename__ = "email_attempts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("email_jobs.job_id"), index=True)
    attempt_no: Mapped[int]
    provider: Mapped[str | None] = mapped_column(String(50))
    outcome: Mapped[str] = mapped_column(String(32))  # sent, transient, permanent_recipient, ...
    smtp_code: Mapped[int | None]
    enhanced_code: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
