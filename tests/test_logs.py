"""Logs are key=value lines a job can be followed by, and they carry no secrets or bodies."""

from __future__ import annotations

import io
import logging
import shlex

import pytest
from sqlalchemy import select

from massmailer import logs
from massmailer.extensions import db
from massmailer.models import EmailJob
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from tests import infra
from tests.conftest import provider_entry

PASSWORD = "pr0vider-Passw0rd!"
BODY = "Confidential body text 7f3a: your reset code is 991-204."


def fields(line: str) -> dict[str, str]:
    """The key=value pairs of one line (values may be quoted)."""
    pairs = (token.partition("=") for token in shlex.split(line.split(" ", 2)[2], posix=True))
    return {key: value for key, sep, value in pairs if sep}


def capture(message: str, *args: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.RedactingFormatter("%(message)s%(context)s"))
    logger = logging.getLogger("tests.logs.capture")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, *args)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().strip()


def test_lines_carry_the_task_id_only_while_a_task_runs():
    logs.bind_task("task-123")
    try:
        inside = capture("event=sent job_id=%d", 7)
    finally:
        logs.unbind_task()
    outside = capture("event=sent job_id=%d", 7)

    assert inside == "event=sent job_id=7 task_id=task-123"
    assert outside == "event=sent job_id=7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("postgresql://app:s3@db/mm?x=1", "postgresql://app:***@db/mm?x=1"),
        ("postgresql://postgres@db/mm", "postgresql://postgres@db/mm"),
        ("http://example.com/a:b", "http://example.com/a:b"),
        ("error='a:b@c'", "error='a:b@c'"),
    ],
)
def test_credentials_in_urls_are_masked(text, expected):
    assert logs.redact(text) == expected


@pytest.fixture
def smtp_server():
    server = FaultSMTPServer(
        credentials={"mailer": PASSWORD},
        auth_require_tls=False,
        rules=[Rule("RCPT", 550, "5.1.1 No such user here", match="gone@")],
    )
    with server:
        yield server


@pytest.fixture
def providers(smtp_server):
    return [
        provider_entry(
            "primary", smtp_server, username="mailer", password=PASSWORD, allow_plaintext_auth=True
        )
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_a_workers_delivery_lines_name_job_task_provider_and_outcome(client, auth, env):
    ids = []
    for to in ("reader1@example.com", "reader2@example.com", "gone@example.com"):
        payload = {"to": to, "subject": "Your code", "text": BODY, "html": f"<p>{BODY}</p>"}
        response = client.post("/v1/emails", json=payload, headers=auth)
        assert response.status_code == 202
        ids.append(response.get_json()["id"])

    with infra.running_worker(env) as worker:
        infra.wait_until(lambda: _all_final(ids), 30, message="the jobs to finish")
    log = worker.log_text()

    # The slot's thread (engine) and the sender threads (sending) both log delivery lines.
    lines = [fields(line) for line in log.splitlines() if "logger=massmailer.delivery." in line]
    by_event = {(f["event"], int(f["job_id"])): f for f in lines if "job_id" in f}
    for job_id in ids[:2]:
        sent = by_event[("sent", job_id)]
        assert sent["provider"] == "primary"
        assert len(sent["task_id"]) == 36  # Celery's uuid
    failed = by_event[("failed", ids[2])]
    assert failed["provider"] == "primary" and failed["task_id"]
    assert "5.1.1" in failed["reason"]
    assert PASSWORD not in log
    assert "Confidential body text" not in log
    assert "guest:guest" not in log  # the broker URL's password


def _all_final(ids: list[int]) -> bool:
    db.session.expire_all()
    statuses = db.session.scalars(select(EmailJob.status).where(EmailJob.job_id.in_(ids))).all()
    return len(statuses) == len(ids) and "PENDING" not in statuses
