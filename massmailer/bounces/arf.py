"""RFC 5965 feedback reports (complaints): multipart/report; report-type=feedback-report."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message

from massmailer.bounces.dsn import returned_headers
from massmailer.bounces.report import Report, address_of, one_line, returned_ids


def parse_arf(msg: Message) -> Report | None:
    """The report of an ARF message, or None when it has no message/feedback-report part."""
    fields = _feedback_fields(msg)
    if fields is None or not fields.get("Feedback-Type"):
        return None
    headers = returned_headers(msg)
    ids, senders, provider = returned_ids(headers)
    quoted = [address_of(v) for v in fields.get_all("Original-Mail-From", [])]
    recipient = address_of(fields.get("Original-Rcpt-To")) or (
        address_of(str(headers.get("To", ""))) if headers is not None else None
    )
    return Report(
        format="arf",
        action=str(fields["Feedback-Type"]).strip().lower(),
        diagnostic=one_line(fields.get("User-Agent")),
        recipient=recipient,
        message_ids=ids,
        senders=tuple(s for s in quoted if s) + senders,
        provider_ids=provider,
    )


def _feedback_fields(msg: Message) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            return payload[0]  # the parser reads message/* parts as an embedded message
        return message_from_bytes(part.get_payload(decode=True) or b"")
    return None
