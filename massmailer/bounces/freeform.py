"""Non-standard bounce texts (Exim, qmail, older Exchange, …), read by flufl.bounce.

flufl.bounce (GNU Mailman's detectors) knows which addresses failed and whether for good; the
status code and the returned message's Message-ID are read here from the text, where those
formats quote them (Exim and qmail append the returned message after the explanation).
"""

from __future__ import annotations

import logging
import re
from email.message import Message

from flufl.bounce import all_failures

from massmailer.bounces.dsn import returned_headers
from massmailer.bounces.report import ENHANCED, Report, one_line, returned_ids

# flufl.bounce logs a traceback at ERROR whenever one of its detectors trips over a message
# it was not written for (one without From, say) and goes on with the next: that is not ours
# to report on every inbound message.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

_LINES = re.IGNORECASE | re.MULTILINE
_QUOTED_ID = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+@[^<>\s]+>)", _LINES)
_QUOTED_SENDER = re.compile(r"^\s*Return-Path:\s*<([^<>\s]+@[^<>\s]+)>", _LINES)
_SMTP_CODE = re.compile(r"\b([45])[0-9]{2}[ -]")


def parse_freeform(msg: Message) -> Report | None:
    """The report of a non-standard bounce, or None when no detector recognises it."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # third-party detectors on hostile input: then it is not a bounce we read
        return None
    failed = sorted(permanent) or sorted(temporary)
    if not failed:
        return None
    recipient = failed[0].decode("ascii", "replace").lower()
    text = _text_of(msg)
    diagnostic, status = _diagnostic(text, recipient, permanent=bool(permanent))
    ids, senders, provider = returned_ids(returned_headers(msg))
    own = str(msg.get("Message-ID", ""))
    return Report(
        format="freeform",
        action="failed" if permanent else "delayed",
        status=status,
        diagnostic=diagnostic,
        recipient=recipient,
        message_ids=ids or _quoted_ids(text, own),
        senders=senders or tuple(_QUOTED_SENDER.findall(text)),
        provider_ids=provider,
    )


def _quoted_ids(text: str, own: str) -> tuple[str, ...]:
    """Message-IDs quoted in the text, but not the bounce's own."""
    return tuple(i for i in _QUOTED_ID.findall(text) if i not in own and i.isascii())


def _text_of(msg: Message) -> str:
    parts = []
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True) or b""
            parts.append(payload.decode(part.get_content_charset() or "latin-1", "replace"))
    return "\n".join(parts)


def _diagnostic(text: str, recipient: str, *, permanent: bool) -> tuple[str | None, str]:
    """The line that explains the failure and its enhanced code (x.0.0 when none is given)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if recipient in line.lower()), 0)
    for line in lines[start : start + 8]:
        match = ENHANCED.search(line)
        if match:
            return one_line(line), match.group(0)
    for line in lines[start : start + 8]:
        match = _SMTP_CODE.search(line)
        if match:
            return one_line(line), f"{match.group(1)}.0.0"
    return None, "5.0.0" if permanent else "4.0.0"
