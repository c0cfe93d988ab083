"""DKIM signing: canonicalisation against RFC 6376 vectors and dkimpy, signatures dkimpy accepts."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime

import pytest
from dkim.canonicalization import Relaxed

from massmailer.delivery.dkim import (
    DkimSigner,
    crlf,
    hashed_headers,
    relaxed_body,
    relaxed_header,
    signed_names,
    split_message,
)
from massmailer.delivery.message import OutgoingMessage, build_message
from tests.dkim_keys import make_keys, signatures, stub_dns, verify_each


@pytest.fixture(scope="module")
def keys():
    return make_keys("example.com")


@pytest.fixture(scope="module")
def dns(keys):
    return stub_dns(keys)


def message(**overrides) -> bytes:
    fields = dict(
        from_addr="news@example.com",
        from_name="Zoë from Example",
        to_addr="reader@example.org",
        to_name=None,
        subject="Grüße — 你好, a subject long enough to be folded over more than one header line",
        text="Hello  there \t\n.a line starting with a dot\n" + "long " * 300 + "\n\n\n",
        html="<p>Hello</p>",
        message_id="<abc123@example.com>",
        date=datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
        headers=(
            ("List-Unsubscribe", "<https://example.com/u/1>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
    )
    return build_message(OutgoingMessage(**{**fields, **overrides}))


# --- canonicalisation ----------------------------------------------------------------------


def test_the_rfc_6376_example_canonicalises_as_the_rfc_says():
    # RFC 6376 3.4.5, relaxed header and body canonicalisation.
    fields, body = split_message(b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n")

    assert b"".join(map(relaxed_header, fields)) == b"a:X\r\nb:Y Z\r\n"
    assert relaxed_body(body) == b" C\r\nD E\r\n"


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", b""),
        (b"\r\n", b""),
        (b"\r\n\r\n \t\r\n", b""),
        (b"abc", b"abc\r\n"),
        (b"abc \t", b"abc\r\n"),
        (b"a\t\tb  c \r\n\r\n", b"a b c\r\n"),
        (b"\r\n\r\nx\r\n", b"\r\n\r\nx\r\n"),
        (b"..dot\r\n", b"..dot\r\n"),
    ],
)
def test_relaxed_body(body, canonical):
    assert relaxed_body(body) == canonical


@pytest.mark.parametrize(
    ("field", "canonical"),
    [
        (b"Subject: Hello", b"subject:Hello\r\n"),
        (b"SUBJECT \t:  a \t b  ", b"subject:a b\r\n"),
        (b"To: a@x,\r\n\tb@y", b"to:a@x, b@y\r\n"),
        (b"X-Empty:", b"x-empty:\r\n"),
        (
            b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n =?utf-8?q?x?=",
            b"subject:=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?utf-8?q?x?=\r\n",
        ),
    ],
)
def test_relaxed_header(field, canonical):
    assert relaxed_header(field) == canonical


def test_canonicalisation_agrees_with_dkimpy_on_random_messages():
    rng = random.Random(6376)
    alphabet = [b"a", b"Z", b":", b" ", b"\t", b"  ", b"\r\n", b"\r\n ", b"\r\n\t", b".", b"=?"]
    for _ in range(500):
        body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) + b"\r\n"
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body
        name = rng.choice([b"Subject", b"X-Thing ", b"TO"])
        value = b"".join(rng.choice(alphabet[:6] + alphabet[7:9]) for _ in range(30))
        [(their_name, their_value)] = Relaxed.canonicalize_headers([(name, value)])
        assert relaxed_header(name + b":" + value) == their_name + b":" + their_value, value


def test_bare_line_ends_become_crlf():
    assert crlf(b"a\nb\rc\r\nd\n") == b"a\r\nb\r\nc\r\nd\r\n"
    same = b"a\r\nb\r\n"
    assert crlf(same) is same


def test_split_keeps_folds_and_finds_the_body():
    fields, body = split_message(b"A: 1\r\n 2\r\nB: 3\r\n\r\nbody\r\n\r\nmore\r\n")

    assert fields == [b"A: 1\r\n 2", b"B: 3"]
    assert body == b"body\r\n\r\nmore\r\n"


# --- the h= list -----------------------------------------------------------------------------


def test_from_is_over_signed_and_only_present_headers_are_listed():
    present = ["from", "to", "subject", "date", "message-id", "mime-version", "x-campaign"]

    assert signed_names(present) == [
        "from",
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
    ]


def test_a_provider_may_leave_headers_out_but_never_from():
    names = signed_names(["from", "to", "date", "message-id"], exclude=["message-id", "from"])

    assert names == ["from", "from", "to", "date"]


def test_a_header_that_occurs_twice_is_signed_twice_bottom_up():
    fields = [b"From: a@x", b"Reply-To: one@x", b"Reply-To: two@x"]
    names = signed_names(map(lambda f: f.split(b":")[0].decode().lower(), fields))

    assert names == ["from", "from", "reply-to", "reply-to"]
    assert hashed_headers(fields, names) == b"from:a@x\r\nreply-to:two@x\r\nreply-to:one@x\r\n"


# --- signatures --------------------------------------------------------------------------------


def test_rsa_and_ed25519_signatures_both_verify_with_dkimpy(keys, dns):
    signed = DkimSigner([keys.ed25519, keys.rsa]).sign(message(), "news@example.com")

    tags = signatures(signed)
    assert [t[b"a"] for t in tags] == [b"rsa-sha256", b"ed25519-sha256"]
    assert all(t[b"c"] == b"relaxed/relaxed" and b"l" not in t for t in tags)
    assert re.sub(rb"\s", b"", tags[0][b"h"]).startswith(b"from:from:to:subject:date:message-id")
    assert verify_each(signed, dns) == [True, True]


def test_signed_lines_stay_within_78_characters(keys):
    signed = DkimSigner([keys.rsa, keys.ed25519]).sign(message(), "news@example.com")
    head = signed.split(b"\r\n\r\n")[0]

    assert max(map(len, head.split(b"\r\n"))) <= 78


def test_a_changed_body_or_header_fails_verification(keys, dns):
    signed = DkimSigner([keys.rsa]).sign(message(), "news@example.com")

    assert verify_each(signed.replace(b"<p>Hello</p>", b"<p>Hullo</p>"), dns) == [False]
    assert verify_each(signed.replace(b"abc123@", b"abc124@"), dns) == [False]


def test_a_from_added_on_the_way_breaks_the_signature(keys, dns):
    signed = DkimSigner([keys.rsa]).sign(message(), "news@example.com")
    head, _, body = signed.partition(b"\r\n\r\n")

    assert verify_each(head + b"\r\nFrom: evil@example.net\r\n\r\n" + body, dns) == [False]


def test_excluded_headers_may_be_rewritten_by_the_provider(keys, dns):
    signed = DkimSigner([keys.rsa]).sign(message(), "news@example.com", ["message-id", "date"])
    rewritten = signed.replace(b"<abc123@example.com>", b"<0100018c@email.amazonses.com>")

    assert b"message-id" not in signatures(signed)[0][b"h"]
    assert b"date" not in signatures(signed)[0][b"h"]
    assert verify_each(rewritten, dns) == [True]


def test_single_part_and_bare_lf_messages_verify(keys, dns):
    data = message(html=None).replace(b"\r\n", b"\n")
    signed = DkimSigner([keys.rsa]).sign(data, "news@example.com")

    assert b"\n" not in signed.replace(b"\r\n", b"")  # what is signed is what is sent
    assert verify_each(signed, dns) == [True]


def test_a_domain_without_a_key_is_left_unsigned(keys):
    data = message(from_addr="news@other.example")
    signer = DkimSigner([keys.rsa])

    assert signer.sign(data, "news@other.example") is data
    assert not DkimSigner([])
    assert signer.sign(data, "NEWS@Example.COM").startswith(b"DKIM-Signature:")


def test_t_is_the_signing_time(keys):
    signed = DkimSigner([keys.rsa], clock=lambda: 1_796_000_000.7).sign(message(), "a@example.com")

    assert signatures(signed)[0][b"t"] == b"1796000000"
