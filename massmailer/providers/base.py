"""What every provider agrees on: its configuration, a delivery receipt and a classified failure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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

    def __repr__(self) -> str:
        return f"ProviderConfig(name={self.name!r}, host={self.host!r}, port={self.port})"


class FailureKind(StrEnum):
    TRANSIENT = "transient"
    PERMANENT_RECIPIENT = "permanent_recipient"
    PROVIDER_FAULT = "provider_fault"
    BAD_DATA = "bad_data"


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
    """The provider's 250 after DATA: its reply text and, when it names one, its queue id."""

    provider: str
    smtp_code: int
    reply: str
    queue_id: str | None
