"""Amazon SES notifications (Bounce, Complaint; delivery delays) into ProviderEvents.

https://docs.aws.amazon.com/ses/latest/dg/notification-contents.html
The SNS Message is the SES JSON. Jobs are matched by mail.messageId, the SES message id that
SES's 250 reply carried ("250 Ok <id>"), stored as the job's provider_queue_id; our own
Message-ID is tried too, from mail.headers when SES includes them.
"""

from __future__ import annotations

import json

from massmailer.bounces.hooks import ProviderEvent, Refused, angle
from massmailer.bounces.report import Kind, classify, enhanced_code

# SES says these mean "remove the address": the mailbox is gone or already on a list.
HARD_SUBTYPES = {"General", "NoEmail", "Suppressed", "OnAccountSuppressionList"}


def events(sns_message: dict) -> list[ProviderEvent]:
    """The events of one verified SES notification; none for the kinds we do not act on."""
    try:
        ses = json.loads(sns_message.get("Message") or "")
    except (ValueError, TypeError):
        raise Refused(400, "the SNS Message is not SES JSON") from None
    if not isinstance(ses, dict):
        raise Refused(400, "the SNS Message is not SES JSON")
    kind = ses.get("notificationType") or ses.get("eventType")
    mail = ses.get("mail") if isinstance(ses.get("mail"), dict) else {}
    raw = str(sns_message.get("Message")).encode("utf-8", "replace")
    if kind == "Bounce":
        return _bounces(ses.get("bounce") or {}, mail, raw)
    if kind == "Complaint":
        return _complaints(ses.get("complaint") or {}, mail, raw)
    if kind == "DeliveryDelay":
        return _delays(ses.get("deliveryDelay") or {}, mail, raw)
    return []


def bounce_kind(bounce_type: str | None, subtype: str | None, status: str | None) -> Kind:
    """Permanent: hard per subtype (General by its status when given); Transient: a delay."""
    if bounce_type == "Transient":
        return Kind.DELAYED
    if bounce_type != "Permanent":
        return Kind.BOUNCE  # Undetermined: the message is lost, the address is not condemned
    if subtype == "General" and status:
        return classify("dsn", "failed", status)
    return Kind.HARD_BOUNCE if subtype in HARD_SUBTYPES else Kind.BOUNCE


def _bounces(bounce: dict, mail: dict, raw: bytes) -> list[ProviderEvent]:
    found = []
    for rcpt in _list(bounce.get("bouncedRecipients")):
        status = enhanced_code(rcpt.get("status")) or enhanced_code(rcpt.get("diagnosticCode"))
        kind = bounce_kind(bounce.get("bounceType"), bounce.get("bounceSubType"), status)
        diagnostic = rcpt.get("diagnosticCode") or (
            f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')}"
        )
        found.append(_event(bounce.get("feedbackId"), rcpt, kind, status, diagnostic, mail, raw))
    return found


def _complaints(complaint: dict, mail: dict, raw: bytes) -> list[ProviderEvent]:
    feedback = complaint.get("complaintFeedbackType")
    kind = Kind.NONE if feedback == "not-spam" else Kind.COMPLAINT
    detail = f"complaint {feedback or 'abuse'}"
    return [
        _event(complaint.get("feedbackId"), rcpt, kind, None, detail, mail, raw)
        for rcpt in _list(complaint.get("complainedRecipients"))
    ]


def _delays(delay: dict, mail: dict, raw: bytes) -> list[ProviderEvent]:
    status = enhanced_code(delay.get("diagnosticCode"))
    detail = delay.get("diagnosticCode") or f"delayed {delay.get('delayType')}"
    event_id = f"delay:{mail.get('messageId')}:{delay.get('timestamp')}"
    return [
        _event(event_id, rcpt, Kind.DELAYED, status, detail, mail, raw)
        for rcpt in _list(delay.get("delayedRecipients"))
    ]


def _event(feedback_id, rcpt: dict, kind, status, diagnostic, mail: dict, raw) -> ProviderEvent:
    if not feedback_id:
        raise Refused(400, "the SES notification has no feedbackId")
    address = str(rcpt.get("emailAddress") or "").strip().lower() or None
    ids = tuple(i for i in (angle(_header(mail, "Message-ID")),) if i)
    message_id = str(mail.get("messageId") or "")
    return ProviderEvent(
        provider="ses",
        event_id=f"{feedback_id}:{address}",
        kind=kind,
        recipient=address,
        status=status,
        diagnostic=str(diagnostic)[:1000] if diagnostic else None,
        message_ids=ids,
        provider_ids=(message_id,) if message_id else (),
        raw=raw,
    )


def _header(mail: dict, name: str) -> str | None:
    for header in _list(mail.get("headers")):
        if str(header.get("name", "")).lower() == name.lower():
            return header.get("value")
    return None


def _list(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
