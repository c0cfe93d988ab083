"""/v1/webhooks: a key's webhook endpoints (create, list, delete, test) and their deliveries.

The secret is answered once, at creation. Each key sees and changes only its own endpoints, and
its endpoints get the events of its own emails and batches. The URL is checked (https, a public
address after DNS) here and again before every try (massmailer/webhooks/guard.py).
"""

from __future__ import annotations

from flask import Blueprint, current_app, g
from sqlalchemy import func, select

from massmailer import audit
from massmailer.api.auth import requires_scope
from massmailer.api.body import json_body
from massmailer.api.errors import error_response
from massmailer.api.serialize import rfc3339
from massmailer.extensions import db
from massmailer.models import WebhookDelivery, WebhookEndpoint
from massmailer.models.types import utcnow
from massmailer.validation import ValidationError
from massmailer.webhooks import EVENT_TYPES, store
from massmailer.webhooks.guard import MAX_URL_CHARS, RefusedTarget, resolve_target
from massmailer.webhooks.signing import new_secret

bp = Blueprint("webhooks", __name__)

MAX_ENDPOINTS_PER_KEY = 20
MAX_DELIVERIES_SHOWN = 100
FIELDS = ("url", "events")


def endpoint_json(row: WebhookEndpoint) -> dict:
    """An endpoint as the API shows it (never its secret)."""
    return {
        "id": row.id,
        "url": row.url,
        "events": row.events.split(),
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "created_at": rfc3339(row.created_at),
    }


def delivery_json(row: WebhookDelivery) -> dict:
    """One try, as the API shows it."""
    return {
        "id": row.id,
        "message_id": f"msg_{row.outbox_id}",
        "attempt": row.attempt,
        "at": rfc3339(row.at),
        "outcome": row.outcome,
        "status_code": row.status_code,
        "error": row.error,
        "duration_ms": row.duration_ms,
    }


@bp.post("/webhooks")
@requires_scope("webhooks")
def create_webhook():
    """Register an endpoint; the answer carries its secret, shown this once."""
    url, events = _parse(json_body())
    key_id = g.api_key.id
    owned = select(func.count()).where(WebhookEndpoint.api_key_id == key_id)
    if db.session.scalar(owned) >= MAX_ENDPOINTS_PER_KEY:
        return error_response(409, f"a key has at most {MAX_ENDPOINTS_PER_KEY} endpoints", "url")
    row = WebhookEndpoint(
        api_key_id=key_id, url=url, events=" ".join(events), secret=new_secret(), enabled=True,
        created_at=utcnow(),
    )  # fmt: skip
    db.session.add(row)
    db.session.flush()
    audit.record(db.session, "webhook.create", str(row.id), key=g.api_key, detail=row.events)
    db.session.commit()
    return endpoint_json(row) | {"secret": row.secret}, 201


@bp.get("/webhooks")
@requires_scope("webhooks")
def list_webhooks():
    query = select(WebhookEndpoint).where(WebhookEndpoint.api_key_id == g.api_key.id)
    return {"items": [endpoint_json(r) for r in db.session.scalars(query.order_by("id"))]}


@bp.delete("/webhooks/<int:webhook_id>")
@requires_scope("webhooks")
def delete_webhook(webhook_id: int):
    row = _owned(webhook_id)
    if row is None:
        return error_response(404, f"no webhook {webhook_id}", "webhook_id")
    db.session.delete(row)
    audit.record(db.session, "webhook.delete", str(webhook_id), key=g.api_key)
    db.session.commit()
    return "", 204


@bp.post("/webhooks/<int:webhook_id>/test")
@requires_scope("webhooks")
def test_webhook(webhook_id: int):
    """Queue a `webhook.test` message; its tries show in the deliveries."""
    row = _owned(webhook_id)
    if row is None:
        return error_response(404, f"no webhook {webhook_id}", "webhook_id")
    message = store.enqueue_test(db.session, row)
    db.session.commit()
    return {"message_id": f"msg_{message.id}", "type": message.type}, 202


@bp.get("/webhooks/<int:webhook_id>/deliveries")
@requires_scope("webhooks")
def list_deliveries(webhook_id: int):
    """The latest tries, newest first."""
    if _owned(webhook_id) is None:
        return error_response(404, f"no webhook {webhook_id}", "webhook_id")
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == webhook_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(MAX_DELIVERIES_SHOWN)
    )
    return {"items": [delivery_json(r) for r in db.session.scalars(query)]}


def _owned(webhook_id: int) -> WebhookEndpoint | None:
    row = db.session.get(WebhookEndpoint, webhook_id)
    return row if row is not None and row.api_key_id == g.api_key.id else None


def _parse(payload: object) -> tuple[str, list[str]]:
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    for key in payload:
        if key not in FIELDS:
            raise ValidationError(str(key)[:40], "is not a known field (url, events)")
    events = payload.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e in EVENT_TYPES for e in events)
    ):
        raise ValidationError("events", f"must be a non-empty list of: {', '.join(EVENT_TYPES)}")
    url = payload.get("url")
    if not isinstance(url, str) or not 1 <= len(url) <= MAX_URL_CHARS:
        raise ValidationError("url", f"must be a URL of at most {MAX_URL_CHARS} characters")
    allow_private = current_app.extensions["massmailer.settings"].webhook_allow_private
    try:
        resolve_target(url, allow_private=allow_private)
    except RefusedTarget as exc:
        raise ValidationError("url", str(exc)) from exc
    return url, list(dict.fromkeys(events))
