"""Intake validation accepts what a client may send and names the field of anything else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from massmailer.validation import (
    ALLOWED_HEADERS,
    EmailRequest,
    ValidationError,
    check_header_text,
    parse_address,
    parse_email_request,
    parse_headers,
)


def fails(call, *args, **kwargs) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        call(*args, **kwargs)
    return info.value


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("user@example.com", (None, "user@example.com")),
        ("  user@example.com  ", (None, "user@example.com")),
        ("<user@example.com>", (None, "user@example.com")),
        ("Alice <alice@example.com>", ("Alice", "alice@example.com")),
        ("Alice<alice@example.com>", ("Alice", "alice@example.com")),
        ('"Doe, John" <john@example.com>', ("Doe, John", "john@example.com")),
        ('"Bob \\"the\\" Builder" <b@example.com>', ('Bob "the" Builder', "b@example.com")),
        ('"" <b@example.com>', (None, "b@example.com")),
        ('"a <b>" <c@example.com>', ("a <b>", "c@example.com")),
        ('"Doe; J @ Acme"<j@example.com>', ("Doe; J @ Acme", "j@example.com")),
        ("John Q. Public <jqp@example.com>", ("John Q. Public", "jqp@example.com")),
        ("Zoë Ångström <zoe@example.com>", ("Zoë Ångström", "zoe@example.com")),
        ("山田 太郎 <taro@example.jp>", ("山田 太郎", "taro@example.jp")),
        ("User.Name@EXAMPLE.Com", (None, "User.Name@example.com")),
        ("first.last+tag@mail.example.co.uk", (None, "first.last+tag@mail.example.co.uk")),
        ("o'brien@example.ie", (None, "o'brien@example.ie")),
        ('"john doe"@example.com', (None, '"john doe"@example.com')),
        ('"a@b"@example.com', (None, '"a@b"@example.com')),
        ("user@bücher.example", (None, "user@xn--bcher-kva.example")),
        ("user@xn--bcher-kva.example", (None, "user@xn--bcher-kva.example")),
        ("x" * 64 + "@example.com", (None, "x" * 64 + "@example.com")),
        ("user@" + "a" * 63 + ".example", (None, "user@" + "a" * 63 + ".example")),
        ("user@a-b.c0.example", (None, "user@a-b.c0.example")),
    ],
)
def test_parse_address_accepts_plain_and_named_addresses(value, expected):
    assert parse_address(value, "to") == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (42, "string"),
        (None, "string"),
        (["a@example.com"], "string"),
        ("", "empty"),
        ("   ", "empty"),
        ("user@example.com\r\nBcc: victim@example.net", "control"),
        ("user@example.com\n", "control"),
        ("user\x00@example.com", "control"),
        ("Al\tice <a@example.com>", "control"),
        ("Alice\u2028 <a@example.com>", "control"),
        ("a@example.com, b@example.com", "single"),
        ("a@example.com b@example.com", "single"),
        ("a@example.com;b@example.com", "single"),
        ('"A" <a@example.com>, "B" <b@example.com>', "single"),
        ("Doe, John <john@example.com>", "single"),
        ("a@example.com <b@example.com>", "single"),
        ("Name <user@example.com", "Name <user@"),
        ("Name user@example.com>", "single"),
        ("<<user@example.com>>", "single"),
        ('"unterminated <user@example.com>', "single"),
        ("userexample.com", "user@example.com"),
        ("@example.com", "user@example.com"),
        ("user@", "user@example.com"),
        (".user@example.com", "local part"),
        ("us..er@example.com", "local part"),
        ("user.@example.com", "local part"),
        ("us er@example.com", "local part"),
        ("ü@example.com", "local part"),
        ("x" * 65 + "@example.com", "64"),
        ("user@localhost", "domain"),
        ("user@-example.com", "domain"),
        ("user@example-.com", "domain"),
        ("user@exa_mple.com", "domain"),
        ("user@example..com", "domain"),
        ("user@example.com.", "domain"),
        ("user@exa mple.com", "domain"),
        ("user@" + "a" * 64 + ".example", "domain"),
        ("user@1.2.3.4", "domain"),
        ("user@[127.0.0.1]", "domain"),
        ("user@bü\ud800cher.example", "domain"),
        ("x" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".com", "254"),
        ("x" * 300 + " <a@example.com>", "256"),
        ("\ud800 <a@example.com>", "Unicode"),
    ],
)
def test_parse_address_refuses_anything_else_naming_the_field(value, says):
    error = fails(parse_address, value, "to")
    assert error.field == "to"
    assert says in error.message
    assert str(error) == f"to: {error.message}"


# --- header text ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Hello", "", "tab\tis fine", "Ünïcødé 😀 日本語", "x" * 998])
def test_check_header_text_accepts_one_line_of_text(value):
    assert check_header_text(value, "subject", 998) == value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (1, "string"),
        (None, "string"),
        ("a\r\nBcc: victim@example.net", "line breaks"),
        ("a\nb", "line breaks"),
        ("a\rb", "line breaks"),
        ("a\x00b", "control"),
        ("\x1b[31mred", "control"),
        ("a\x7f", "control"),
        ("a\x85b", "control"),
        ("a\u2028b", "line breaks"),
        ("x" * 999, "at most 998 characters"),
        ("\ud800", "Unicode"),
    ],
)
def test_check_header_text_refuses_line_breaks_controls_and_overlong(value, says):
    error = fails(check_header_text, value, "subject", 998)
    assert (error.field, says in error.message) == ("subject", True)


# --- extra headers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        ({}, ()),
        ({"X-Campaign-Id": "spring"}, (("X-Campaign-Id", "spring"),)),
        ({"x-campaign-id": "spring"}, (("X-Campaign-Id", "spring"),)),
        ({"x-custom": "Ünï 😀"}, (("x-custom", "Ünï 😀"),)),
        ({"Reply-To": "help@EXAMPLE.com"}, (("Reply-To", "help@example.com"),)),
        ({"reply-to": "Help <help@example.com>"}, (("Reply-To", '"Help" <help@example.com>'),)),
        ({"Reply-To": '"A \\"B\\"" <a@example.com>'},
         (("Reply-To", '"A \\"B\\"" <a@example.com>'),)),
        ({"In-Reply-To": "<a1@example.com>"}, (("In-Reply-To", "<a1@example.com>"),)),
        ({"References": "<a@example.com> <b@example.com>"},
         (("References", "<a@example.com> <b@example.com>"),)),
        ({"List-Id": "Shop news <news.example.com>"},
         (("List-Id", "Shop news <news.example.com>"),)),
        ({"X-B": "2", "X-A": "1"}, (("X-B", "2"), ("X-A", "1"))),
        ({f"X-H{n}": "v" for n in range(20)}, tuple((f"X-H{n}", "v") for n in range(20))),
    ],
)  # fmt: skip
def test_parse_headers_keeps_allowed_headers_in_order(value, expected):
    assert parse_headers(value) == expected


@pytest.mark.parametrize(
    ("value", "field", "says"),
    [
        ([], "headers", "object"),
        ("X-A: b", "headers", "object"),
        ({f"X-H{n}": "v" for n in range(21)}, "headers", "at most 20"),
        *[
            ({name: "x"}, f"headers.{name}", "set by MassMailer")
            for name in ["From", "to", "Cc", "BCC", "Subject", "Date", "Message-ID",
                         "MIME-Version", "Content-Type", "Content-Disposition", "Sender",
                         "Return-Path", "Received", "DKIM-Signature", "List-Unsubscribe",
                         "List-Unsubscribe-Post", "Resent-From"]
        ],
        *[
            ({name: "x"}, f"headers.{name}", "not allowed")
            for name in ["X-SMTPAPI", "X-SES-CONFIGURATION-SET", "X-PM-Tag",
                         "X-Mailgun-Variables", "X-MC-Tags", "X-MSYS-API", "X-Spam-Status",
                         "X-MassMailer-Job", "Disposition-Notification-To", "Errors-To", "X-"]
        ],
        ({"X Foo": "a"}, "headers.X Foo", "header name"),
        ({"X-Foo:": "a"}, "headers.X-Foo:", "header name"),
        ({"X-é": "a"}, "headers.X-é", "header name"),
        ({"X-" + "a" * 80: "a"}, "headers." + ("X-" + "a" * 80)[:40], "header name"),
        ({"X-A\r\nBcc": "a"}, "headers.?", "header name"),
        ({"X-Foo": "a\r\nBcc: victim@example.net"}, "headers.X-Foo", "line breaks"),
        ({"X-Foo": 5}, "headers.X-Foo", "string"),
        ({"X-Foo": None}, "headers.X-Foo", "string"),
        ({"X-Foo": "x" * 999}, "headers.X-Foo", "998"),
        ({"X-Foo": "a", "x-foo": "b"}, "headers.x-foo", "twice"),
        ({"Reply-To": "not an address"}, "headers.Reply-To", "user@example.com"),
        ({"Reply-To": "a@example.com, b@example.com"}, "headers.Reply-To", "single"),
        ({"References": "not-a-message-id"}, "headers.References", "message ids"),
        ({"In-Reply-To": "<é@example.com>"}, "headers.In-Reply-To", "message ids"),
        ({"In-Reply-To": "<a@example.com>\u00a0<b@example.com>"}, "headers.In-Reply-To",
         "message ids"),
        ({"List-Id": "no angle brackets"}, "headers.List-Id", "Name <list"),
    ],
)  # fmt: skip
def test_parse_headers_refuses_reserved_unknown_or_malformed_headers(value, field, says):
    error = fails(parse_headers, value)
    assert (error.field, says in error.message) == (field, True), error.message


def test_allowed_headers_never_include_the_ones_we_write():
    ours = {"from", "to", "subject", "date", "message-id", "mime-version", "bcc", "cc",
            "received", "return-path", "dkim-signature", "list-unsubscribe"}  # fmt: skip
    assert not ALLOWED_HEADERS & ours
    assert not any(name.startswith("content-") for name in ALLOWED_HEADERS)
    assert {"reply-to", "in-reply-to", "references", "list-id", "x-campaign-id"} <= ALLOWED_HEADERS


# --- one request ---------------------------------------------------------------------------

MINIMAL = {"to": "alice@example.org", "subject": "Hi", "text": "Hello"}
DEFAULT_FROM = "Example Shop <shop@example.com>"


def request(**changes: object) -> dict:
    payload = {**MINIMAL, **changes}
    return {key: value for key, value in payload.items() if value is not ...}


def test_a_minimal_request_gets_the_defaults():
    assert parse_email_request(MINIMAL, default_from=DEFAULT_FROM) == EmailRequest(
        to_name=None,
        to_addr="alice@example.org",
        from_name="Example Shop",
        from_addr="shop@example.com",
        subject="Hi",
        text="Hello",
        html=None,
        priority=0,
        headers=(),
        category="transactional",
        send_at=None,
    )


def test_a_full_request_is_parsed_field_by_field():
    payload = {
        "to": "Zoë <zoe@bücher.example>",
        "from": '"News, Shop" <news@example.com>',
        "subject": "Grüße",
        "text": "Hallo",
        "html": "<p>Hallo</p>",
        "priority": 9,
        "headers": {"X-Campaign-Id": "winter", "Reply-To": "help@example.com"},
        "category": "marketing",
        "send_at": "2026-12-01T10:00:00+09:00",
    }
    assert parse_email_request(payload, default_from=None) == EmailRequest(
        to_name="Zoë",
        to_addr="zoe@xn--bcher-kva.example",
        from_name="News, Shop",
        from_addr="news@example.com",
        subject="Grüße",
        text="Hallo",
        html="<p>Hallo</p>",
        priority=9,
        headers=(("X-Campaign-Id", "winter"), ("Reply-To", "help@example.com")),
        category="marketing",
        send_at=datetime(2026, 12, 1, 1, 0, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (..., None),  # left out
        ("2026-12-01T10:00:00+09:00", datetime(2026, 12, 1, 1, 0, tzinfo=UTC)),
        ("2026-12-01T10:00:00Z", datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
        ("2026-12-01t10:00:00z", datetime(2026, 12, 1, 10, 0, tzinfo=UTC)),
        ("2026-12-01T10:00:00.5-05:30", datetime(2026, 12, 1, 15, 30, 0, 500000, tzinfo=UTC)),
        ("2026-12-01T10:00:00.123456789+00:00",
         datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_send_at_is_rfc3339_with_an_offset_and_stored_in_utc(value, expected):
    parsed = parse_email_request(request(send_at=value), default_from=DEFAULT_FROM).send_at
    assert parsed == expected
    assert parsed is None or parsed.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("2026-12-01T10:00:00", "offset"),
        ("2026-12-01T10:00:00.25", "offset"),
        ("2026-12-01", "RFC 3339"),
        ("tomorrow", "RFC 3339"),
        ("2026-12-01 10:00:00Z", "RFC 3339"),
        ("2026-12-01T10:00:00+0900", "RFC 3339"),
        ("2026-12-01T10:00:00123Z", "RFC 3339"),
        ("\uff12\uff10\uff12\uff16-12-01T10:00:00Z", "RFC 3339"),  # full-width digits
        ("2026-13-01T10:00:00Z", "RFC 3339"),
        ("2026-12-01T25:00:00Z", "RFC 3339"),
        ("9999-12-31T23:59:59-01:00", "RFC 3339"),
        (1764550800, "RFC 3339"),
    ],
)
def test_send_at_refuses_naive_or_malformed_times(value, says):
    error = fails(parse_email_request, request(send_at=value), default_from=DEFAULT_FROM)
    assert (error.field, says in error.message) == ("send_at", True), error.message


@pytest.mark.parametrize(("value", "expected"), [(..., 0), (0, 0), (5, 5), (9, 9)])
def test_priority_defaults_to_zero(value, expected):
    payload = request(priority=value)
    assert parse_email_request(payload, default_from=DEFAULT_FROM).priority == expected


@pytest.mark.parametrize("value", [-1, 10, True, False, 1.0, 5.5, "1", [1]])
def test_priority_must_be_an_integer_from_0_to_9(value):
    error = fails(parse_email_request, request(priority=value), default_from=DEFAULT_FROM)
    assert (error.field, error.message) == ("priority", "must be an integer from 0 to 9")


@pytest.mark.parametrize("value", ["promo", "", 1, ["marketing"], {"a": 1}])
def test_category_is_transactional_or_marketing(value):
    error = fails(parse_email_request, request(category=value), default_from=DEFAULT_FROM)
    assert error.field == "category"
    assert "transactional, marketing" in error.message


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ([], "body", "JSON object"),
        ("to=a@example.com", "body", "JSON object"),
        (None, "body", "JSON object"),
        (request(cc="b@example.com"), "cc", "not a known field"),
        (request(To="b@example.com"), "To", "not a known field"),
        (request(to=...), "to", "required"),
        (request(to=None), "to", "required"),
        (request(to=["a@example.com"]), "to", "single address"),
        (request(to="a@example.com, b@example.com"), "to", "single"),
        (request(to="a@example.com\r\nBcc: v@example.net"), "to", "control"),
        (request(**{"from": "not-an-address"}), "from", "user@example.com"),
        (request(subject=...), "subject", "required"),
        (request(subject=None), "subject", "required"),
        (request(subject=7), "subject", "string"),
        (request(subject="Hi\r\nBcc: v@example.net"), "subject", "line breaks"),
        (request(subject="x" * 999), "subject", "998"),
        (request(text=...), "text", "text or html"),
        (request(text="", html=""), "text", "text or html"),
        (request(text=None, html="<p>x</p>"), "text", "must not be null"),
        (request(text=5), "text", "string"),
        (request(html=["<p>"]), "html", "string"),
        (request(text="\ud800"), "text", "Unicode"),
        (request(headers={"Bcc": "v@example.net"}), "headers.Bcc", "MassMailer"),
        (request(headers=["X-A"]), "headers", "object"),
    ],
)
def test_a_bad_request_names_the_field(payload, field, says):
    error = fails(parse_email_request, payload, default_from=DEFAULT_FROM)
    assert (error.field, says in error.message) == (field, True), error.message


def test_from_falls_back_to_the_default_and_is_required_without_one():
    left_out = parse_email_request(MINIMAL, default_from="s@example.com")
    assert (left_out.from_name, left_out.from_addr) == (None, "s@example.com")
    error = fails(parse_email_request, MINIMAL, default_from=None)
    assert error.field == "from"


@pytest.mark.parametrize("field", ["from", "text", "priority", "headers", "category", "send_at"])
def test_an_optional_field_given_as_null_is_refused_naming_it(field):
    # The OpenAPI document allows none of them to be null; the fuzzer found the drift.
    error = fails(parse_email_request, request(**{field: None}), default_from=DEFAULT_FROM)
    assert (error.field, "must not be null" in error.message) == (field, True)


@pytest.mark.parametrize(
    ("text", "html", "field"),
    [
        ("x" * 11, ..., "text"),
        ("é" * 6, ..., "text"),  # 6 characters but 12 bytes
        ("x" * 5, "y" * 6, "html"),
        (..., "日本" * 2, "html"),
    ],
)
def test_bodies_together_are_bounded_in_utf8_bytes(text, html, field):
    payload = request(text=text, html=html)
    error = fails(parse_email_request, payload, default_from=DEFAULT_FROM, max_body_bytes=10)
    assert error.field == field
    assert "10 bytes" in error.message


def test_bodies_at_the_limit_are_accepted():
    payload = request(text="é" * 3, html="x" * 4)
    parsed = parse_email_request(payload, default_from=DEFAULT_FROM, max_body_bytes=10)
    assert (parsed.text, parsed.html) == ("é" * 3, "x" * 4)


def test_html_alone_is_enough():
    parsed = parse_email_request(request(text=..., html="<p>hi</p>"), default_from=DEFAULT_FROM)
    assert (parsed.text, parsed.html) == (None, "<p>hi</p>")
