"""A real worker DKIM-signs what it sends; dkimpy verifies the messages as the server got them."""

from __future__ import annotations

import json
import re

import pytest

from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra
from tests.conftest import provider_entry
from tests.dkim_keys import make_keys, pem, signatures, stub_dns, verify_each
from tests.test_end_to_end import post, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = make_keys("massmailer.test")  # the tests' default From: sender@massmailer.test
DNS = stub_dns(KEYS)


@pytest.fixture
def env(env):
    return {
        **env,
        "MASSMAILER_DKIM_KEYS": json.dumps(
            [
                {"domain": "massmailer.test", "selector": "s1", "private_key_env": "DKIM_RSA"},
                {"domain": "massmailer.test", "selector": "e1", "private_key_env": "DKIM_ED"},
            ]
        ),
        "DKIM_RSA": pem(KEYS.rsa.private_key),
        "DKIM_ED": pem(KEYS.ed25519.private_key),
    }


def signed_headers(message: bytes) -> list[list[bytes]]:
    return [re.sub(rb"\s", b"", t[b"h"]).split(b":") for t in signatures(message)]


def test_every_kind_of_message_arrives_with_two_signatures_that_verify(
    client, auth, env, smtp_server
):
    kinds = {
        "both-parts@example.com": dict(
            to="Zoë Ünïcode <both-parts@example.com>",
            subject="Grüße — 你好, with a subject long enough to be folded onto a second line",
            text="Plain part ✓\n\n",
            html="<p>HTML part ✓</p>",
            headers={"Reply-To": "Ünïcode Help <help@example.com>", "X-Campaign": "welcome"},
        ),
        "long-lines@example.com": dict(
            text="a line of 2000 characters: " + "x" * 2000 + "\n.starts with a dot\n. \n"
            "trailing spaces and\ttabs  \t \n",
            html="<p>" + "long html line " * 200 + "</p>",
        ),
        "plain-7bit@example.com": dict(text="Trailing spaces   \nand  tabs\t \n.a dot line\n\n\n"),
        "html-only@example.com": dict(text=..., html="<p>只有 HTML, 日本語のテキスト</p>"),
        "marketing@example.com": dict(category="marketing", text="Unsubscribe below."),
    }
    job_ids = [post(client, auth, **{"to": to, **fields}) for to, fields in kinds.items()]

    with infra.running_worker(env):
        wait_for_status(job_ids)

    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(kinds)
    for received in smtp_server.messages:
        who = received.rcpt_tos[0]
        assert verify_each(received.data, DNS) == [True, True], who
        algorithms = [t[b"a"] for t in signatures(received.data)]
        assert algorithms == [b"rsa-sha256", b"ed25519-sha256"], who
        for names in signed_headers(received.data):
            assert names[:2] == [b"from", b"from"] and b"message-id" in names and b"date" in names
    marketing = next(m for m in smtp_server.messages if m.rcpt_tos == ["marketing@example.com"])
    assert b"list-unsubscribe-post" in signed_headers(marketing.data)[0]  # RFC 8058


@pytest.fixture
def ses_like():
    with FaultSMTPServer() as server:
        yield server


def test_a_provider_that_rewrites_headers_gets_them_left_out_of_h(client, auth, env, ses_like):
    # Like SES, this provider rewrites Message-ID and Date.
    entry = provider_entry("ses-like", ses_like, dkim_exclude_headers=["message-id", "date"])
    env = {**env, "MASSMAILER_PROVIDERS": json.dumps([entry])}
    job_id = post(client, auth, to="reader@example.com", text="Hi", html="<b>Hi</b>")

    with infra.running_worker(env):
        wait_for_status([job_id])

    [received] = ses_like.messages
    for names in signed_headers(received.data):
        assert b"message-id" not in names and b"date" not in names
        assert {b"from", b"to", b"subject", b"content-type"} <= set(names)
    head, _, body = received.data.partition(b"\r\n\r\n")
    rewritten = b"\r\n".join(
        b"Message-ID: <0100018c-ses@email.amazonses.com>"
        if line.lower().startswith(b"message-id:")
        else line
        for line in head.split(b"\r\n")
    )
    assert verify_each(rewritten + b"\r\n\r\n" + body, DNS) == [True, True]


def test_a_sender_domain_without_a_key_is_sent_unsigned(client, auth, env, smtp_server):
    signed = post(client, auth, to="a@example.com")
    unsigned = post(client, auth, to="b@example.com", **{"from": "News <news@unsigned.test>"})

    with infra.running_worker(env):
        wait_for_status([signed, unsigned])

    by_rcpt = {m.rcpt_tos[0]: m.data for m in smtp_server.messages}
    assert verify_each(by_rcpt["a@example.com"], DNS) == [True, True]
    assert b"DKIM-Signature" not in by_rcpt["b@example.com"]
