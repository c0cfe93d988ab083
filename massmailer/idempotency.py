"""Idempotency-Key on POSTs: a repeat returns the first response and creates nothing.

Keys are scoped to the API key that sent them and expire after MASSMAILER_IDEMPOTENCY_TTL_SECONDS
(24 h by default). The key row is inserted first, in the same transaction as whatever the request
creates, under a unique (api_key_id, key) constraint: a concurrent identical request blocks on that
insert until the first commits, then finds the stored response and replays it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from massmailer.models import IdempotencyKey
from massmailer.models.types import utcnow
from massmailer.validation import ValidationError

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
PURGE_BATCH = 100  # expired keys deleted per new key, so the table does not grow without bound
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces

keys = IdempotencyKey.__table__
T = TypeVar("T")


class IdempotencyConflict(Exception):
    """The key was already used with a different request."""


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict
    replayed: bool


def parse_key(headers: Mapping[str, str]) -> str | None:
    """Return the request's Idempotency-Key or None; raise ValidationError if malformed."""
    raw = headers.get(HEADER)
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise ValidationError(HEADER, "must be 1 to 255 printable ASCII characters, no spaces")
    return raw


def fingerprint(method: str, path: str, payload: object) -> str:
    """Return the SHA-256 of the request: the same JSON document hashes alike in any key order."""
    canonical = json.dumps(
        [method, path, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


class Idempotency:
    """One request's idempotency: find an earlier response, or create once and remember it."""

    def __init__(
        self,
        session: Session,
        api_key_id: int,
        key: str | None,
        request_hash: str,
        ttl_seconds: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._session = session
        self._api_key_id = api_key_id
        self._key = key
        self._hash = request_hash
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock
        self._row_id: int | None = None

    def earlier(self) -> StoredResponse | None:
        """Return the stored response for this key, None if there is none (or it expired)."""
        if self._key is None:
            return None
        row = self._session.execute(
            select(keys.c.request_hash, keys.c.response_status, keys.c.response_body).where(
                keys.c.api_key_id == self._api_key_id,
                keys.c.key == self._key,
                keys.c.created_at >= self._clock() - self._ttl,
            )
        ).first()
        if row is None:
            return None
        if row.request_hash != self._hash:
            raise IdempotencyConflict(f"this {HEADER} was already used with a different request")
        return StoredResponse(row.response_status, row.response_body, replayed=True)

    def run(self, create: Callable[[], tuple[int, dict, T]]) -> tuple[StoredResponse, T | None]:
        """Create through create() and commit once; with a key already stored, replay instead.

        create() adds rows to the session without committing and returns (status, body, extra);
        extra comes back None when the response is a replay, so the caller publishes nothing.
        """
        try:
            if self._key is not None and not self._reserve():
                self._session.rollback()
                earlier = self.earlier()
                if earlier is None:  # the winner expired between our insert and this read
                    raise IdempotencyConflict(f"this {HEADER} is being reused; try again")
                return earlier, None
            status, body, extra = create()
            if self._key is not None:
                self._remember(status, body)
            self._session.commit()
        except BaseException:
            self._session.rollback()
            raise
        return StoredResponse(status, body, replayed=False), extra

    def _reserve(self) -> bool:
        """Insert the key row in the open transaction; False if another request holds the key."""
        now = self._clock()
        # An expired row with the same key makes way for the new request.
        self._session.execute(
            delete(keys).where(
                keys.c.api_key_id == self._api_key_id,
                keys.c.key == self._key,
                keys.c.created_at < now - self._ttl,
            )
        )
        dialect = postgresql if self._session.get_bind().dialect.name == "postgresql" else sqlite
        inserted = self._session.execute(
            dialect.insert(keys)
            .values(
                api_key_id=self._api_key_id, key=self._key, request_hash=self._hash, created_at=now
            )
            .on_conflict_do_nothing(index_elements=["api_key_id", "key"])
            .returning(keys.c.id)
        ).scalar()
        self._row_id = inserted
        return inserted is not None

    def _remember(self, status: int, body: dict) -> None:
        self._session.execute(
            update(keys)
            .where(keys.c.id == self._row_id)
            .values(response_status=status, response_body=body)
        )
        purge_expired(self._session, self._clock() - self._ttl, PURGE_BATCH)


def purge_expired(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to limit keys created before cutoff; return how many went (no commit)."""
    oldest = select(keys.c.id).where(keys.c.created_at < cutoff).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        # Two requests purging at once must not wait on each other's rows.
        oldest = oldest.with_for_update(skip_locked=True)
    return session.execute(delete(keys).where(keys.c.id.in_(oldest.scalar_subquery()))).rowcount
