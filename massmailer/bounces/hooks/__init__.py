"""Provider webhooks (SES through SNS, SendGrid, Mailgun): verify, then read events.

Each module checks its provider's signature before it reads anything and turns what it
believes into ProviderEvents; the inbox stores each once (keyed on the provider's event id)
and applies it with the same effects as a DSN or an ARF report.
"""

from __future__ import annotations

from dataclasses import dataclass

from massmailer.bounces.report import Kind


class Refused(Exception):
    """A post that is not believed: answered with `status` and changes nothing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ProviderEvent:
    """One provider event about one recipient of one message, as verified."""

    provider: str  # ses, sendgrid, mailgun
    event_id: str  # the provider's id of this event: the dedupe key
    kind: Kind
    recipient: str | None
    status: str | None = None  # enhanced status code, 5.1.1
    diagnostic: str | None = None
    message_ids: tuple[str, ...] = ()  # our Message-IDs, "<…@…>"
    provider_ids: tuple[str, ...] = ()  # the provider's message ids (the queue id of its 250)
    raw: bytes = b""  # the event as received, kept for the operator


def angle(message_id: object) -> str | None:
    """A Message-ID in angle brackets, or None when it is not one."""
    text = str(message_id or "").strip()
    if not text or "@" not in text or not text.isascii() or len(text) > 500:
        return None
    return text if text.startswith("<") else f"<{text.strip('<>')}>"
