"""api_keys: clients authenticate with a bearer key stored only as its SHA-256.

A key carries its scopes (what it may do), optionally the sender domains it may send from, and
optionally its own quotas; unset quotas take the configured defaults.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import UtcDateTime, utcnow

# What a key made before scopes existed could do: everything but the new admin scope.
LEGACY_SCOPES = "send read suppressions webhooks"


class ApiKey(db.Model):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Keys are 256-bit random, so a plain SHA-256 is enough; a slow hash would only slow requests.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Space-separated scope names (apikeys.SCOPES).
    scopes: Mapped[str] = mapped_column(
        String(200), default=LEGACY_SCOPES, server_default=LEGACY_SCOPES
    )
    # Lower-case domains the key may put in `from`; NULL: any domain.
    sender_domains: Mapped[list[str] | None] = mapped_column(JSON)
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    burst: Mapped[int | None] = mapped_column()
    recipients_per_day: Mapped[int | None] = mapped_column()

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())
