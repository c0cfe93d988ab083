"""Pure: the bytes an SMTP client writes for one envelope, and what it reads from the replies."""

from __future__ import annotations

import re
import smtplib

from massmailer.delivery.providers.base import Envelope

# The forms providers use to name their queue id in the 250 after DATA, most specific first.
_STATUS = r"^(?:[245]\.\d{1,3}\.\d{1,3}\s+)?"
_QUEUE_ID_PATTERNS = (
    re.compile(r"queued as\s+<?([^\s<>;,]+)", re.IGNORECASE),  # Postfix, SendGrid
    re.compile(r"\bid=<?([^\s<>;,]+)", re.IGNORECASE),  # Exim
    re.compile(_STATUS + r"<?([^\s<>]+)>?\s+Message accepted", re.IGNORECASE),  # sendmail & co
    re.compile(_STATUS + r"<([^\s<>]+)>.*Queued mail for delivery", re.IGNORECASE),  # Microsoft
    re.compile(_STATUS + r"OK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.IGNORECASE),  # Google
    re.compile(_STATUS + r"Ok\s+([0-9a-f]{16,}(?:-[0-9a-f]+)*)\b", re.IGNORECASE),  # Amazon SES
)


def parse_queue_id(reply: str) -> str | None:
    """Return the provider's queue id from its reply to DATA, or None when it names none."""
    for pattern in _QUEUE_ID_PATTERNS:
        match = pattern.search(reply)
        if match:
            return match.group(1)
    return None


# A dot-atom address: smtplib.quoteaddr() sends it exactly as given (checked against 300,000
# random strings), so the common case skips quoteaddr's slow email.utils parse.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def check_address(address: str) -> None:
    """Refuse an address smtplib would not send as given (it quietly reparses odd input)."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return
    if any(ord(char) < 32 or ord(char) == 127 for char in address):
        raise ValueError(f"control character in address {address!r}")
    if smtplib.quoteaddr(address) != f"<{address}>":
        raise ValueError(f"not a plain address: {address!r}")


def envelope_commands(envelope: Envelope) -> tuple[bytes, bytes, bytes]:
    """Return the MAIL, RCPT and DATA command lines; ValueError if an address cannot go as given.

    The addresses are checked to be sent as given, so the lines are written directly (smtplib's
    mail() and rcpt() would parse each address again). A non-ASCII address raises
    UnicodeEncodeError, a ValueError, as smtplib's own ASCII command encoding would.
    """
    check_address(envelope.mail_from)
    check_address(envelope.rcpt)
    return (
        f"MAIL FROM:<{envelope.mail_from}>\r\n".encode("ascii"),
        f"RCPT TO:<{envelope.rcpt}>\r\n".encode("ascii"),
        b"DATA\r\n",
    )


# smtplib._quote_periods and smtplib._fix_eols, which are private: the same expressions.
_LEADING_DOT = re.compile(rb"(?m)^\.")
_ANY_EOL = re.compile(r"(?:\r\n|\n|\r(?!\n))")


def data_block(message: bytes | str) -> bytes:
    """Return what follows the 354 exactly as smtplib.data() writes it, final dot included.

    Bytes go as given with leading dots doubled (smtplib does not touch their line ends); a str
    gets CRLF line ends and must be ASCII, as in smtplib.
    """
    if isinstance(message, str):
        message = _ANY_EOL.sub("\r\n", message).encode("ascii")
    quoted = _LEADING_DOT.sub(b"..", message)
    if quoted[-2:] != b"\r\n":
        quoted += b"\r\n"
    return quoted + b".\r\n"


# C0 controls but tab and newline (smtplib joins a multiline reply with "\n"), and DEL.
# PostgreSQL refuses NUL in text, so one NUL in a reply would make every outcome flush fail.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def reply_text(reply: bytes | str | None) -> str:
    """Decode a reply for logs and columns: invalid UTF-8 and control characters replaced."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return _CONTROL.sub("\ufffd", reply or "")
