"""Webhooks on real processes: API -> worker -> SMTP server -> email_events -> outbox -> a
Celery worker on the webhooks queue -> a local HTTP receiver, signatures checked by the
independent `standardwebhooks` package.

The receiver listens on 127.0.0.1, so the app and the worker run with
MASSMAILER_WEBHOOK_ALLOW_PRIVATE=true; nothing leaves this machine.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import WebhookEndpoint, WebhookOutbox
from tests import infra
from tests.processes import WEBHOOK_ENV, Receiver, register, verified, webhooks_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER_QUEUES = "emails,maintenance,webhooks"


@pytest.fixture
def env(env):
    return {**env, **WEBHOOK_ENV}


@pytest.fixture
def receiver_script() -> list[int]:
    return [503]  # the first try fails, so each test sees a retry


def test_a_sent_email_reaches_the_receiver_signed_and_a_503_is_retried(
    client, auth, env, receiver, smtp_server
):
    webhook = register(client, auth, receiver.url, ["email.sent", "email.failed"])
    response = client.post(
        "/v1/emails",
        json={"to": "reader@example.com", "subject": "Hi", "text": "Hello"},
        headers=auth,
    )
    job_id = response.get_json()["id"]

    # As the Procfile runs them: a sending worker (with beat here) and a webhooks worker on the
    # threads pool.
    with infra.running_worker(env, beat=True), webhooks_worker(env):
        infra.wait_until(lambda: len(receiver.requests) >= 2, 30, message="the retry")

    first, retry = receiver.requests[:2]
    assert first[0]["webhook-id"] == retry[0]["webhook-id"]  # stable across retries
    assert first[0]["webhook-timestamp"] < retry[0]["webhook-timestamp"]  # fresh, re-signed
    assert first[0]["webhook-signature"] != retry[0]["webhook-signature"]
    payload = verified(webhook["secret"], retry)
    assert payload["type"] == "email.sent"
    assert payload["data"]["email_id"] == job_id
    assert payload["data"]["to"] == "reader@example.com"
    assert payload["data"]["provider"] == "primary"
    assert set(payload) == {"type", "timestamp", "data"}
    verified(webhook["secret"], first)
    tries = client.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=auth).get_json()
    assert [(t["attempt"], t["outcome"], t["status_code"]) for t in tries["items"]] == [
        (2, "delivered", 200),
        (1, "retry", 503),
    ]


def test_a_completed_batch_is_announced_once_and_410_disables_the_endpoint(
    client, auth, env, smtp_server
):
    receiver = Receiver(script=[410])
    try:
        webhook = register(client, auth, receiver.url, ["batch.completed"])
        batch = client.post(
            "/v1/batches",
            json={
                "template": {"subject": "Hi {{ n }}", "text": "Hello {{ n }}"},
                "recipients": [{"to": f"r{i}@example.com", "vars": {"n": i}} for i in range(3)],
            },
            headers=auth,
        ).get_json()

        with infra.running_worker(env, queues=WORKER_QUEUES, beat=True):
            infra.wait_until(lambda: receiver.requests, 30, message="batch.completed")
            infra.wait_until(lambda: _disabled(webhook["id"]), 10, message="the endpoint off")

        [request] = receiver.requests
        payload = verified(webhook["secret"], request)
        assert payload["type"] == "batch.completed"
        assert payload["data"]["batch_id"] == batch["id"]
        assert payload["data"]["counts"] == {"SENT": 3}
        db.session.expire_all()
        row = db.session.scalar(select(WebhookOutbox))
        assert (row.state, row.attempts) == ("failed", 1)
    finally:
        receiver.close()


def _disabled(endpoint_id: int) -> bool:
    db.session.expire_all()
    return not db.session.get(WebhookEndpoint, endpoint_id).enabled
