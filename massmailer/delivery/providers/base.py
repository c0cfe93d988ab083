"""What every provider agrees on: its configuration, a delivery receipt and a classified failure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from massmailer.delivery.warmup import Warmup, utc_date

# What the job columns hold (models/jobs.py): a value longer than its column would make every
# outcome flush of its chunk fail, so values from a provider are cut to size where they enter.
PROVIDER_NAME_MAX = 50
QUEUE_ID_MAX = 255
REPLY_MAX = 512


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    SSL = "ssl"


@dataclass(frozen=True)
class ProviderConfig:
    """One SMTP provider as configured by the operator (secrets stay out of repr)."""

    name: str
    host: str
    port: int
    tls: TlsMode = TlsMode.NONE
    username: str | None = None
    password: str | None = None
    weight: int = 1
    rate_per_second: float | None = None
    rate_per_day: int | None = None
    max_connections: int = 10
    timeout_seconds: float = 30.0
    # A private CA bundle for relays with their own certificates (and the tests' self-signed one).
    ca_file: str | None = None
    # Headers this provider rewrites (SES: message-id, date), left out of DKIM's h= list.
    dkim_exclude_headers: tuple[str, ...] = ()
    # A new IP's or domain's daily caps rising by day (delivery/warmup.py); None: rate_per_day.
    warmup: Warmup | None = None

    def __repr__(self) -> str:
        return f"ProviderConfig(name={self.name!r}, host={self.host!r}, port={self.port})"

    def daily_cap(self, now: float | None = None) -> int | None:
        """The daily cap in force on the UTC date of `now` (default: now): the warm-up's or
        `rate_per_day`; None when the provider has no daily cap that day."""
        if self.warmup is None:
            return self.rate_per_day
        today = utc_date(time.time() if now is None else now)
        return self.warmup.cap_on(today, self.rate_per_day)

    @property
    def transaction_seconds(self) -> float:
        """The default wall-clock bound of one SMTP transaction (MAIL to the reply after DATA).

        smtplib's timeout applies to each socket call, so a server that dribbles bytes could hold
        a send forever; the session enforces this bound as a whole (see SmtpSession.send).
        """
        return self.timeout_seconds


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT_RECIPIENT = "permanent_recipient"
    PROVIDER_FAULT = "provider_fault"
    BAD_DATA = "bad_data"
    # Chaining (RFC 2920 3.1) puts the next envelope on the wire behind a message's final dot.
    # If the connection drops there, the next message never had its data sent: NOT_SENT, retried
    # without charging an attempt. The message whose dot was sent but whose reply never came may
    # have been accepted: UNKNOWN_OUTCOME, retried and counted as a possible duplicate.
    NOT_SENT = "not_sent"
    UNKNOWN_OUTCOME = "unknown_outcome"
    # A 4xx that says "slow down" (delivery/throttle.py): transient, charged no attempt, not a
    # provider fault; it cuts the provider's effective rate for a while (limits/aimd.py).
    THROTTLED = "throttled"


class SendError(Exception):
    """A failed send, already classified at the provider edge so nobody above parses strings."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        smtp_code: int | None = None,
        enhanced: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.smtp_code = smtp_code
        self.enhanced = enhanced

    def __repr__(self) -> str:
        return f"SendError({self.kind}, {self.smtp_code}, {self.enhanced}, {self.message!r})"


@dataclass(frozen=True)
class Delivered:
    """The provider's 250 after DATA: its reply text and, when it names one, its queue id.

    Both are cut to what their columns hold (`REPLY_MAX`, `QUEUE_ID_MAX`).
    """

    provider: str
    smtp_code: int
    reply: str
    queue_id: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "reply", self.reply[:REPLY_MAX])
        if self.queue_id is not None:
            object.__setattr__(self, "queue_id", self.queue_id[:QUEUE_ID_MAX] or None)


@dataclass(frozen=True)
class Envelope:
    """One single-recipient message for SmtpSession.send_many; `key` is the caller's (a job id)."""

    mail_from: str
    rcpt: str
    message: bytes
    key: object = None
