"""idempotency_keys: the first response to a POST with an Idempotency-Key, per API key."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId, UtcDateTime, utcnow


class IdempotencyKey(db.Model):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        # Inserting first under this constraint is what makes two concurrent requests create once.
        UniqueConstraint("api_key_id", "key", name="uq_idempotency_keys_api_key_id_key"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 of method, path and body
    # Written in the same transaction as the row insert and whatever the request created, so no
    # other transaction ever sees them empty.
    response_status: Mapped[int | None]
    response_body: Mapped[dict | None] = mapped_column(JSON)
    # Keys expire (MASSMAILER_IDEMPOTENCY_TTL_SECONDS); the purge finds old ones by this index.
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
