"""Check what a client sends before any job exists: addresses, header text, headers, one request.

Everything here is pure. Anything that ends up in a header is refused if it holds a control
character, so client input can never start a header of its own (design invariant 7).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3 path limit minus the angle brackets
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253
MAX_DISPLAY_NAME = 256
MAX_SUBJECT = 998  # RFC 5322 2.1.1 line limit
MAX_HEADER_VALUE = 998
MAX_HEADERS = 20
MAX_HEADER_NAME = 76
PRIORITIES = range(10)
CATEGORIES = ("transactional", "marketing")
REQUEST_FIELDS = (
    "to", "from", "subject", "text", "html", "priority", "headers", "category", "send_at",
)  # fmt: skip

# Tab is the only control character allowed in header text. Unicode line and paragraph
# separators count as line breaks for str.splitlines(), so they are refused with the rest.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_OR_TAB = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_QUOTED_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"\s*<([^<>]*)>')
_QUOTED_LOCAL = re.compile(r'"(?:[ !#-\[\]-~]|\\[ -~])*"')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 3.6.8: printable ASCII except colon
_MSG_ID = r"<[!-;=?-~]+@[!-;=?-~]+>"
_MSG_IDS = re.compile(rf"[ \t]*{_MSG_ID}(?:[ \t]+{_MSG_ID})*[ \t]*")
_LIST_ID = re.compile(rf"[ -;=?-~]*<{_ATEXT}(?:\.{_ATEXT})+>")
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:(\.\d{1,6})\d*)?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,  # \d would take any script's digits
)

# Header names compared in lower case; the canonical spelling is what we write.
_NAMED_HEADERS = {
    "reply-to": "Reply-To",
    "in-reply-to": "In-Reply-To",
    "references": "References",
    "list-id": "List-Id",
    "x-campaign-id": "X-Campaign-Id",
}
ALLOWED_HEADERS = frozenset(_NAMED_HEADERS)
"""Extra headers clients may set, besides custom "X-" headers (lower case)."""
RESERVED_HEADERS = frozenset(
    {
        "from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "sender",
        "received", "return-path", "dkim-signature", "list-unsubscribe",
        "list-unsubscribe-post", "content-type", "content-transfer-encoding",
    }
)  # fmt: skip
"""Headers MassMailer writes itself; any Content-* or Resent-* header is reserved too."""
# X- headers that steer a provider (SendGrid's X-SMTPAPI can add recipients) or our own pipeline.
_BLOCKED_X_PREFIXES = (
    "x-smtpapi", "x-ses-", "x-pm-", "x-mailgun-", "x-mc-", "x-msys-", "x-massmailer-", "x-spam-",
)  # fmt: skip


class ValidationError(Exception):
    """A client error naming the field at fault and what was expected."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class EmailRequest:
    """One validated single-send request; addresses in their ASCII form, send_at in UTC."""

    to_name: str | None
    to_addr: str
    from_name: str | None
    from_addr: str
    subject: str
    text: str | None
    html: str | None
    priority: int
    headers: tuple[tuple[str, str], ...]
    category: str
    send_at: datetime | None


# --- addresses -----------------------------------------------------------------------------


def parse_address(value: object, field: str) -> tuple[str | None, str]:
    """Return (display name or None, address) from "user@example.com" or "Name <user@...>"."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string like user@example.com")
    if _CONTROL_OR_TAB.search(value):
        raise ValidationError(field, "must not contain control characters or line breaks")
    value = value.strip()
    if not value:
        raise ValidationError(field, "must not be empty")
    name, addr = _split_name(value, field)
    return name, check_addr_spec(addr, field)


def check_addr_spec(addr: str, field: str) -> str:
    """Return addr with its domain in lower-case ASCII (IDNA) form, or raise ValidationError."""
    if len(addr) > MAX_ADDRESS:
        raise ValidationError(field, f"must be at most {MAX_ADDRESS} characters")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise ValidationError(field, "must be an email address like user@example.com")
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED_LOCAL.fullmatch(local)):
        if _looks_like_several(addr):
            raise ValidationError(field, "must be a single address")
        raise ValidationError(field, "has an invalid local part (before the @)")
    if len(local) > MAX_LOCAL_PART:
        raise ValidationError(field, f"local part must be at most {MAX_LOCAL_PART} characters")
    addr = f"{local}@{_ascii_domain(domain, field)}"
    if len(addr) > MAX_ADDRESS:
        raise ValidationError(field, f"must be at most {MAX_ADDRESS} characters")
    return addr


def _split_name(value: str, field: str) -> tuple[str | None, str]:
    """Split "Name <addr>" or '"Name" <addr>' into its parts; a bare address has no name."""
    if not value.endswith(">"):
        if "<" in value or ">" in value:
            raise ValidationError(field, "must look like user@example.com or Name <user@...>")
        return None, value
    quoted = _QUOTED_NAME.fullmatch(value)
    if quoted:
        return _display_name(re.sub(r"\\(.)", r"\1", quoted[1]), field), quoted[2].strip()
    cut = value.rfind("<")
    name = value[:cut].strip()
    if cut < 0 or "<" in name or ">" in name:
        raise ValidationError(field, "must be a single address like Name <user@example.com>")
    if re.search(r'[,;@"\\]', name):
        raise ValidationError(
            field, 'must be a single address; quote a display name with , ; or @ ("A, B" <...>)'
        )
    return _display_name(name, field), value[cut + 1 : -1].strip()


def _display_name(name: str, field: str) -> str | None:
    """Return the display name, or None when it is blank."""
    name = name.strip()
    if len(name) > MAX_DISPLAY_NAME:
        raise ValidationError(field, f"display name must be at most {MAX_DISPLAY_NAME} characters")
    _check_unicode(name, field)
    return name or None


def _ascii_domain(domain: str, field: str) -> str:
    """Return the domain in lower-case ASCII; an internationalized one is IDNA-encoded."""
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValidationError(field, "has a domain that is not a valid host name") from None
    domain = domain.lower()
    labels = domain.split(".")
    if (
        len(domain) > MAX_DOMAIN
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValidationError(field, "must have a domain like example.com")
    return domain


def _looks_like_several(addr: str) -> bool:
    """Tell whether a rejected address is really a list of them."""
    return addr.count("@") > 1 and bool(re.search(r"[,;\s]", addr))


# --- header text and headers ---------------------------------------------------------------


def check_header_text(value: object, field: str, max_len: int) -> str:
    """Return value if it is a string without line breaks or control characters (tab is fine)."""
    if not isinstance(value, str):
        raise ValidationError(field, "must be a string")
    if _CONTROL.search(value):
        raise ValidationError(field, "must not contain line breaks or control characters")
    if len(value) > max_len:
        raise ValidationError(field, f"must be at most {max_len} characters")
    _check_unicode(value, field)
    return value


def parse_headers(value: object, field: str = "headers") -> tuple[tuple[str, str], ...]:
    """Return the client's extra headers as (canonical name, value) pairs, in their order."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValidationError(field, 'must be an object like {"X-Campaign-Id": "spring"}')
    if len(value) > MAX_HEADERS:
        raise ValidationError(field, f"must hold at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    result = []
    for name, text in value.items():
        canonical = _check_header_name(name, field)
        where = f"{field}.{canonical}"
        if canonical.lower() in seen:
            raise ValidationError(where, "is given twice")
        seen.add(canonical.lower())
        result.append((canonical, _check_header_value(canonical, text, where)))
    return tuple(result)


def _check_header_name(name: object, field: str) -> str:
    """Return the canonical spelling of an allowed header name."""
    if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name) or len(name) > MAX_HEADER_NAME:
        shown = name[:40] if isinstance(name, str) and name.isprintable() else "?"
        raise ValidationError(
            f"{field}.{shown}", "is not a valid header name (printable ASCII, no colon)"
        )
    key = name.lower()
    if key in RESERVED_HEADERS or key.startswith(("content-", "resent-")):
        raise ValidationError(f"{field}.{name}", "is set by MassMailer and cannot be given")
    if key in _NAMED_HEADERS:
        return _NAMED_HEADERS[key]
    if key.startswith("x-") and len(key) > 2 and not key.startswith(_BLOCKED_X_PREFIXES):
        return name
    raise ValidationError(
        f"{field}.{name}",
        "is not allowed; use Reply-To, In-Reply-To, References, List-Id or an X- header",
    )


def _check_header_value(name: str, value: object, field: str) -> str:
    """Return the header's value, checked for its kind: address, message ids or text."""
    value = check_header_text(value, field, MAX_HEADER_VALUE)
    if name == "Reply-To":
        display, addr = parse_address(value, field)
        return f"{_quote(display)} <{addr}>" if display else addr
    if name in ("In-Reply-To", "References") and not _MSG_IDS.fullmatch(value):
        raise ValidationError(field, "must be message ids like <id@example.com>")
    if name == "List-Id" and not _LIST_ID.fullmatch(value):
        raise ValidationError(field, "must look like Name <list.example.com> (ASCII)")
    return value


def _quote(text: str) -> str:
    """Return text as a quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_unicode(value: str, field: str) -> None:
    """Refuse lone surrogates, which JSON allows but UTF-8 cannot encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(field, "must be valid Unicode text") from None


# --- one request ---------------------------------------------------------------------------


def parse_email_request(
    payload: object, *, default_from: str | None, max_body_bytes: int = 1_000_000
) -> EmailRequest:
    """Return the validated single-send request, or raise ValidationError for the first fault."""
    if not isinstance(payload, dict):
        raise ValidationError("body", "must be a JSON object")
    for key in payload:
        if key not in REQUEST_FIELDS:
            raise ValidationError(
                str(key)[:40], f"is not a known field (expected {', '.join(REQUEST_FIELDS)})"
            )
    refuse_nulls(payload, OPTIONAL_FIELDS)
    to_name, to_addr = parse_address(_to_value(payload.get("to")), "to")
    from_name, from_addr = parse_address(_from_value(payload.get("from"), default_from), "from")
    if payload.get("subject") is None:
        raise ValidationError("subject", "is required")
    subject = check_header_text(payload["subject"], "subject", MAX_SUBJECT)
    text, html = _bodies(payload.get("text"), payload.get("html"), max_body_bytes)
    return EmailRequest(
        to_name=to_name,
        to_addr=to_addr,
        from_name=from_name,
        from_addr=from_addr,
        subject=subject,
        text=text,
        html=html,
        priority=_priority(payload.get("priority")),
        headers=parse_headers(payload.get("headers")),
        category=_category(payload.get("category")),
        send_at=parse_send_at(payload.get("send_at")),
    )


# Optional fields: left out, each takes its default; the OpenAPI document gives none of them null.
OPTIONAL_FIELDS = ("from", "text", "html", "priority", "headers", "category", "send_at")


def refuse_nulls(payload: dict, fields: Iterable[str], prefix: str = "") -> None:
    """Refuse an optional field given as null, as the document does (leave it out instead)."""
    for name in fields:
        if name in payload and payload[name] is None:
            raise ValidationError(prefix + name, "must not be null; leave it out for the default")


def _to_value(value: object) -> object:
    """Return the recipient value, refusing a missing one or a list."""
    if value is None:
        raise ValidationError("to", "is required")
    if isinstance(value, list | tuple):
        raise ValidationError("to", "must be a single address; use a batch for several")
    return value


def _from_value(value: object, default_from: str | None) -> object:
    """Return the sender value, falling back to the configured default."""
    if value is None:
        value = default_from
    if value is None:
        raise ValidationError("from", "is required (no default sender is configured)")
    return value


def _bodies(text: object, html: object, max_bytes: int) -> tuple[str | None, str | None]:
    """Return the text and HTML parts: at least one non-empty, together at most max_bytes."""
    for field, value in (("text", text), ("html", html)):
        if value is not None and not isinstance(value, str):
            raise ValidationError(field, "must be a string")
    if not text and not html:
        raise ValidationError("text", "give a non-empty text or html body")
    size = 0
    for field, value in (("text", text), ("html", html)):
        if value:
            _check_unicode(value, field)
            # A character is at least one byte: skip encoding what is already too long.
            size += len(value) if len(value) > max_bytes else len(value.encode("utf-8"))
            if size > max_bytes:
                raise ValidationError(
                    field, f"text and html together must be at most {max_bytes} bytes (UTF-8)"
                )
    return text, html


def _priority(value: object) -> int:
    """Return the priority, 0 (default) to 9."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITIES:
        raise ValidationError("priority", "must be an integer from 0 to 9")
    return value


def _category(value: object) -> str:
    """Return the category, "transactional" by default."""
    if value is None:
        return "transactional"
    if value not in CATEGORIES:
        raise ValidationError("category", f"must be one of: {', '.join(CATEGORIES)}")
    return value


def parse_send_at(value: object, field: str = "send_at") -> datetime | None:
    """Return an RFC 3339 time with an offset ("2026-12-01T10:00:00+09:00", "...Z") in UTC."""
    if value is None:
        return None
    expected = "must be an RFC 3339 time with an offset, like 2026-12-01T10:00:00+09:00"
    if not isinstance(value, str):
        raise ValidationError(field, expected)
    match = _RFC3339.fullmatch(value)
    if not match:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9:.]+", value):
            raise ValidationError(field, "must include a UTC offset, like +09:00 or Z")
        raise ValidationError(field, expected)
    date, time, fraction, offset = match.groups()
    offset = "+00:00" if offset.upper() == "Z" else offset
    try:
        return datetime.fromisoformat(f"{date}T{time}{fraction or ''}{offset}").astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationError(field, expected) from None
