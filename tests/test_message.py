"""build_message writes standard messages: parsed back by the stdlib, they say what we meant."""

from __future__ import annotations

import dataclasses
import email.policy
import os
import random
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from massmailer.delivery import message
from massmailer.delivery.message import OutgoingMessage, build_message, make_message_id, verp_sender
from massmailer.validation import parse_headers

WHEN = datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone(timedelta(hours=9)))
BASE = OutgoingMessage(
    from_addr="shop@example.com",
    from_name="Example Shop",
    to_addr="alice@example.org",
    to_name="Alice",
    subject="Your order has shipped",
    text="Hello Alice,\nit is on its way.\n",
    html=None,
    message_id="<0123456789abcdef0123456789abcdef@example.com>",
    date=WHEN,
)
LONG_WORDS = " ".join(["shipping"] * 40)


def build(**changes: object) -> bytes:
    return build_message(dataclasses.replace(BASE, **changes))


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=email.policy.default).parsebytes(raw)


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def assert_wire_safe(raw: bytes) -> None:
    """CRLF everywhere, nothing over 998 octets, ends with CRLF, and the parser found no defect."""
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert max(map(len, lines)) <= 998
    assert all(not part.defects for part in parse(raw).walk())


def as_lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- headers -------------------------------------------------------------------------------


def test_headers_are_written_in_order_with_mime_version():
    raw = build(headers=(("X-Campaign-Id", "spring"),))
    names = [line.split(b":", 1)[0] for line in header_lines(raw) if line[:1] != b" "]
    assert names == [
        b"From",
        b"To",
        b"Subject",
        b"Date",
        b"Message-ID",
        b"MIME-Version",
        b"X-Campaign-Id",
        b"Content-Type",
        b"Content-Transfer-Encoding",
    ]
    parsed = parse(raw)
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Message-ID"] == BASE.message_id
    assert parsed["Date"].datetime == WHEN


@pytest.mark.parametrize(
    "subject",
    [
        "Your order has shipped",
        "",
        "a   b\tc",
        "trailing space  ",
        "  leading space",
        "Grüße aus Köln",
        "日本語の件名",
        "emoji 😀 four-byte 𝄞 characters",
        "=?utf-8?q?looks_encoded?= but is literal",
        LONG_WORDS,
        "x" * 990,  # one word too long for any line: sent as encoded-words
        "Über " * 190,  # long non-ASCII: many encoded-words
        "a" + " " * 100 + "b",
    ],
)
def test_subject_round_trips_in_short_lines(subject):
    raw = build(subject=subject)
    assert_wire_safe(raw)
    assert str(parse(raw)["Subject"]) == subject
    if "  " * 50 not in subject:  # a run of 100 spaces cannot fold without a blank line
        assert max(map(len, header_lines(raw))) <= 78


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("Example Shop", b"From: Example Shop <shop@example.com>"),
        ("Doe, John", b'From: "Doe, John" <shop@example.com>'),
        ('Bob "the" Builder', b'From: "Bob \\"the\\" Builder" <shop@example.com>'),
        ("back\\slash", b'From: "back\\\\slash" <shop@example.com>'),
        ("John Q. Public", b'From: "John Q. Public" <shop@example.com>'),
        ("Zoë Ångström", b"From: =?utf-8?"),
        ("=?utf-8?q?x?=", b"From: =?utf-8?"),
        ("山田 太郎", b"From: =?utf-8?"),
        (None, b"From: shop@example.com"),
        ("", b"From: shop@example.com"),
    ],
)
def test_display_names_are_quoted_or_encoded_and_decode_back(name, wire):
    raw = build(from_name=name, to_name=name)
    assert_wire_safe(raw)
    assert raw.startswith(wire)
    parsed = parse(raw)
    for field, addr in (("From", BASE.from_addr), ("To", BASE.to_addr)):
        (address,) = parsed[field].addresses
        assert (address.display_name, address.addr_spec) == (name or "", addr)


def decoded_display_name(raw: bytes, field: str) -> str:
    """Decode a display name with email.header, which drops the space between encoded-words.

    RFC 2047 6.2 says readers ignore it; Python 3.11's address parser keeps it (cpython
    gh-128110), so a long non-ASCII name split into several words would gain spaces there.
    """
    parsed = parse(raw)
    value = next(v for k, v in parsed.raw_items() if k == field).replace("\r\n", "")
    if "<" not in value:
        return ""
    phrase = value[: value.rindex("<")].strip()
    if phrase.startswith('"'):
        return parsed[field].addresses[0].display_name
    return str(make_header(decode_header(phrase)))


@pytest.mark.parametrize(
    ("name", "short_lines"),
    [
        ("A very long display name " * 8, True),
        ("Ünïcødé " * 30, True),
        ("日本語の名前" * 20, True),
        ('Doe, "J" ' * 20, True),
        ("Doe, " + "x" * 200, False),  # a 200-letter word cannot fold
    ],
)
def test_long_display_names_fold(name, short_lines):
    raw = build(to_name=name.strip())
    assert_wire_safe(raw)
    assert decoded_display_name(raw, "To") == name.strip()
    assert parse(raw)["To"].addresses[0].addr_spec == BASE.to_addr
    if short_lines:
        assert max(map(len, header_lines(raw))) <= 78


def test_random_mixed_text_round_trips_in_every_header_we_encode():
    rng = random.Random(2047)
    alphabet = ["a", "Z", "7", " ", "  ", "\t", ".", ",", '"', "\\", "=?", "?=", "_", "é", "ß",
                "日本", "😀", "𝄞", "\u200b", "\x85"]  # fmt: skip
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        name = " ".join(text.split()) or None  # names arrive stripped, without tabs
        raw = build(subject=text, to_name=name, headers=(("X-Note", text),))
        assert_wire_safe(raw)
        assert max(map(len, header_lines(raw))) <= 78, text
        parsed = parse(raw)
        assert str(parsed["Subject"]) == text
        assert str(parsed["X-Note"]) == text
        assert decoded_display_name(raw, "To") == (name or "")


def test_quoted_local_part_is_kept():
    raw = build(to_addr='"john doe"@example.org')
    assert parse(raw)["To"].addresses[0].addr_spec == '"john doe"@example.org'


def test_extra_headers_keep_their_meaning():
    refs = " ".join(f"<{n:030d}@example.com>" for n in range(12))
    headers = parse_headers(
        {
            "Reply-To": '"Support, Shop" <help@example.com>',
            "References": refs,
            "X-Campaign-Id": "printemps — été",
            "List-Id": "Shop news <news.example.com>",
        }
    )
    raw = build(headers=headers)
    assert_wire_safe(raw)
    assert max(map(len, header_lines(raw))) <= 78
    parsed = parse(raw)
    (reply_to,) = parsed["Reply-To"].addresses
    assert (reply_to.display_name, reply_to.addr_spec) == ("Support, Shop", "help@example.com")
    assert str(parsed["References"]) == refs
    assert str(parsed["X-Campaign-Id"]) == "printemps — été"
    assert str(parsed["List-Id"]) == "Shop news <news.example.com>"


def test_reply_to_with_a_non_ascii_name_is_encoded():
    raw = build(headers=parse_headers({"reply-to": "Zoë <zoe@example.com>"}))
    (reply_to,) = parse(raw)["Reply-To"].addresses
    assert (reply_to.display_name, reply_to.addr_spec) == ("Zoë", "zoe@example.com")


# --- header injection (defense in depth: intake validates first) ----------------------------


@pytest.mark.parametrize("bad", ["x\r\nBcc: victim@example.net", "x\nBcc: v@e.net", "x\r", "x\0"])
@pytest.mark.parametrize(
    "field", ["subject", "from_name", "to_name", "from_addr", "to_addr", "message_id"]
)
def test_control_characters_in_a_header_value_raise(field, bad):
    with pytest.raises(ValueError):
        build(**{field: bad})


@pytest.mark.parametrize(
    "headers",
    [
        (("X-Tag", "a\r\nBcc: victim@example.net"),),
        (("X-Tag\r\nBcc", "victim@example.net"),),
        (("X Tag", "a"),),
        (("References", "<a@b>\n<c@d>"),),
        (("References", "<é@b>"),),
        (("Reply-To", "a@b.com\r\nBcc: v@e.net"),),
        (("Bcc", "victim@example.net"),),
        (("content-type", "text/html"),),
    ],
)
def test_control_characters_or_bad_or_own_names_in_extra_headers_raise(headers):
    with pytest.raises(ValueError):
        build(headers=headers)


def test_naive_date_or_malformed_message_id_raise():
    with pytest.raises(ValueError):
        build(date=datetime(2026, 12, 1, 10, 0))
    with pytest.raises(ValueError):
        build(message_id="no-angle-brackets@example.com")


# --- bodies --------------------------------------------------------------------------------

BODIES = [
    ("Hello,\nplain ASCII.\n", "7bit"),
    ("no final newline", "7bit"),
    (".leading dot\n..two dots\n.\nend\n", "7bit"),
    ("From the start of a line\n", "7bit"),
    ("bare\rCR and\r\nCRLF and\nLF\n", "7bit"),
    ("trailing spaces   \nand tab\t\n", "7bit"),
    ("Grüße aus Köln, à bientôt 😀\n", "quoted-printable"),
    ("x" * 5000 + "\nshort\n", "quoted-printable"),
    ("dot line long " + "." * 1200 + "\n.\n", "quoted-printable"),
    ("nul \0 char\n", "quoted-printable"),
    ("日本語のテキストです。" * 40 + "\n", "base64"),
    ("--=_0123456789abcdef0123456789abcdef\nlooks like a boundary\n", "7bit"),
    ("=3D and = signs =\n", "7bit"),
    ("", "7bit"),
]


@pytest.mark.parametrize(("text", "cte"), BODIES)
def test_text_only_is_a_single_text_plain_part(text, cte):
    raw = build(text=text, html=None)
    assert_wire_safe(raw)
    parsed = parse(raw)
    assert not parsed.is_multipart()
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"
    assert parsed["Content-Transfer-Encoding"] == cte
    # DATA always ends with CRLF, so a single part gains a final line break when it lacks one.
    expected = as_lf(text) if text.endswith(("\n", "\r")) or not text else as_lf(text) + "\n"
    assert as_lf(parsed.get_content()) == expected


@pytest.mark.parametrize(("html", "cte"), [b for b in BODIES if b[0]])
def test_html_only_is_a_single_text_html_part(html, cte):
    raw = build(text=None, html=html)
    assert_wire_safe(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "text/html"
    assert parsed["Content-Transfer-Encoding"] == cte
    expected = as_lf(html) if html.endswith(("\n", "\r")) else as_lf(html) + "\n"
    assert as_lf(parsed.get_content()) == expected


@pytest.mark.parametrize(("text", "cte"), [b for b in BODIES if b[0]])
def test_text_and_html_make_multipart_alternative_text_first(text, cte):
    html = f"<p>{text}</p>"
    raw = build(text=text, html=html)
    assert_wire_safe(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/alternative"
    plain, rich = parsed.iter_parts()
    assert [plain.get_content_type(), rich.get_content_type()] == ["text/plain", "text/html"]
    assert plain["Content-Transfer-Encoding"] == cte
    # Inside a multipart the delimiter owns the CRLF before it: bodies come back exactly.
    assert as_lf(plain.get_content()) == as_lf(text)
    assert as_lf(rich.get_content()) == as_lf(html)


def test_an_empty_text_with_html_sends_html_only():
    assert parse(build(text="", html="<p>hi</p>")).get_content_type() == "text/html"


def test_boundary_is_random_and_delimits_exactly_two_parts():
    first, second = build(html="<p>a</p>"), build(html="<p>a</p>")
    boundary = parse(first).get_boundary()
    assert boundary != parse(second).get_boundary()
    assert len(boundary) >= 32
    assert first.count(f"--{boundary}".encode()) == 3


def test_boundary_is_drawn_again_when_a_part_contains_it(monkeypatch):
    draws = iter(["a" * 32, "b" * 32])
    monkeypatch.setattr(message, "_unique_hex", lambda: next(draws))
    raw = build(text=f"--=_{'a' * 32}\n", html="<p>x</p>")
    assert parse(raw).get_boundary() == f"=_{'b' * 32}"
    assert as_lf(next(parse(raw).iter_parts()).get_content()) == f"--=_{'a' * 32}\n"


# --- ids and envelope -----------------------------------------------------------------------


def test_make_message_id_is_unique_and_well_formed():
    ids = {make_message_id("mail.example.com") for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"<[0-9a-f]{32}@mail\.example\.com>", i) for i in ids)
    assert parse(build(message_id=ids.pop()))["Message-ID"]


def test_message_ids_made_later_sort_later():
    # The unique index then takes new ids at its right edge (message_id_prefix).
    earlier = make_message_id("x.test")
    time.sleep(0.002)
    later = [make_message_id("x.test") for _ in range(3)]

    assert all(earlier < id_ for id_ in later)
    assert len({id_[13:33] for id_ in later}) == 3  # the random part differs within a millisecond


def test_a_forked_child_draws_other_ids_than_its_parent():
    # Without a reseed after fork the child would repeat the parent's next draws exactly.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, make_message_id("x.test").encode())
        os._exit(0)
    os.close(write_end)
    parent = make_message_id("x.test")
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode()
    assert re.fullmatch(r"<[0-9a-f]{32}@x\.test>", child)
    assert child != parent


@pytest.mark.parametrize("domain", ["", "exa mple.com", "a@b", "<x>", "bücher.de", "x\r\n"])
def test_make_message_id_refuses_a_bad_domain(domain):
    with pytest.raises(ValueError):
        make_message_id(domain)


@pytest.mark.parametrize(
    ("bounce", "job_id", "expected"),
    [
        ("bounces@example.com", 42, "bounces+42@example.com"),
        ("bounces@example.com", 0, "bounces+0@example.com"),
        ("b+mm@mail.example.com", 7, "b+mm+7@mail.example.com"),
    ],
)
def test_verp_sender_carries_the_job_id(bounce, job_id, expected):
    assert verp_sender(bounce, job_id) == expected


@pytest.mark.parametrize(
    ("bounce", "job_id"),
    [("bounces", 1), ("@example.com", 1), ("b@example.com", -1), ("b@example.com", True),
     ("x" * 60 + "@example.com", 123456)],
)  # fmt: skip
def test_verp_sender_refuses_what_it_cannot_encode(bounce, job_id):
    with pytest.raises(ValueError):
        verp_sender(bounce, job_id)


def test_non_utc_dates_keep_their_offset():
    raw = build(date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert b"\r\nDate: Fri, 02 Jan 2026 03:04:05 +0000\r\n" in raw
    assert b"\r\nDate: Tue, 01 Dec 2026 10:00:00 +0900\r\n" in build()
