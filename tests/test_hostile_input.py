"""Hostile input, tried as an attacker with a key would (docs/security.md lists each with its
outcome): every answer is a 4xx JSON error naming the field, never a 500, and nothing is stored
or sent that should not be."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from massmailer.delivery.providers.base import ProviderConfig, SendError
from massmailer.delivery.providers.smtp import SmtpSession
from massmailer.extensions import db
from massmailer.models import EmailJob, Suppression
from massmailer.testing.smtp_server import FaultSMTPServer, Rule

pytestmark = pytest.mark.integration

GOOD = {"to": "ann@example.com", "subject": "Hi", "text": "Hello"}
TEMPLATE = {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"}


def post(client, auth, payload, path="/v1/emails", **headers):
    return client.post(path, json=payload, headers={**auth, **headers})


def jobs() -> int:
    return db.session.scalar(select(func.count()).select_from(EmailJob))


def assert_refused(response, status: int, field: str | None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    assert error["field"] == field
    assert error["message"]


# --- header injection in every header-bound field -------------------------------------------

INJECTION = "x\r\nBcc: victim@evil.example"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**GOOD, "to": f"ann@example.com{INJECTION}"}, "to"),
        ({**GOOD, "to": f'"{INJECTION}" <ann@example.com>'}, "to"),
        ({**GOOD, "from": f"Shop{INJECTION} <news@shop.example>"}, "from"),
        ({**GOOD, "subject": INJECTION}, "subject"),
        ({**GOOD, "subject": "x\u2028Bcc: v@evil.example"}, "subject"),
        ({**GOOD, "headers": {"X-Tag": INJECTION}}, "headers.X-Tag"),
        ({**GOOD, "headers": {"Reply-To": INJECTION}}, "headers.Reply-To"),
        ({**GOOD, "headers": {"X-Tag\r\nBcc": "v@evil.example"}}, "headers.?"),
        ({**GOOD, "headers": {"Bcc": "victim@evil.example"}}, "headers.Bcc"),
    ],
)
def test_header_injection_in_a_single_send_is_refused_naming_the_field(
    client, auth, payload, field
):
    assert_refused(post(client, auth, payload), 400, field)
    assert jobs() == 0


def test_header_injection_in_a_batch_subject_or_rendered_subject_never_reaches_a_header(
    client, auth
):
    bad_template = post(
        client,
        auth,
        {"template": {**TEMPLATE, "subject": INJECTION}, "recipients": [{"to": "a@example.com"}]},
        "/v1/batches",
    )
    rendered = post(
        client,
        auth,
        {
            "template": TEMPLATE,
            "recipients": [{"to": "a@example.com", "vars": {"name": INJECTION}}],
        },
        "/v1/batches",
    )

    assert_refused(bad_template, 400, "template.subject")
    assert rendered.status_code == 202
    assert rendered.get_json()["accepted"] == 0
    assert "rendered subject" in rendered.get_json()["rejected"][0]["reason"]


def test_header_injection_in_a_suppression_detail_is_refused(client, auth):
    response = post(
        client, auth, {"email": "a@example.com", "detail": INJECTION}, "/v1/suppressions"
    )

    assert_refused(response, 400, "detail")


# --- encodings, nesting, sizes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"to": "\xff\xfe@example.com", "subject": "x", "text": "y"}', b"\xc3\x28", b"\xed\xa0\x80"],
)
def test_invalid_utf8_answers_400(client, auth, raw):
    response = client.post(
        "/v1/emails", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert_refused(response, 400, "body")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**GOOD, "text": "a\u0000b"}, "text"),
        ({**GOOD, "subject": "\ud800"}, "subject"),
        ({"template": TEMPLATE, "recipients": [{"to": "a@example.com", "vars": {"n\u0000": 1}}]},
         "recipients[0].vars"),
    ],
)  # fmt: skip
def test_nul_and_lone_surrogates_answer_400_not_500(client, auth, payload, field):
    path = "/v1/batches" if "template" in payload else "/v1/emails"

    assert_refused(post(client, auth, payload, path), 400, field)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # The ways a raw body can carry them: upper-case escapes, a UTF-8-encoded surrogate
        # (json decodes with surrogatepass), and escapes inside a UTF-16 body.
        (b'{"to": "ann@example.com", "subject": "\\uDBFF", "text": "y"}', "subject"),
        (b'{"to": "ann@example.com", "subject": "x", "text": "a\xed\xb0\x80"}', "text"),
        ('{"to": "ann@example.com", "subject": "x", "text": "a\\u0000"}'.encode("utf-16"), "text"),
    ],
)
def test_nul_and_lone_surrogates_in_raw_bodies_answer_400(client, auth, raw, field):
    response = client.post(
        "/v1/emails", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert_refused(response, 400, field)


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul(client, auth):
    raw = b'{"to": "ann@example.com", "subject": "x", "text": "C:\\\\u0000"}'

    response = client.post(
        "/v1/emails", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert response.status_code == 202, response.get_data(as_text=True)[:300]


def test_nul_in_the_url_answers_400_not_500(client, auth):
    assert_refused(client.get("/v1/suppressions/a%00b@example.com", headers=auth), 400, "path")
    assert_refused(client.get("/v1/suppressions?after=%00", headers=auth), 400, "query.after")


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_answers_400(client, auth, depth):
    raw = b'{"to": "a@example.com", "subject": "x", "text": "y", "headers": ' + (
        b"[" * depth + b"]" * depth + b"}"
    )

    response = client.post(
        "/v1/emails", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert "nest" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "size"),
    [("/v1/emails", 10_000_000), ("/v1/suppressions", 10_000_000), ("/v1/batches", 25_000_000)],
)
def test_a_body_over_the_routes_limit_answers_413_in_json(client, auth, path, size):
    raw = b'{"to": "' + b"a" * size + b'"}'

    response = client.post(path, data=raw, headers={**auth, "Content-Type": "application/json"})

    assert response.status_code == 413
    assert "error" in response.get_json()
    assert jobs() == 0


def test_a_10_mb_batch_within_its_limit_is_parsed_and_refused_naming_the_field(client, auth):
    raw = b'{"template": {"subject": "x", "text": "' + b"a" * 10_000_000 + b'"}}'

    response = client.post(
        "/v1/batches", data=raw, headers={**auth, "Content-Type": "application/json"}
    )

    assert_refused(response, 400, "template")
    assert jobs() == 0


def test_ten_thousand_addresses_where_one_is_expected_answer_400(client, auth):
    many = [f"r{i}@example.com" for i in range(10_000)]

    single = post(client, auth, {**GOOD, "to": many})
    joined = post(client, auth, {**GOOD, "to": ", ".join(many)})
    suppression = post(client, auth, {"email": many}, "/v1/suppressions")

    assert_refused(single, 400, "to")
    assert_refused(joined, 400, "to")
    assert_refused(suppression, 400, "email")
    assert jobs() == 0


# --- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "\u0430dmin@example.com",  # Cyrillic a in the local part
        "admin\u200b@example.com",  # zero-width space in the local part
        "admin@example.com\u0000",
        "admin@exa\u202emple.com",  # right-to-left override
        "admin@example.com, boss@example.com",
    ],
)
def test_lookalike_and_invisible_characters_in_addresses_are_refused(client, auth, address):
    assert_refused(post(client, auth, {**GOOD, "to": address}), 400, "to")


def test_a_lookalike_domain_is_stored_and_sent_in_its_punycode_form(client, auth):
    # IDN domains are legitimate; the ASCII form is what is stored, shown and sent, so a
    # lookalike of example.com is visibly another domain (nameprep drops the zero-width space).
    response = post(client, auth, {**GOOD, "to": "admin@ex\u0430mple.com\u200b"})

    assert response.status_code == 202
    job = db.session.get(EmailJob, response.get_json()["id"])
    assert job.recipient.startswith("admin@xn--") and job.recipient.isascii()


def test_an_idn_domain_is_stored_and_sent_as_punycode(client, auth):
    response = post(client, auth, {**GOOD, "to": "ann@bücher.example"})

    assert response.status_code == 202
    job = db.session.get(EmailJob, response.get_json()["id"])
    assert job.recipient == "ann@xn--bcher-kva.example"


# --- Idempotency-Key abuse --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\there", "é"])
def test_a_malformed_idempotency_key_answers_400(client, auth, key):
    assert_refused(post(client, auth, GOOD, **{"Idempotency-Key": key}), 400, "Idempotency-Key")


def test_an_idempotency_key_reused_with_another_body_or_by_another_key_is_contained(client, auth):
    from massmailer import apikeys

    other = {"Authorization": f"Bearer {apikeys.create(db.session, 'other')}"}
    first = post(client, auth, GOOD, **{"Idempotency-Key": "k1"})
    changed = post(client, auth, {**GOOD, "subject": "changed"}, **{"Idempotency-Key": "k1"})
    elsewhere = post(client, other, GOOD, **{"Idempotency-Key": "k1"})

    assert first.status_code == 202
    assert_refused(changed, 409, "Idempotency-Key")
    assert elsewhere.status_code == 202, "keys are scoped per API key"
    assert elsewhere.get_json()["id"] != first.get_json()["id"]
    assert jobs() == 2


# --- SQL metacharacters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "email", ["o'brien@example.com", "a'--@example.com", "x%';DROP TABLE suppressions;--@e.com"]
)
def test_sql_metacharacters_are_data_not_sql(client, auth, email):
    response = post(client, auth, {"email": email}, "/v1/suppressions")
    listed = client.get("/v1/suppressions?after=' OR '1'='1", headers=auth)
    looked_up = client.get("/v1/suppressions/' OR '1'='1@example.com", headers=auth)

    assert response.status_code in (201, 400)
    assert listed.status_code == 200 and looked_up.status_code == 404
    assert db.session.scalar(select(func.count()).select_from(Suppression)) <= 1


# --- oversized provider replies ---------------------------------------------------------------


@pytest.mark.parametrize("size", [2_000, 20_000])
def test_an_oversized_provider_reply_is_a_classified_failure_with_a_bounded_message(size):
    with FaultSMTPServer() as server:
        server.set_rules([Rule("RCPT", 550, "5.1.1 " + "x" * size)])
        session = SmtpSession(ProviderConfig("relay", "127.0.0.1", server.port))
        session.open()
        try:
            with pytest.raises(SendError) as caught:
                session.send("b@example.com", "a@example.com", b"Subject: x\r\n\r\ny\r\n")
        finally:
            session.close()

    assert caught.value.kind is not None
    assert len(str(caught.value)) <= size + 200
