"""Create, revoke and check API keys; only a key's SHA-256 is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from massmailer.models import ApiKey
from massmailer.models.types import utcnow

KEY_PREFIX = "mm_"


class ApiKeyError(Exception):
    """A key operation that cannot be done (name taken, unknown name)."""


def hash_key(raw: str) -> str:
    """Return the stored form of a raw key."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def create(session: Session, name: str) -> str:
    """Create a key named name and return the raw key; it is never shown again."""
    if not name or len(name) > 100:
        raise ApiKeyError("a key name is 1 to 100 characters")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise ApiKeyError(f"a key named {name!r} already exists")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, key_hash=hash_key(raw)))
    session.commit()
    return raw


def revoke(session: Session, name: str) -> None:
    """Revoke the key named name; requests with it answer 401 from now on."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    if result.rowcount != 1:
        raise ApiKeyError(f"no active key named {name!r}")


def authenticate(session: Session, raw: str) -> ApiKey | None:
    """Return the active key matching raw, or None."""
    digest = hash_key(raw)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by hash, so timing reveals nothing of the key; compare anyway for clarity.
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key
