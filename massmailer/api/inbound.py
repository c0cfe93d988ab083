"""POST /v1/inbound/raw: a raw bounce, complaint or unsubscribe mail over HTTP.

For platforms where only HTTP reaches the app: a forwarding MX service posting the message as
the body (any content type but form data; `?to=` names the envelope recipient), SendGrid
Inbound Parse with "POST the raw, full MIME message" (form fields `email` and `envelope`) and
Mailgun routes forwarding to a URL ending in "mime" (form fields `body-mime` and `recipient`).
Not an API key: a shared token (MASSMAILER_INBOUND_TOKEN) as `Authorization: Bearer`, or as
the basic-auth password for services that can only put credentials in the URL (SendGrid,
Mailgun: https://inbound:TOKEN@host/v1/inbound/raw). Never in the query string, which access
logs keep. Unset, every request is refused.
"""

from __future__ import annotations

import hmac
import json

from flask import Blueprint, current_app, jsonify, request

from massmailer.api.errors import error_response
from massmailer.bounces.inbox import DUPLICATE, Inbox
from massmailer.extensions import db
from massmailer.models.types import utcnow

bp = Blueprint("inbound", __name__, url_prefix="/v1/inbound")
SCOPE = "inbound"  # not an API key scope: the OpenAPI document names the token this way


@bp.post("/raw")
def receive_raw():
    settings = current_app.extensions["massmailer.settings"]
    if not _authorized(settings.inbound_token):
        return error_response(401, "a valid inbound token is required", "Authorization")
    raw, envelope_to = _message()
    if not raw:
        return error_response(400, "the body must be the raw message", "body")
    if len(raw) > settings.bounce_max_bytes:
        return error_response(413, "the message is over MASSMAILER_BOUNCE_MAX_BYTES", "body")
    received = Inbox(settings).receive(db.session, raw, envelope_to, "http", utcnow())
    body = {"id": received.report_id, "state": received.state, "job_id": received.job_id}
    return jsonify(body), 200 if received.state == DUPLICATE else 202


receive_raw.required_scope = SCOPE  # type: ignore[attr-defined]


def _authorized(token: str | None) -> bool:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:]
    else:
        given = request.authorization.password if request.authorization else None
    # Constant-time, and over bytes: compare_digest refuses non-ASCII str.
    return bool(token and given) and hmac.compare_digest(given.encode(), token.encode())


def _message() -> tuple[bytes, str | None]:
    """The raw message and its envelope recipient, from the body or the form a service posts."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = request.form
        raw = form.get("email") or form.get("body-mime") or ""
        return raw.encode("utf-8", "surrogateescape"), _form_recipient(form)
    return request.get_data(cache=False), request.args.get("to") or None


def _form_recipient(form) -> str | None:
    if form.get("recipient"):  # Mailgun
        return form["recipient"]
    try:
        envelope = json.loads(form.get("envelope") or "{}")  # SendGrid: {"to": [...], "from"}
    except ValueError:
        return None
    to = envelope.get("to") if isinstance(envelope, dict) else None
    return to[0] if isinstance(to, list) and to and isinstance(to[0], str) else None
