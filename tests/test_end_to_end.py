"""The whole path: API -> PostgreSQL -> RabbitMQ -> a real Celery worker process -> SMTP server."""

from __future__ import annotations

import json
from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from massmailer.bounces.verp import VerpSigner
from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra
from tests.conftest import provider_entry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def post(client, auth, **fields):
    """POST one email; a field given as ... is left out of the request."""
    payload = {"to": "reader@example.com", "subject": "Hello", "text": "Hi", **fields}
    payload = {name: value for name, value in payload.items() if value is not ...}
    response = client.post("/v1/emails", json=payload, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def status_of(job_id: int) -> str:
    db.session.expire_all()
    return db.session.get(EmailJob, job_id).status


def wait_for_status(job_ids, status="SENT", timeout=30.0):
    def done():
        db.session.expire_all()
        rows = db.session.scalars(select(EmailJob).where(EmailJob.job_id.in_(job_ids))).all()
        return all(r.status == status for r in rows) and len(rows) == len(job_ids)

    infra.wait_until(done, timeout, message=f"jobs {list(job_ids)[:5]}... to be {status}")


def test_an_email_goes_from_the_api_to_the_smtp_server(client, auth, env, smtp_server, settings):
    job_id = post(
        client,
        auth,
        to="Zoë Ünïcode <zoe@example.com>",
        subject="Grüße — 你好",
        text="Plain part ✓",
        html="<p>HTML part ✓</p>",
        headers={"Reply-To": "help@example.com", "X-Campaign": "welcome"},
        priority=5,
    )

    with infra.running_worker(env):
        wait_for_status([job_id])

    job = db.session.get(EmailJob, job_id)
    assert (job.status, job.provider, job.attempts) == ("SENT", "primary", 1)
    assert job.sent_at is not None and job.provider_reply.startswith("2.0.0 Ok: queued as ")
    assert job.provider_queue_id == job.provider_reply.rsplit(" ", 1)[1]  # the provider's id
    [received] = smtp_server.messages
    mac = VerpSigner(settings.secret_key).mac(job_id)
    assert received.mail_from == f"bounces+{job_id}-{mac}@massmailer.test"  # signed VERP
    assert received.rcpt_tos == ["zoe@example.com"]
    message = message_from_bytes(received.data, policy=policy.default)
    assert message["Subject"] == "Grüße — 你好"
    assert message["To"].addresses[0].display_name == "Zoë Ünïcode"
    assert message["From"].addresses[0].addr_spec == "sender@massmailer.test"
    assert message["Message-ID"] == job.message_id
    assert message["Reply-To"] == "help@example.com"
    assert message["X-Campaign"] == "welcome"
    assert message["Date"] is not None
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content().strip() == "Plain part ✓"
    assert html.get_content().strip() == "<p>HTML part ✓</p>"
    attempts = db.session.scalars(select(EmailAttempt).where(EmailAttempt.job_id == job_id)).all()
    assert [(a.provider, a.outcome, a.smtp_code) for a in attempts] == [("primary", "sent", 250)]
    history = client.get(f"/v1/emails/{job_id}", headers=auth).get_json()["history"]
    assert history[0]["outcome"] == "sent" and history[0]["at"].endswith("+00:00")


def test_high_priority_jumps_a_backlog_queued_while_no_worker_ran(client, auth, env, smtp_server):
    backlog = [post(client, auth, to=f"low{i}@example.com", priority=0) for i in range(40)]
    urgent = [post(client, auth, to=f"high{i}@example.com", priority=9) for i in range(5)]

    with infra.running_worker(env, concurrency=1):
        wait_for_status(backlog + urgent, timeout=60)

    order = [m.rcpt_tos[0] for m in smtp_server.messages]
    assert len(order) == 45
    assert sorted(order[:5]) == sorted(f"high{i}@example.com" for i in range(5)), order[:10]


def test_a_chunk_delivered_twice_is_sent_once(client, auth, env, smtp_server, app):
    job_ids = [post(client, auth, to=f"dup{i}@example.com") for i in range(10)]
    publisher = app.extensions["massmailer.publisher"]
    # The API published each job once; publish the same ids again as one chunk, twice.
    publisher.publish(job_ids, 0)
    publisher.publish(job_ids, 0)

    with infra.running_worker(env):
        wait_for_status(job_ids)
        infra.wait_until(
            lambda: infra.queue_depth(env["BROKER_URL"], "emails") == 0,
            20,
            message="the duplicate messages to be consumed",
        )

    received = sorted(m.rcpt_tos[0] for m in smtp_server.messages)
    assert received == sorted(f"dup{i}@example.com" for i in range(10))


def test_the_threads_pool_sends_chunks_concurrently_over_several_sessions(client, auth, env):
    # The Procfile's default pool: SMTP is I/O-bound, so threads overlap the providers' latency.
    with FaultSMTPServer(latency_seconds=0.02) as slow:
        env = {**env, "MASSMAILER_PROVIDERS": json.dumps([provider_entry("slow", slow)])}
        job_ids = [post(client, auth, to=f"t{i}@example.com") for i in range(40)]

        with infra.running_worker(env, pool="threads", concurrency=8):
            wait_for_status(job_ids, timeout=60)

        assert slow.message_count == 40
        assert slow.connections > 1, "several sessions were open at once"
