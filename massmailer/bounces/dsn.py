"""RFC 3464 delivery status notifications: multipart/report; report-type=delivery-status."""

from __future__ import annotations

from email import message_from_bytes
from email.message import Message

from massmailer.bounces.report import Report, address_of, enhanced_code, one_line, returned_ids

# One report may cover several recipients; ours have one, but pick the most telling block.
_ACTION_RANK = {"failed": 0, "delayed": 1}


def parse_dsn(msg: Message) -> Report | None:
    """The report of a DSN, or None when it has no per-recipient block with an Action."""
    blocks = [b for b in _status_blocks(msg) if b.get("Action")]
    if not blocks:
        return None
    block = min(blocks, key=lambda b: _ACTION_RANK.get(str(b["Action"]).strip().lower(), 9))
    status = enhanced_code(str(block.get("Status", "")))
    diagnostic = one_line(block.get("Diagnostic-Code", "")) or None
    ids, senders, provider = returned_ids(returned_headers(msg))
    return Report(
        format="dsn",
        action=str(block["Action"]).strip().lower(),
        status=status or enhanced_code(diagnostic),
        diagnostic=diagnostic.split(";", 1)[-1].strip() if diagnostic else None,
        recipient=address_of(block.get("Final-Recipient") or block.get("Original-Recipient")),
        message_ids=ids,
        senders=senders,
        provider_ids=provider,
    )


def _status_blocks(msg: Message) -> list[Message]:
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            return [p for p in payload if isinstance(p, Message)]
        # Some MTAs send it base64-encoded: the parser then leaves it as text.
        raw = part.get_payload(decode=True) or b""
        return [message_from_bytes(chunk) for chunk in raw.replace(b"\r\n", b"\n").split(b"\n\n")]
    return []


def returned_headers(msg: Message) -> Message | None:
    """The headers of the returned message (message/rfc822 or text/rfc822-headers part)."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                return payload[0]
        if kind == "text/rfc822-headers":
            return message_from_bytes(part.get_payload(decode=True) or b"")
    return None
