"""inbound_reports: every bounce, complaint or unsubscribe mail received, once each.

A report is stored before anything is done with it, so one that cannot be matched or parsed
stays for an operator (`flask --app wsgi bounces unmatched`) and one that arrives while its job
is still claimed waits here (state pending) until the sweep applies it. The raw bytes are
dropped after MASSMAILER_INBOUND_RETENTION_DAYS; the parsed fields stay with matched reports,
for the `bounce` object of GET /v1/emails/<id>.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow


class ReportState(StrEnum):
    APPLIED = "applied"  # its effects are written (or it asked for none)
    PENDING = "pending"  # its job is still being sent: the sweep applies it later
    UNMATCHED = "unmatched"  # parsed, but no job of ours is named by it
    FORGED = "forged"  # names a job through a VERP address whose MAC does not match
    UNPARSABLE = "unparsable"  # not a report we can read


class InboundReport(db.Model):
    __tablename__ = "inbound_reports"
    __table_args__ = (Index("ix_inbound_reports_state_received_at", "state", "received_at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the raw bytes
    channel: Mapped[str] = mapped_column(String(10))  # smtp, http
    envelope_to: Mapped[str | None] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str | None] = mapped_column(String(20))  # report.Kind, or unsubscribe
    format: Mapped[str | None] = mapped_column(String(20))  # dsn, arf, freeform, mailto
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("email_jobs.job_id", ondelete="SET NULL"), index=True
    )
    recipient: Mapped[str | None] = mapped_column(String(320))
    status_code: Mapped[str | None] = mapped_column(String(16))
    diagnostic: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)  # why it is unmatched, forged, …
    applied_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    raw: Mapped[bytes | None] = mapped_column(LargeBinary)
