"""suppressions: addresses never to be mailed again (bounce, complaint, unsubscribe, manual)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import UtcDateTime, utcnow


class Suppression(db.Model):
    __tablename__ = "suppressions"

    email: Mapped[str] = mapped_column(String(255), primary_key=True)  # lower-cased
    reason: Mapped[str] = mapped_column(String(20))  # hard_bounce, complaint, unsubscribe, manual
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
