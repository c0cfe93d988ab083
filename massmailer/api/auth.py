"""Bearer API keys on every /v1 endpoint: who calls (401), how often (429), what for (403).

g.api_key is the caller's key. Each /v1 view names the scope it needs with @requires_scope;
a view that names none needs `admin`, so a new endpoint is closed until someone decides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

import redis
from flask import current_app, g, request

from massmailer import apikeys
from massmailer.api.body import check_query
from massmailer.api.errors import error_response
from massmailer.extensions import db
from massmailer.models import ApiKey
from massmailer.quotas import MemoryQuotas, Quota, Quotas, RedisQuotas, retry_after

logger = logging.getLogger(__name__)
View = TypeVar("View", bound=Callable)


class QuotaExceeded(Exception):
    """Over a per-key quota: answered 429 with Retry-After."""

    def __init__(self, message: str, wait_seconds: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after(wait_seconds)


class Forbidden(Exception):
    """The key may not do this (scope or sender domain): answered 403 naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def requires_scope(scope: str, *, query: tuple[str, ...] = ()) -> Callable[[View], View]:
    """Mark a /v1 view with the scope a key needs and the query parameters it reads."""
    if scope not in apikeys.SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def mark(view: View) -> View:
        view.required_scope = scope  # type: ignore[attr-defined]
        view.query_params = query  # type: ignore[attr-defined]
        return view

    return mark


def require_api_key():
    """before_request hook: 401 without a valid key, 429 over its rate, 403 outside its scopes."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    key = None
    if scheme.lower() == "bearer" and raw.strip():
        key = apikeys.authenticate(db.session, raw.strip())
    if key is None:
        # One answer for missing, wrong and revoked keys: it tells a prober nothing.
        response = error_response(401, "a valid API key is required", "Authorization")
        response[0].headers["WWW-Authenticate"] = 'Bearer realm="massmailer"'
        return response
    g.api_key = key
    # Counted before the scope check, so a key cannot probe endpoints without limit.
    _take(lambda q: q.take_request(key.id, quota_of(key)), "requests per second")
    view = current_app.view_functions.get(request.endpoint or "")
    scope = getattr(view, "required_scope", "admin")
    if not apikeys.has_scope(key, scope):
        raise Forbidden("Authorization", f"this API key lacks the {scope!r} scope")
    check_query(getattr(view, "query_params", ()))
    return None


def check_sender(address: str) -> None:
    """Refuse (403) a `from` outside the caller's allowed sender domains."""
    if not apikeys.may_send_from(g.api_key, address):
        allowed = ", ".join(g.api_key.sender_domains or ())
        raise Forbidden("from", f"this API key may send only from: {allowed}")


def take_recipients(count: int) -> None:
    """Count recipients toward the caller's daily cap; 429 when they would exceed it."""
    key = g.api_key
    _take(lambda q: q.take_recipients(key.id, count, quota_of(key)), "recipients per day")


def quota_of(key: ApiKey) -> Quota:
    """The key's own quota where set, else the configured defaults."""
    settings = current_app.extensions["massmailer.settings"]
    return Quota(
        rate_per_second=key.rate_per_second or settings.key_rate_per_second,
        burst=key.burst or settings.key_burst,
        recipients_per_day=key.recipients_per_day or settings.key_recipients_per_day,
    )


def _take(check: Callable[[Quotas], float], what: str) -> None:
    try:
        wait = check(_quotas())
    except redis.RedisError as exc:
        # A Redis outage must not stop intake; the quota is a guard against abuse, not a
        # correctness rule, so it is skipped (and said) while Redis is away.
        logger.warning("event=quota_unchecked reason=redis_error error=%s", type(exc).__name__)
        return
    if wait > 0:
        raise QuotaExceeded(f"this API key is over its quota of {what}", wait)


def request_path_redis(redis_url: str | None) -> redis.Redis | None:
    """A client for stores a request waits on (quotas, webhook replays), or None without Redis.

    Short timeouts: a Redis that hangs must cost a request half a second, not a worker.
    """
    if not redis_url:
        return None
    return redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)


def _quotas() -> Quotas:
    """This process's quota store, made on first use (after any fork)."""
    found = current_app.extensions.get("massmailer.quotas")
    if found is not None and found[0] == os.getpid():
        return found[1]
    settings = current_app.extensions["massmailer.settings"]
    client = request_path_redis(settings.redis_url)
    quotas: Quotas = (
        RedisQuotas(client, settings.redis_key_prefix) if client is not None else MemoryQuotas()
    )
    current_app.extensions["massmailer.quotas"] = (os.getpid(), quotas)
    return quotas
