"""The throwaway servers of tests/harness/services.py: they start, serve, survive a restart and a
SIGKILL with their data, stop, and never touch the machine's own instances."""

from __future__ import annotations

import socket

import psycopg2
import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.harness import services

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MACHINE_PORTS = {5432, 5672, 6379}


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _sql(url: str, statement: str, *params):
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def test_postgres_keeps_its_data_across_restart_and_kill(tmp_path):
    pg = services.start_postgres(tmp_path / "pg")
    try:
        assert pg.port not in MACHINE_PORTS
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        _sql(pg.url, "CREATE DATABASE harness_probe")  # the right the test fixtures need
        _sql(pg.url, "CREATE TABLE kept (n int)")
        _sql(pg.url, "INSERT INTO kept VALUES (1)")

        pg.restart()
        _sql(pg.url, "INSERT INTO kept VALUES (2)")

        pg.kill()
        with pytest.raises(psycopg2.OperationalError):
            _sql(pg.url, "SELECT 1")
        pg.start()
        assert _sql(pg.url, "SELECT n FROM kept ORDER BY n") == [(1,), (2,)]

        pg.stop()
        assert not _listening(pg.port)
    finally:
        pg.stop()
        pg.cleanup()


def test_redis_serves_and_stops(tmp_path):
    server = services.start_redis(tmp_path / "redis")
    try:
        assert server.port not in MACHINE_PORTS
        client = redis.Redis.from_url(server.url)
        client.set("harness", "yes")
        assert client.get("harness") == b"yes"
        client.close()

        server.kill()
        assert not _listening(server.port)
        server.start()
        assert redis.Redis.from_url(server.url).ping()

        server.stop()
        assert not _listening(server.port)
    finally:
        server.stop()
        server.cleanup()


def _publish(url: str, queue: Queue, body: str) -> None:
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        producer.publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            delivery_mode=2,
            retry=False,
        )


def _take(url: str, queue: Queue) -> str | None:
    with Connection(url) as conn:
        message = queue(conn.default_channel).get(no_ack=True)
        return message.payload if message else None


def test_rabbitmq_node_is_its_own_and_keeps_durable_messages(tmp_path):
    rabbit = services.start_rabbitmq(tmp_path / "rabbit")
    queue = Queue(
        "harness", Exchange("harness", type="direct", durable=True), "harness", durable=True
    )
    try:
        assert rabbit.port not in MACHINE_PORTS
        # ctl reaches this node, not the machine's: the vhost it adds is served on our port.
        rabbit.ctl("add_vhost", "harness_vhost")
        rabbit.ctl("set_permissions", "-p", "harness_vhost", "guest", ".*", ".*", ".*")
        vhost_url = rabbit.url.rstrip("/") + "/harness_vhost"
        _publish(vhost_url, queue, "in the vhost")
        assert _take(vhost_url, queue) == "in the vhost"

        _publish(rabbit.url, queue, "before restart")
        rabbit.restart()
        _publish(rabbit.url, queue, "before kill")
        rabbit.kill()
        assert not _listening(rabbit.port)
        rabbit.start()
        assert _take(rabbit.url, queue) == "before restart"
        assert _take(rabbit.url, queue) == "before kill"
        assert "harness_vhost" in rabbit.ctl("list_vhosts", "--quiet").stdout

        rabbit.stop()
        assert not _listening(rabbit.port)
    finally:
        rabbit.stop()
        rabbit.cleanup()


def test_machine_services_are_left_alone_by_stop_all(tmp_path):
    before = {port: _listening(port) for port in MACHINE_PORTS}
    redis_server = services.start_redis(tmp_path / "redis")
    # Only what this test started: a run with MASSMAILER_TEST_SERVICES=own holds its own servers
    # in the same registry, and stopping them would pull the services from under the other tests.
    assert all(server.port not in MACHINE_PORTS for server in services._running)
    services.stop_all([redis_server])
    assert {port: _listening(port) for port in MACHINE_PORTS} == before
    assert redis_server not in services._running
