"""The policy while Redis is down: sends pause, nothing is charged, and they resume after.

Redis holds the fleet's rate limits, connection caps and breakers. Sending without it would
break invariant 5 (limits hold across the fleet), so a worker that cannot reach it hands the
chunk back to the broker (a pause, not a failure) and tries again; see docs/architecture.md.
"""

from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob
from tests import infra

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    """A loopback port with nothing listening (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def own_redis(port: int):
    """A Redis instance of this test's own, on port: never the machine's shared one."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        infra.wait_until(lambda: _answers(port), 10, 0.05, "the test's Redis to listen")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def job_rows(ids: list[int]) -> list[EmailJob]:
    db.session.expire_all()
    return list(db.session.scalars(select(EmailJob).where(EmailJob.job_id.in_(ids))))


def test_sends_pause_while_redis_is_down_and_resume_when_it_returns(client, auth, env, smtp_server):
    port = free_port()
    worker_env = {**env, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    ids = []
    for i in range(3):
        payload = {"to": f"r{i}@example.com", "subject": "Hi", "text": "Hello"}
        response = client.post("/v1/emails", json=payload, headers=auth)
        assert response.status_code == 202
        ids.append(response.get_json()["id"])

    with infra.running_worker(worker_env, concurrency=1) as worker:
        infra.wait_until(
            lambda: worker.log_text().count("event=chunk_requeued reason=outage") >= 2,
            30,
            0.2,
            "the worker to meet the Redis outage",
        )
        time.sleep(1)
        # Paused: nothing sent, nothing failed, nothing charged, every job still waiting.
        assert smtp_server.message_count == 0
        assert {(j.status, j.attempts) for j in job_rows(ids)} == {("PENDING", 0)}
        assert db.session.scalar(select(EmailAttempt.id).limit(1)) is None

        with own_redis(port):
            infra.wait_until(
                lambda: all(j.status == "SENT" for j in job_rows(ids)),
                45,
                0.2,
                "the paused jobs to go out once Redis answers",
            )

    assert smtp_server.message_count == 3
    assert {j.attempts for j in job_rows(ids)} == {1}
