"""Create, revoke and check API keys; only a key's SHA-256 is stored.

A key has scopes (what it may call), optionally a list of sender domains (what it may put in
`from`) and optionally its own quotas. Creating and revoking a key is written to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from massmailer import audit
from massmailer.models import ApiKey
from massmailer.models.api_keys import LEGACY_SCOPES
from massmailer.models.types import utcnow

KEY_PREFIX = "mm_"
# send: POST emails and batches, cancel them; read: GET them; suppressions: the global list;
# webhooks: webhook endpoints; admin: everything.
SCOPES = ("send", "read", "suppressions", "webhooks", "admin")
DEFAULT_SCOPES = tuple(LEGACY_SCOPES.split())
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


class ApiKeyError(Exception):
    """A key operation that cannot be done (name taken, unknown name, bad option)."""


@dataclass(frozen=True)
class KeyOptions:
    """What a new key may do; None quotas take the configured defaults."""

    scopes: tuple[str, ...] = DEFAULT_SCOPES
    sender_domains: tuple[str, ...] | None = None
    rate_per_second: float | None = None
    burst: int | None = None
    recipients_per_day: int | None = None


def hash_key(raw: str) -> str:
    """Return the stored form of a raw key."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def create(
    session: Session, name: str, options: KeyOptions | None = None, *, by: ApiKey | None = None
) -> str:
    """Create a key named name and return the raw key; it is never shown again."""
    options = options or KeyOptions()
    if not name or len(name) > 100:
        raise ApiKeyError("a key name is 1 to 100 characters")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise ApiKeyError(f"a key named {name!r} already exists")
    scopes = check_scopes(options.scopes)
    domains = check_domains(options.sender_domains)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            name=name,
            key_hash=hash_key(raw),
            scopes=" ".join(scopes),
            sender_domains=list(domains) if domains is not None else None,
            rate_per_second=options.rate_per_second,
            burst=options.burst,
            recipients_per_day=options.recipients_per_day,
        )
    )
    detail = f"scopes={' '.join(scopes)}" + (
        f" sender_domains={','.join(domains)}" if domains is not None else ""
    )
    audit.record(session, "api_key.create", name, key=by, detail=detail)
    session.commit()
    return raw


def revoke(session: Session, name: str, *, by: ApiKey | None = None) -> None:
    """Revoke the key named name; requests with it answer 401 from now on."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if result.rowcount != 1:
        session.rollback()
        raise ApiKeyError(f"no active key named {name!r}")
    audit.record(session, "api_key.revoke", name, key=by)
    session.commit()


def authenticate(session: Session, raw: str) -> ApiKey | None:
    """Return the active key matching raw, or None."""
    digest = hash_key(raw)
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    # The lookup is by hash, so timing reveals nothing of the key; compare anyway for clarity.
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.key_hash, digest):
        return None
    return key


def has_scope(key: ApiKey, scope: str) -> bool:
    """Tell whether key may do what scope covers (admin covers every scope)."""
    granted = key.scope_set
    return scope in granted or "admin" in granted


def may_send_from(key: ApiKey, address: str) -> bool:
    """Tell whether key may send from address (any domain when the key lists none)."""
    if key.sender_domains is None:
        return True
    domain = address.rsplit("@", 1)[-1].lower()
    return domain in key.sender_domains


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Return the scopes in canonical order; raise ApiKeyError for an unknown one."""
    given = set(scopes)
    unknown = given - set(SCOPES)
    if unknown:
        raise ApiKeyError(f"unknown scope(s) {sorted(unknown)}; choose from {', '.join(SCOPES)}")
    if not given:
        raise ApiKeyError("a key needs at least one scope")
    return tuple(s for s in SCOPES if s in given)


def check_domains(domains: Iterable[str] | None) -> tuple[str, ...] | None:
    """Return the domains lower-cased; raise ApiKeyError for one that is not a domain name."""
    if domains is None:
        return None
    checked = tuple(sorted({d.strip().lower() for d in domains}))
    for domain in checked:
        if not _DOMAIN.match(domain):
            raise ApiKeyError(f"{domain!r} is not a domain name")
    if not checked:
        raise ApiKeyError("give at least one sender domain, or none to allow any")
    return checked
