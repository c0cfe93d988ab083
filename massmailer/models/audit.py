"""audit_log: who changed a suppression or an API key, and when."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow


class AuditEntry(db.Model):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # The key that made the change; NULL for an operator command or an unsubscribe link.
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(120))  # "key:<name>", "operator", "unsubscribe-link"
    action: Mapped[str] = mapped_column(String(40))  # e.g. suppression.add, api_key.revoke
    target: Mapped[str] = mapped_column(String(320))  # the address or the key's name
    detail: Mapped[str | None] = mapped_column(Text)
