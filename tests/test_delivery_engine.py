"""Several providers through real workers: failover, classification, breakers, retries, limits."""

from __future__ import annotations

import socket
import time
from collections import Counter

import pytest
import redis
from sqlalchemy import select

from massmailer.delivery.limits import RedisLimits
from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob, Suppression
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from tests import infra
from tests.conftest import provider_entry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def closed_port() -> int:
    """A loopback port with nothing listening: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_many(client, auth, n, prefix="r", **fields):
    ids = []
    for i in range(n):
        payload = {"to": f"{prefix}{i}@example.com", "subject": f"#{i}", "text": "hi", **fields}
        response = client.post("/v1/emails", json=payload, headers=auth)
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def jobs(ids) -> list[EmailJob]:
    db.session.expire_all()
    return db.session.scalars(select(EmailJob).where(EmailJob.job_id.in_(ids))).all()


def wait_final(ids, timeout, statuses=("SENT", "FAILED")):
    infra.wait_until(
        lambda: all(j.status in statuses for j in jobs(ids)),
        timeout,
        interval=0.3,
        message=f"jobs to end in {statuses}: {Counter(j.status for j in jobs(ids))}",
    )


def attempts_of(ids) -> list[EmailAttempt]:
    # Attempts of one job are written by different threads and processes, so only their numbers
    # give their order.
    query = (
        select(EmailAttempt)
        .where(EmailAttempt.job_id.in_(ids))
        .order_by(EmailAttempt.job_id, EmailAttempt.attempt_no, EmailAttempt.id)
    )
    return db.session.scalars(query).all()


def two_providers(env, a: dict, b: dict) -> dict:
    import json

    return {**env, "MASSMAILER_PROVIDERS": json.dumps([a, b])}


def test_a_provider_refusing_connections_fails_over_and_nothing_fails(
    client, auth, env, smtp_server
):
    env = two_providers(
        env,
        {"name": "down", "host": "127.0.0.1", "port": closed_port(), "weight": 5},
        provider_entry("up", smtp_server),
    )
    ids = post_many(client, auth, 20)

    with infra.running_worker(env):
        wait_final(ids, 30)

    assert {j.status for j in jobs(ids)} == {"SENT"}
    assert {j.provider for j in jobs(ids)} == {"up"}
    assert smtp_server.message_count == 20
    failed_tries = [a for a in attempts_of(ids) if a.provider == "down"]
    assert failed_tries and {a.outcome for a in failed_tries} == {"provider_fault"}
    # The breaker opened after its threshold, so "down" was not tried for every job.
    assert len(failed_tries) < 20


def test_a_provider_answering_451_to_a_share_still_gets_everything_sent(
    client, auth, env, smtp_server
):
    smtp_server.set_rules([Rule("DATA", 451, "4.3.0 try later", probability=0.3)])
    env = {
        **env,
        "MASSMAILER_PROVIDERS": f'[{{"name": "flaky", "host": "127.0.0.1", '
        f'"port": {smtp_server.port}}}]',
    }
    ids = post_many(client, auth, 30)

    with infra.running_worker(env):
        wait_final(ids, 90)

    finished = jobs(ids)
    assert {j.status for j in finished} == {"SENT"}
    retried = [j for j in finished if j.attempts >= 2]
    assert retried, "some messages needed a second attempt"
    for job in retried:
        outcomes = [a.outcome for a in attempts_of([job.job_id])]
        assert outcomes[-1] == "sent" and "transient" in outcomes
        assert job.next_attempt_at is not None
    assert sorted(set(m.rcpt_tos[0] for m in smtp_server.messages)) == sorted(
        f"r{i}@example.com" for i in range(30)
    )


def test_a_hard_bounce_fails_at_once_and_suppresses_the_address(client, auth, env, smtp_server):
    smtp_server.set_rules([Rule("RCPT", 550, "5.1.1 User unknown", match="gone@")])
    bounced = client.post(
        "/v1/emails", json={"to": "gone@example.com", "subject": "x", "text": "x"}, headers=auth
    ).get_json()["id"]
    fine = post_many(client, auth, 1, prefix="fine")[0]

    with infra.running_worker(env):
        wait_final([bounced, fine], 30)
        again = client.post(
            "/v1/emails", json={"to": "Gone@Example.com", "subject": "x", "text": "x"}, headers=auth
        ).get_json()["id"]
        wait_final([again], 30)

    job = db.session.get(EmailJob, bounced)
    assert (job.status, job.attempts) == ("FAILED", 1)
    assert "550" in job.last_error and "5.1.1" in job.last_error
    [attempt] = attempts_of([bounced])
    assert (attempt.smtp_code, attempt.enhanced_code, attempt.outcome) == (
        550,
        "5.1.1",
        "permanent_recipient",
    )
    assert db.session.get(Suppression, "gone@example.com").reason == "hard_bounce"
    later = db.session.get(EmailJob, again)
    assert (later.status, later.last_error, later.attempts) == ("FAILED", "suppressed", 0)
    assert db.session.get(EmailJob, fine).status == "SENT"
    assert [m.rcpt_tos for m in smtp_server.messages] == [["fine0@example.com"]]


def test_auth_failures_open_the_breaker_and_the_other_provider_carries_the_load(
    client, auth, env, smtp_server, redis_prefix
):
    with FaultSMTPServer(credentials={"user": "right"}, auth_require_tls=False) as locked:
        env = two_providers(
            {
                **env,
                "MASSMAILER_BREAKER_FAILURES": "3",
                "MASSMAILER_BREAKER_COOLDOWN_SECONDS": "60",
            },
            {
                "name": "badauth",
                "host": "127.0.0.1",
                "port": locked.port,
                "username": "user",
                "password": "wrong-secret",
                "allow_plaintext_auth": True,  # a test relay on loopback
                "weight": 10,
            },
            provider_entry("good", smtp_server),
        )
        ids = post_many(client, auth, 30)

        with infra.running_worker(env) as worker:
            wait_final(ids, 30)
        log = worker.log_text()

    assert {j.status for j in jobs(ids)} == {"SENT"}
    assert {j.provider for j in jobs(ids)} == {"good"}
    bad = [a for a in attempts_of(ids) if a.provider == "badauth"]
    assert bad and all(a.smtp_code == 535 and a.outcome == "provider_fault" for a in bad)
    assert len(bad) <= 3 + 2, "once open, the breaker keeps jobs away from the provider"
    limits = RedisLimits(redis.Redis.from_url(infra.REDIS_URL), prefix=redis_prefix)
    assert limits.breaker_state("badauth") == "open"
    assert "wrong-secret" not in log


def test_when_every_provider_is_down_jobs_wait_and_go_out_when_one_returns(client, auth, env):
    port = closed_port()
    env = {
        **env,
        "MASSMAILER_PROVIDERS": f'[{{"name": "only", "host": "127.0.0.1", "port": {port}}}]',
        "MASSMAILER_BREAKER_FAILURES": "2",
        "MASSMAILER_BREAKER_COOLDOWN_SECONDS": "3",
        "MASSMAILER_MAX_ATTEMPTS": "4",
    }
    ids = post_many(client, auth, 10)

    with infra.running_worker(env):
        infra.wait_until(
            lambda: any(j.next_attempt_at for j in jobs(ids)),
            20,
            message="jobs waiting for a provider",
        )
        assert {j.status for j in jobs(ids)} == {"PENDING"}
        time.sleep(3)
        with FaultSMTPServer(port=port) as back:
            wait_final(ids, 90)
            received = back.message_count

    assert {j.status for j in jobs(ids)} == {"SENT"}
    assert received == 10
    # Waiting for capacity (breaker open) is not charged: nobody used up their attempts.
    assert max(j.attempts for j in jobs(ids)) < 4


def test_retries_waiting_in_a_delay_tier_survive_a_worker_restart(client, auth, env, smtp_server):
    smtp_server.set_rules([Rule("DATA", 451, "4.3.0 busy", times=5)])
    ids = post_many(client, auth, 5)

    with infra.running_worker(env):
        infra.wait_until(
            lambda: all(j.attempts == 1 for j in jobs(ids)), 20, message="every job's first attempt"
        )
    assert {j.status for j in jobs(ids)} == {"PENDING"}
    # No worker runs now; the retries wait in RabbitMQ's 10 s tier, not in any process.
    assert infra.queue_depth(env["BROKER_URL"], "emails.delay.10s") == len(ids)

    with infra.running_worker(env):
        wait_final(ids, 60)

    assert {(j.status, j.attempts) for j in jobs(ids)} == {("SENT", 2)}
    assert smtp_server.message_count == 5


def test_sessions_are_reused_across_messages(client, auth, env, smtp_server):
    ids = post_many(client, auth, 40)

    with infra.running_worker(env, concurrency=1):
        wait_final(ids, 30)

    assert smtp_server.message_count == 40
    assert smtp_server.connections == 1, smtp_server.messages_per_connection


def test_two_worker_processes_together_keep_a_providers_rate_limit(client, auth, env, smtp_server):
    rate = 50
    env = {
        **env,
        "MASSMAILER_PROVIDERS": f'[{{"name": "limited", "host": "127.0.0.1", '
        f'"port": {smtp_server.port}, "rate_per_second": {rate}}}]',
    }
    ids = post_many(client, auth, 650, prefix="rate")

    with infra.running_worker(env, concurrency=2), infra.running_worker(env, concurrency=2):
        wait_final(ids, 120)

    times = sorted(m.received_at for m in smtp_server.messages)
    assert len(times) == 650
    span = times[-1] - times[0]
    assert span >= 10, "the run must last at least 10 seconds"
    observed = (len(times) - 1) / span
    print(f"observed {observed:.1f} msg/s over {span:.1f} s against a limit of {rate}/s")
    assert observed <= rate * 1.10
    # And no stretch of 5 seconds saw more than the limit allows (+10%, plus the GCRA burst).
    # Shorter windows measure the test server's own stalls: it stamps a message when its event
    # loop gets to it, and on a loaded machine a stall releases a cluster of stamps at once.
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 5)
        assert in_window <= rate * 5 * 1.10 + rate / 10 + 1, (in_window, start - times[0])


def test_a_job_that_keeps_failing_transiently_ends_failed_after_max_attempts(
    client, auth, env, smtp_server
):
    smtp_server.set_rules([Rule("RCPT", 451, "4.2.0 mailbox busy")])
    env = {**env, "MASSMAILER_MAX_ATTEMPTS": "2"}
    [job_id] = post_many(client, auth, 1, prefix="busy")

    with infra.running_worker(env):
        wait_final([job_id], 40)

    job = db.session.get(EmailJob, job_id)
    assert (job.status, job.attempts) == ("FAILED", 2)
    assert job.last_error.startswith("max attempts reached; last: transient: primary: 451 4.2.0")
    assert [a.outcome for a in attempts_of([job_id])] == ["transient", "transient"]
    assert smtp_server.message_count == 0
