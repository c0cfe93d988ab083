"""Mailgun webhooks: HMAC-SHA256 of timestamp + token under the signing key, then the event.

https://documentation.mailgun.com/docs/mailgun/user-manual/tracking-messages/#securing-webhooks
The JSON body is {"signature": {"timestamp", "token", "signature"}, "event-data": {…}}. The
signature covers only the timestamp and token, not the event, so a token is accepted once
(remembered in Redis for twice the window) and a timestamp only within the window.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from massmailer.bounces.hooks import ProviderEvent, Refused, angle
from massmailer.bounces.hooks.replay import SeenOnce
from massmailer.bounces.hooks.sendgrid import check_fresh
from massmailer.bounces.report import Kind, classify, enhanced_code


def read(body: bytes) -> dict:
    """The posted JSON object, or Refused."""
    try:
        posted = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(posted, dict) or not isinstance(posted.get("signature"), dict):
        raise Refused(401, "the body has no signature object")
    return posted


def verify(posted: dict, key: str, *, now: float, max_age: int, seen: SeenOnce) -> None:
    """Refused unless the HMAC matches, the timestamp is fresh and the token is new."""
    sig = posted["signature"]
    timestamp, token, given = (str(sig.get(k) or "") for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and given):
        raise Refused(401, "signature needs timestamp, token and signature")
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise Refused(403, "the Mailgun signature does not verify")
    check_fresh(timestamp, now, max_age)
    if not seen.first_time("mailgun:" + token, 2 * max_age):
        raise Refused(409, "this token was used before (replay)")


def event_kind(data: dict) -> Kind:
    """failed permanent: by its status code; failed temporary: a delay; complained."""
    name = data.get("event")
    if name == "complained":
        return Kind.COMPLAINT
    if name != "failed":
        return Kind.NONE
    if data.get("severity") == "temporary":
        return Kind.DELAYED
    if data.get("reason") == "suppress-bounce":  # already on Mailgun's bounce list
        return Kind.HARD_BOUNCE
    return classify("dsn", "failed", _status(data))


def events(posted: dict) -> list[ProviderEvent]:
    """The event of a verified post, if it asks for something."""
    data = posted.get("event-data")
    if not isinstance(data, dict):
        raise Refused(400, "the body has no event-data object")
    kind = event_kind(data)
    if kind == Kind.NONE:
        return []
    if not data.get("id"):
        raise Refused(400, "event-data has no id")
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    mailgun_id = str(headers.get("message-id") or "").strip("<> ")
    return [
        ProviderEvent(
            provider="mailgun",
            event_id=str(data["id"]),
            kind=kind,
            recipient=str(data.get("recipient") or "").strip().lower() or None,
            status=_status(data),
            diagnostic=_diagnostic(data),
            message_ids=tuple(i for i in (angle(mailgun_id),) if i),
            provider_ids=(mailgun_id,) if mailgun_id else (),
            raw=json.dumps(data, sort_keys=True).encode(),
        )
    ]


def _delivery(data: dict) -> dict:
    found = data.get("delivery-status")
    return found if isinstance(found, dict) else {}


def _status(data: dict) -> str | None:
    status = _delivery(data)
    for value in (status.get("enhanced-code"), status.get("message"), status.get("description")):
        found = enhanced_code(str(value or ""))
        if found:
            return found
    return None


def _diagnostic(data: dict) -> str | None:
    status = _delivery(data)
    text = " ".join(str(status.get(k) or "") for k in ("code", "message", "description")).strip()
    return (text or str(data.get("reason") or data.get("event")))[:1000]
