"""Chaos: RabbitMQ restarted, PostgreSQL restarted, Redis stopped for 20 s, mid-run.

Each case runs the API, the workers and beat against a throwaway instance of the service it
breaks (tests/harness/services.py): the machine's own servers are shared and never restarted.
"""

from __future__ import annotations

import time

import pytest

from tests import infra
from tests.chaos.harness import EMAILS, Fault, JobTable, judge, submit_batch
from tests.chaos.processes import BeatProcess, procfile_concurrency
from tests.chaos.stack import api_client
from tests.harness.services import start_postgres, start_rabbitmq, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

CONCURRENCY = procfile_concurrency()


@pytest.fixture
def own_rabbitmq(tmp_path):
    instance = start_rabbitmq(tmp_path / "rabbitmq")
    yield instance
    instance.stop()
    instance.cleanup()


@pytest.fixture
def own_postgres(tmp_path):
    instance = start_postgres(tmp_path / "postgres")
    yield instance
    instance.stop()
    instance.cleanup()


@pytest.fixture
def own_redis(tmp_path):
    instance = start_redis(tmp_path / "redis")
    yield instance
    instance.stop()
    instance.cleanup()


def run_with_service_fault(env, database_url, smtp_server, *, tag, fault_name, inject, bound):
    """Send EMAILS through env's stack; a quarter in, call inject() (it returns once over)."""
    with api_client(env, migrate=database_url == env["DATABASE_URL"]) as (client, auth):
        job_ids = submit_batch(client, auth, tag, EMAILS)
    table = JobTable(database_url, job_ids)
    with BeatProcess(env), infra.running_worker(env, concurrency=CONCURRENCY) as worker:
        table.wait_sent(EMAILS // 4, timeout=120)
        fault = Fault(fault_name)
        inject()
        fault.end()
        settle = table.wait_settled(fault.mono_start, bound)
    return judge(
        table, [smtp_server], fault, bound=bound, settle_seconds=settle, log_paths=[worker.log_path]
    )


def test_rabbitmq_restart_loses_nothing(app, chaos_env, smtp_server, own_rabbitmq, migrated):
    env = {**chaos_env, "BROKER_URL": own_rabbitmq.url}
    verdict = run_with_service_fault(
        env,
        migrated,
        smtp_server,
        tag="rabbit",
        fault_name="RabbitMQ restart",
        inject=own_rabbitmq.restart,
        # Workers reconnect; unacked chunks come back and find their jobs claimed or done; what
        # was claimed at the restart moves again once its 12 s lease expires.
        bound=90.0,
    )
    verdict.assert_holds()


def test_postgresql_restart_loses_nothing(chaos_env, smtp_server, own_postgres):
    env = {**chaos_env, "DATABASE_URL": own_postgres.url}
    verdict = run_with_service_fault(
        env,
        own_postgres.url,
        smtp_server,
        tag="pg",
        fault_name="PostgreSQL restart",
        inject=own_postgres.restart,
        bound=90.0,  # chunks are requeued during the outage; expired claims swept after 12 s
    )
    verdict.assert_holds()


def test_redis_stopped_for_20s_loses_nothing(app, chaos_env, smtp_server, own_redis, migrated):
    env = {**chaos_env, "REDIS_URL": own_redis.url}

    def stop_for_20s() -> None:
        own_redis.stop()
        time.sleep(20)
        own_redis.start()

    verdict = run_with_service_fault(
        env,
        migrated,
        smtp_server,
        tag="redis",
        fault_name="Redis stopped for 20 s",
        inject=stop_for_20s,
        bound=90.0,  # the 20 s outage, then the requeued chunks and expired claims
    )
    verdict.assert_holds()
