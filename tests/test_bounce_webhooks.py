"""Issue 12 item 7 in one pass on real processes: the worker sends, the `bounces` process takes a
DSN and an ARF report over SMTP, and the `webhooks` process tells a local receiver all of it.

API -> worker (with beat) -> test SMTP server; then smtplib -> `flask --app wsgi bounces serve`;
every event -> outbox -> `webhooks` worker (threads pool) -> receiver, whose requests are checked
with the independent `standardwebhooks` package. The receiver answers 503 to the first try.
"""

from __future__ import annotations

from collections import defaultdict
from email import message_from_bytes

import pytest

from tests import infra
from tests.bounce_fixtures import fixture
from tests.processes import (
    WEBHOOK_ENV,
    bounces_process,
    register,
    send_report,
    state,
    verified,
    webhooks_worker,
)
from tests.test_end_to_end import post, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS = ["email.sent", "email.bounced", "email.complained"]
GONE, ANGRY = "gone@example.org", "angry@example.org"


@pytest.fixture
def env(env):
    return {**env, **WEBHOOK_ENV, "MASSMAILER_FEEDBACK_ADDRESS": "fbl@massmailer.test"}


@pytest.fixture
def receiver_script() -> list[int]:
    return [503]  # the first try fails, so the test sees a retry


def test_a_bounce_and_a_complaint_fail_suppress_and_reach_the_receiver_signed(
    client, auth, env, receiver, smtp_server
):
    webhook = register(client, auth, receiver.url, EVENTS)
    gone, angry = (post(client, auth, to=r, subject="December offers") for r in (GONE, ANGRY))

    with infra.running_worker(env, beat=True), webhooks_worker(env):
        wait_for_status([gone, angry])
        sent = {m.rcpt_tos[0]: m for m in smtp_server.messages}
        with bounces_process(env) as port:
            hard = report("postfix_hard_5.1.1.eml", sent[GONE])
            assert send_report(port, sent[GONE].mail_from, hard).endswith("applied")
            complaint = report("arf_abuse.eml", sent[ANGRY])
            assert send_report(port, "fbl@massmailer.test", complaint).endswith("applied")
        # Four messages, the first of them tried twice.
        infra.wait_until(lambda: len(receiver.requests) >= 5, 30, message="5 webhook requests")

    after = state()
    assert after[GONE][::2] == ("FAILED", "hard_bounce")
    assert after[GONE][1].startswith("bounced: 5.1.1")
    assert after[ANGRY] == ("SENT", None, "complaint")

    tries = defaultdict(list)
    for request in receiver.requests:
        payload = verified(webhook["secret"], request)  # every try, the 503'd one included
        tries[request[0]["webhook-id"]].append((request[0]["webhook-timestamp"], payload))
    received = sorted((p["type"], p["data"]["email_id"]) for [(_, p), *_] in tries.values())
    assert received == [
        ("email.bounced", gone),
        ("email.complained", angry),
        ("email.sent", gone),
        ("email.sent", angry),
    ]
    first = receiver.requests[0][0]
    [(first_at, first_body), (retry_at, retry_body)] = tries[first["webhook-id"]]
    assert first_at < retry_at  # the retry has the same webhook-id and a new timestamp
    assert first_body == retry_body
    assert sum(len(t) for t in tries.values()) == 5  # nothing else was tried twice
    bounced = next(p for [(_, p), *_] in tries.values() if p["type"] == "email.bounced")
    assert (bounced["data"]["to"], bounced["data"]["enhanced_code"]) == (GONE, "5.1.1")


def report(name: str, sent) -> bytes:
    """A real-shaped report quoting the VERP sender and Message-ID the SMTP server received."""
    return fixture(
        name,
        rcpt=sent.rcpt_tos[0],
        verp=sent.mail_from,
        message_id=message_from_bytes(sent.data)["Message-ID"],
    )
