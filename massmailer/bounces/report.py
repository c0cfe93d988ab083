"""What a parsed report says, and what it means for the job and the address (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from enum import StrEnum

ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
MESSAGE_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")


class Kind(StrEnum):
    """The effect a report has (the table of issue 12, item 4)."""

    HARD_BOUNCE = "hard_bounce"  # the mailbox does not exist: FAILED, address suppressed
    BOUNCE = "bounce"  # another permanent failure (policy, blocklist, …): FAILED only
    COMPLAINT = "complaint"  # "this is spam": stays SENT, address suppressed
    DELAYED = "delayed"  # still trying: an event only
    NONE = "none"  # a report that asks for nothing (delivered, relayed, not-spam)


@dataclass(frozen=True)
class Report:
    """One report, as parsed; what the returned message said about itself."""

    format: str  # dsn, arf or the non-standard detector's name
    action: str | None = None  # failed, delayed, delivered, … (DSN), or the Feedback-Type (ARF)
    status: str | None = None  # the enhanced status code, 5.1.1
    diagnostic: str | None = None
    recipient: str | None = None  # the failed or complaining address, as the report names it
    message_ids: tuple[str, ...] = ()  # Message-IDs of the returned message
    senders: tuple[str, ...] = ()  # envelope senders it quotes (Original-Mail-From, Return-Path)
    provider_ids: tuple[str, ...] = field(default=())  # provider message ids in returned headers

    @property
    def kind(self) -> Kind:
        return classify(self.format, self.action, self.status)


def classify(fmt: str, action: str | None, status: str | None) -> Kind:
    """Map a report to its effect: only 5.1.x and 5.2.1 say the mailbox itself is gone."""
    action = (action or "").lower()
    if fmt == "arf":
        return Kind.NONE if action == "not-spam" else Kind.COMPLAINT
    if action == "delayed":
        return Kind.DELAYED
    if action != "failed":
        return Kind.NONE
    if status and (status.startswith("5.1.") or status == "5.2.1"):
        return Kind.HARD_BOUNCE
    # Other permanent failures, and an MTA giving up on a 4.x.x (4.4.7 expired): the message is
    # lost, but a blocklisting or a full mailbox must not wipe the address from a list.
    return Kind.BOUNCE


def enhanced_code(text: str | None) -> str | None:
    """The first enhanced status code (RFC 3463) in text, or None."""
    match = ENHANCED.search(text or "")
    return match.group(0) if match else None


Ids = tuple[str, ...]


def returned_ids(headers: Message | None) -> tuple[Ids, Ids, Ids]:
    """Message-IDs, envelope senders and provider ids named by the returned message's headers."""
    if headers is None:
        return (), (), ()
    ids = tuple(i for i in MESSAGE_ID.findall(str(headers.get("Message-ID", ""))) if i.isascii())
    senders = tuple(
        s.strip().strip("<>") for s in headers.get_all("Return-Path", []) if "@" in str(s)
    )
    provider = tuple(
        str(v).strip().strip("<>")
        for name in ("X-SES-Message-ID", "X-Message-Id", "X-SG-ID")
        for v in headers.get_all(name, [])
        if str(v).strip() and str(v).isascii()
    )
    return ids, senders, provider


def address_of(value: str | None) -> str | None:
    """The address of a DSN field "rfc822; user@example.com" (or a bare address)."""
    if not value:
        return None
    value = str(value).split(";", 1)[-1].strip().strip("<>")
    return value.lower() if "@" in value else None


def one_line(value: object, limit: int = 1000) -> str | None:
    """A header value unfolded to one line, bounded, or None when empty."""
    text = " ".join(str(value or "").split())
    return clean(text[:limit])


def clean(value: object, limit: int = 1000) -> str | None:
    """Text PostgreSQL can store: no NUL, no lone surrogate (undecodable header bytes)."""
    if value is None:
        return None
    text = str(value).replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return text[:limit] or None
