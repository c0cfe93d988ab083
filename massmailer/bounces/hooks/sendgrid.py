"""SendGrid Event Webhook: ECDSA P-256 (SHA-256) over timestamp + raw body, then events.

https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/getting-started-event-webhook-security-features
The public key (MASSMAILER_SENDGRID_WEBHOOK_PUBLIC_KEY) is the base64 DER SubjectPublicKeyInfo
SendGrid shows once signing is enabled. The signature (base64 DER) and the timestamp come in
`X-Twilio-Email-Event-Webhook-Signature` and `X-Twilio-Email-Event-Webhook-Timestamp`.
A timestamp outside the window, or a signature seen before, is a replay.
"""

from __future__ import annotations

import base64
import binascii
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from massmailer.bounces.hooks import ProviderEvent, Refused, angle
from massmailer.bounces.hooks.replay import SeenOnce
from massmailer.bounces.report import Kind, classify, enhanced_code

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# SendGrid keeps these addresses on its own lists: the mailbox is known to be gone.
HARD_DROPS = {"bounced address", "invalid"}


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The configured key: base64 DER of a P-256 public key (ValueError otherwise)."""
    try:
        key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("not a base64 DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not a P-256 (prime256v1) public key")
    return key


def verify(
    key: ec.EllipticCurvePublicKey,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    max_age: int,
    seen: SeenOnce,
) -> None:
    """Refused unless the signature covers timestamp + body, is fresh and is new."""
    if not signature or not timestamp:
        raise Refused(401, f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required")
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, UnicodeEncodeError, InvalidSignature):
        raise Refused(403, "the SendGrid signature does not verify") from None
    check_fresh(timestamp, now, max_age)
    if not seen.first_time("sendgrid:" + signature, 2 * max_age):
        raise Refused(409, "this signed post was seen before (replay)")


def check_fresh(timestamp: str, now: float, max_age: int) -> None:
    """Refused when a Unix timestamp is more than max_age seconds away from now."""
    try:
        age = now - int(timestamp)
    except ValueError:
        raise Refused(400, "the timestamp is not a Unix time") from None
    if abs(age) > max_age:
        raise Refused(403, "the timestamp is outside the accepted window (replay?)")


def events(body: bytes) -> list[ProviderEvent]:
    """The events of a verified post that ask for something; the others are skipped."""
    try:
        posted = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(posted, list):
        raise Refused(400, "the body is not a list of events")
    found = []
    for item in posted:
        event = _event(item) if isinstance(item, dict) else None
        if event is not None:
            found.append(event)
    return found


def event_kind(item: dict) -> Kind:
    """What one SendGrid event means (issue 12's effects table)."""
    name = item.get("event")
    if name == "spamreport":
        return Kind.COMPLAINT
    if name == "deferred":
        return Kind.DELAYED
    if name == "dropped":
        hard = str(item.get("reason", "")).strip().lower() in HARD_DROPS
        return Kind.HARD_BOUNCE if hard else Kind.BOUNCE
    if name == "bounce":
        if item.get("type") == "blocked":
            return Kind.BOUNCE
        return classify("dsn", "failed", _status(item))
    return Kind.NONE


def _event(item: dict) -> ProviderEvent | None:
    kind = event_kind(item)
    event_id = str(item.get("sg_event_id") or "")
    if kind == Kind.NONE or not event_id:
        return None
    sg_id = str(item.get("sg_message_id") or "")
    return ProviderEvent(
        provider="sendgrid",
        event_id=event_id,
        kind=kind,
        recipient=str(item.get("email") or "").strip().lower() or None,
        status=_status(item),
        diagnostic=str(item.get("reason") or item.get("response") or item.get("event"))[:1000],
        message_ids=tuple(i for i in (angle(item.get("smtp-id")),) if i),
        provider_ids=(sg_id.split(".", 1)[0],) if sg_id else (),
        raw=json.dumps(item, sort_keys=True).encode(),
    )


def _status(item: dict) -> str | None:
    return enhanced_code(str(item.get("status") or "")) or enhanced_code(item.get("reason"))
