"""Build the bytes sent after DATA by writing headers and bodies directly (RFC 5322, 2045, 2047).

`email.message.EmailMessage` costs ~445 µs a message; writing the few headers we need costs
~10-20 µs, and every header we write here is either validated ASCII or an RFC 2047 encoded-word.
"""

from __future__ import annotations

import base64
import binascii
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache

CRLF = "\r\n"
SOFT_LIMIT = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters
HARD_LIMIT = 998  # ... and MUST be at most 998
_WORD_LIMIT = 75  # RFC 2047 2: an encoded-word is at most 75 characters

# Tab is the only control character a header-bound value may hold; CR and LF would start a header.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_BARE_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")
# Addresses are validated at intake; this only keeps <, > and line breaks out of the header.
_ADDR = re.compile(r'(?:[!-;=?-~]+|"(?:[ !#-\[\]-~]|\\[ -~])*")@[A-Za-z0-9.\-]+')
_MSG_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_FOLD_POINT = re.compile(r"[ \t](?=[^ \t])")  # fold before whitespace that precedes text

# Message-IDs and MIME boundaries must be unique, not secret: a generator seeded by the OS (again
# in every forked child, so two workers never share a sequence) instead of one getrandom(2)
# system call per token, of which every message needs two.
_unique = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _unique.seed(os.urandom(32)))


def _unique_hex() -> str:
    """32 random hex digits (128 bits)."""
    return f"{_unique.getrandbits(128):032x}"


# Q encoding limited to the characters RFC 2047 5(3) allows in a phrase, so it is safe everywhere.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = tuple(chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256))
# Structured headers whose syntax an encoded-word would break: they must already be ASCII.
_STRUCTURED = frozenset({"in-reply-to", "references", "list-id"})
_ADDRESS_HEADERS = frozenset({"reply-to"})
# Headers build_message writes itself: an extra one would duplicate or contradict them.
_OWN_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version", "sender"}
)


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to one recipient, built only from validated data."""

    from_addr: str
    from_name: str | None
    to_addr: str
    to_name: str | None
    subject: str
    text: str | None
    html: str | None
    message_id: str
    date: datetime
    headers: tuple[tuple[str, str], ...] = ()


def build_message(msg: OutgoingMessage) -> bytes:
    """Return the message as CRLF-terminated bytes, ready for smtplib's sendmail()."""
    if msg.date.tzinfo is None:
        raise ValueError("date must be timezone-aware")
    if not _MSG_ID.fullmatch(msg.message_id):
        raise ValueError("message_id must look like <id@domain>")
    head = [
        _address_header("From", msg.from_name, msg.from_addr),
        _address_header("To", msg.to_name, msg.to_addr),
        _unstructured_header("Subject", msg.subject),
        f"Date: {_date_header(msg.date.replace(microsecond=0))}",
        f"Message-ID: {msg.message_id}",
        "MIME-Version: 1.0",
    ]
    head.extend(_extra_header(name, value) for name, value in msg.headers)
    parts = [(subtype, body) for subtype, body in (("plain", msg.text), ("html", msg.html)) if body]
    if len(parts) < 2:
        subtype, body = parts[0] if parts else ("plain", "")
        part_head, payload = _text_part(subtype, body)
        head.extend(part_head)
        # DATA must end with CRLF: a last line without one gets it (smtplib would add it anyway).
        return _join(head, payload, b"\r\n" if payload and not payload.endswith(b"\r\n") else b"")
    return _multipart(head, [_text_part(subtype, body) for subtype, body in parts])


def make_message_id(domain: str) -> str:
    """Return a new Message-ID "<32 hex digits@domain>": message_id_prefix() and 80 random bits."""
    if not re.fullmatch(r"[A-Za-z0-9.\-]+", domain):
        raise ValueError("domain must be an ASCII host name")
    return f"<{message_id_prefix()}{_unique.getrandbits(80):020x}@{domain}>"


def message_id_prefix() -> str:
    """The Message-ID's first 12 hex digits: the time in milliseconds.

    Ids made later sort later, so the unique index on email_jobs.message_id takes a batch's ids
    at its right edge instead of at 10,000 random leaves of a large index, each of which costs a
    full-page image in the WAL after a checkpoint (bench/README.md: 10,000 rows into 1,000,000
    took 150-160 ms instead of 280-330 ms right after one). The 80 random bits that follow keep
    ids made in one millisecond apart.
    """
    return f"{time.time_ns() // 1_000_000:012x}"


def verp_sender(bounce_addr: str, job_id: int, mac: str | None = None) -> str:
    """Return the envelope sender that carries the job id: bounces@x + 42 -> bounces+42@x.

    With a MAC of the job id (massmailer.bounces.verp) it is bounces+42-<mac>@x, which only
    the holder of the secret key can make, so a report to it cannot be forged.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise ValueError("job_id must be a non-negative integer")
    local, at, domain = bounce_addr.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("bounce_addr must be an address like bounces@example.com")
    local = f"{local}+{job_id}" if mac is None else f"{local}+{job_id}-{mac}"
    if len(local) > 64:  # RFC 5321 4.5.3.1.1
        raise ValueError("bounce_addr local part is too long to carry a job id")
    return f"{local}@{domain}"


# --- headers -------------------------------------------------------------------------------


def _check_text(name: str, value: str) -> None:
    """Refuse a header value that could end the header early (defense in depth)."""
    if _CONTROL.search(value):
        raise ValueError(f"{name} contains a control character")


@lru_cache(maxsize=4096)
def _address_header(name: str, display: str | None, addr: str) -> str:
    """Return "Name: display <addr>", quoting or encoding the display name as needed."""
    _check_text(name, addr)
    if not _ADDR.fullmatch(addr):
        raise ValueError(f"{name} address is not a plain ASCII address")
    if not display:
        return f"{name}: {addr}"
    _check_text(name, display)
    if display.isascii() and "=?" not in display:
        phrase = display if _BARE_PHRASE.fullmatch(display) else _quote(display)
        folded = _fold(f"{name}: {phrase} <{addr}>", len(name) + 2)
        if folded is not None:
            return folded
    words = _encoded_words(display, SOFT_LIMIT - len(name) - 2)
    return _lay_out(name, [*words, f"<{addr}>"])


@lru_cache(maxsize=4096)
def _unstructured_header(name: str, value: str) -> str:
    """Return "Name: value", folded at whitespace, or as encoded-words if it is not plain ASCII."""
    _check_text(name, value)
    # Readers decode "=?" in plain text as an encoded-word and drop leading whitespace, so
    # either one is sent as encoded-words too.
    if value.isascii() and "=?" not in value and value[:1] not in (" ", "\t"):
        folded = _fold(f"{name}: {value}", len(name) + 2)
        if folded is not None:
            return folded
    return _lay_out(name, _encoded_words(value, SOFT_LIMIT - len(name) - 2))


def _extra_header(name: str, value: str) -> str:
    """Return one client-supplied header (already validated at intake) in its wire form."""
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    key = name.lower()
    if key in _OWN_HEADERS or key.startswith("content-"):
        raise ValueError(f"{name} is written by build_message and cannot be an extra header")
    if key in _ADDRESS_HEADERS:
        display, addr = _split_address(value)
        return _address_header(name, display, addr)
    if key in _STRUCTURED:
        _check_text(name, value)
        folded = _fold(f"{name}: {value}", len(name) + 2) if value.isascii() else None
        if folded is None:
            raise ValueError(f"{name} must be ASCII with lines under {HARD_LIMIT} characters")
        return folded
    return _unstructured_header(name, value)


def _split_address(value: str) -> tuple[str | None, str]:
    """Split the canonical `addr` or `"name" <addr>` / `name <addr>` form stored at intake."""
    value = value.strip()
    if not value.endswith(">") or "<" not in value:
        return None, value
    cut = value.rindex("<")
    display = value[:cut].strip()
    if len(display) >= 2 and display[0] == display[-1] == '"':
        display = re.sub(r"\\(.)", r"\1", display[1:-1])
    return display or None, value[cut + 1 : -1]


def _quote(text: str) -> str:
    """Return text as an RFC 5322 quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fold(line: str, value_start: int) -> str | None:
    """Fold an ASCII header line before whitespace to keep lines <= 78; None if one stays > 998."""
    if len(line) <= SOFT_LIMIT:
        return line
    points = [m.start() for m in _FOLD_POINT.finditer(line, value_start + 1)]
    pieces, start, prev = [], 0, 0
    for point in [*points, len(line)]:
        if point - start > SOFT_LIMIT and prev > start:
            pieces.append(line[start:prev])
            start = prev
        prev = point
    pieces.append(line[start:])
    if any(len(piece) > HARD_LIMIT for piece in pieces):
        return None
    return CRLF.join(pieces)


def _lay_out(name: str, words: list[str]) -> str:
    """Join words after "Name:" with spaces, starting a new line where one would pass 78."""
    lines, line = [], f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > SOFT_LIMIT:
            lines.append(line)
            line = ""
        line = f"{line} {word}"
    lines.append(line)
    return CRLF.join(lines)


def _encoded_words(text: str, first_width: int) -> list[str]:
    """Split text into UTF-8 encoded-words of whole characters; the first fits first_width."""
    data = text.encode("utf-8")
    use_q = _q_size(data) <= _b_size(len(data))
    prefix = "=?utf-8?q?" if use_q else "=?utf-8?b?"
    size_of = _q_size if use_q else len
    # One four-byte character takes 12 (Q) or 8 (B): with less room, start on the next line.
    width = min(first_width, _WORD_LIMIT) if first_width >= len(prefix) + 14 else _WORD_LIMIT
    room = width - len(prefix) - 2
    if (size_of(data) if use_q else _b_size(len(data))) <= room:
        return [_encode_word(prefix, data, use_q)]  # the common case: a short name or subject
    words, chunk, size, cut = [], [], 0, 0
    for char in text:
        raw = char.encode("utf-8")
        grown = size + size_of(raw)
        if chunk and (grown if use_q else _b_size(grown)) > room:
            # Readers must drop the space between encoded-words (RFC 2047 6.2), but some keep it
            # (Python 3.11 in display names, cpython gh-128110): end a word after a space if we
            # can, so such a reader shows an extra space between words instead of inside one.
            keep = cut if cut * 2 >= len(chunk) else len(chunk)
            words.append(_encode_word(prefix, b"".join(chunk[:keep]), use_q))
            chunk, cut = chunk[keep:], 0
            size = sum(map(size_of, chunk))
            grown = size + size_of(raw)
            room = _WORD_LIMIT - len(prefix) - 2
        chunk.append(raw)
        size = grown
        if char == " ":
            cut = len(chunk)
    words.append(_encode_word(prefix, b"".join(chunk), use_q))
    return words


def _q_size(data: bytes) -> int:
    """Return the length of data in RFC 2047 Q encoding."""
    return sum(len(_Q_BYTE[b]) for b in data)


def _b_size(octets: int) -> int:
    """Return the length of that many octets in base64."""
    return 4 * ((octets + 2) // 3)


def _encode_word(prefix: str, data: bytes, use_q: bool) -> str:
    """Return one encoded-word for data."""
    payload = "".join(_Q_BYTE[b] for b in data) if use_q else base64.b64encode(data).decode()
    return f"{prefix}{payload}?="


# --- bodies --------------------------------------------------------------------------------


def _text_part(subtype: str, text: str) -> tuple[list[str], bytes]:
    """Return the Content-* headers and the encoded CRLF body of one text part."""
    cte, payload = _encode_body(text)
    return [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        f"Content-Transfer-Encoding: {cte}",
    ], payload


def _encode_body(text: str) -> tuple[str, bytes]:
    """Encode text as 7bit when it is short-lined ASCII, else the smaller of QP and base64."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.encode("utf-8")
    if data.isascii() and b"\x00" not in data and _short_lines(data):
        return "7bit", data.replace(b"\n", b"\r\n")
    qp = binascii.b2a_qp(data)  # soft-breaks at 76, encodes trailing whitespace
    # QP triples mostly non-Latin text (CJK, Cyrillic), where base64 is less than half its size.
    # Elsewhere QP stays human-readable, and filters frown on base64 that hides plain text.
    # encodebytes writes 76 characters (57 bytes) a line: compare sizes before encoding.
    if 3 * (_b_size(len(data)) + (len(data) + 56) // 57) < 2 * len(qp):
        return "base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    return "quoted-printable", qp.replace(b"\n", b"\r\n")


def _short_lines(data: bytes) -> bool:
    """Tell whether no line of data is longer than 998 octets."""
    return len(data) <= HARD_LIMIT or max(map(len, data.split(b"\n"))) <= HARD_LIMIT


def _multipart(head: list[str], parts: list[tuple[list[str], bytes]]) -> bytes:
    """Return a multipart/alternative message holding parts in order."""
    # "=_" cannot occur in QP or base64 output; the 7bit check covers the rest.
    boundary = f"=_{_unique_hex()}"
    while any(boundary.encode() in payload for _, payload in parts):
        boundary = f"=_{_unique_hex()}"
    head.append(f'Content-Type: multipart/alternative;{CRLF} boundary="{boundary}"')
    chunks = []
    for part_head, payload in parts:
        # The CRLF before each delimiter belongs to it (RFC 2046 5.1.1), not to the part before.
        delimiter = f"{CRLF}--{boundary}" if chunks else f"--{boundary}"
        chunks.append(f"{delimiter}{CRLF}{CRLF.join(part_head)}{CRLF}{CRLF}".encode())
        chunks.append(payload)
    chunks.append(f"{CRLF}--{boundary}--{CRLF}".encode())
    return _join(head, *chunks)


def _join(head: list[str], *body: bytes) -> bytes:
    """Return the header lines, a blank line and the body as bytes."""
    return (CRLF.join(head) + CRLF + CRLF).encode("ascii") + b"".join(body)


@lru_cache(maxsize=8)
def _date_header(date: datetime) -> str:
    # A chunk's messages share their second: format it once (email.utils takes ~3 µs).
    return format_datetime(date)
