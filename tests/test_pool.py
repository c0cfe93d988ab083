"""SessionPool and PoolRegistry against a real SMTP server: reuse, reconnects, caps, forks."""

from __future__ import annotations

import os
import threading

import pytest

from massmailer.delivery.providers.base import FailureKind, ProviderConfig, SendError
from massmailer.delivery.providers.pool import PoolRegistry, PoolTimeout, SessionPool
from massmailer.testing.smtp_server import FaultSMTPServer, Rule

SENDER = "bounces@mailer.example.com"
MESSAGE = b"Subject: Hi\r\n\r\nHello.\r\n"


def config_for(server: FaultSMTPServer, **overrides) -> ProviderConfig:
    options = {"timeout_seconds": 5.0, **overrides}
    return ProviderConfig("relay", "127.0.0.1", server.port, **options)


def send(pool: SessionPool, rcpt: str = "alice@example.org") -> None:
    with pool.session() as session:
        session.send(SENDER, rcpt, MESSAGE)


@pytest.fixture
def server():
    with FaultSMTPServer() as server:
        yield server


@pytest.fixture
def pool(server):
    pool = SessionPool(config_for(server))
    yield pool
    pool.close_all()


@pytest.mark.integration
def test_twenty_sequential_messages_share_one_connection(server, pool):
    for n in range(20):
        send(pool, f"user{n}@example.org")

    assert len(server.messages) == 20
    assert server.connections == 1
    assert pool.open_count == pool.idle_count == 1


@pytest.mark.integration
def test_a_pool_reconnects_after_the_server_drops_the_connection(server, pool):
    send(pool)
    server.set_rules([Rule("MAIL", 421, times=1)])

    with pytest.raises(SendError) as caught:
        send(pool)
    send(pool)

    assert caught.value.kind is FailureKind.TRANSIENT
    assert server.connections == 2
    assert pool.open_count == 1
    assert [m.connection_id for m in server.messages] == [1, 2]


@pytest.mark.integration
def test_a_session_dropped_while_idle_is_replaced_without_an_error(server):
    pool = SessionPool(config_for(server), max_idle_seconds=0.0)  # NOOP before every reuse
    send(pool)
    server.set_rules([Rule("NOOP", 0, times=1)])  # the server hangs up on the NOOP

    send(pool)

    assert len(server.messages) == 2
    assert server.connections == 2
    pool.close_all()


@pytest.mark.integration
def test_a_refused_recipient_leaves_the_session_in_the_pool(server, pool):
    server.set_rules([Rule("RCPT", 550, match="nobody")])

    with pytest.raises(SendError):
        send(pool, "nobody@example.org")
    send(pool)

    assert server.connections == 1
    assert len(server.messages) == 1


@pytest.mark.integration
def test_sessions_retire_after_their_message_quota(server):
    pool = SessionPool(config_for(server), max_messages_per_session=5)
    for _ in range(12):
        send(pool)

    assert server.connections == 3
    assert sorted(server.messages_per_connection.values()) == [2, 5, 5]
    pool.close_all()


@pytest.mark.integration
def test_sessions_retire_after_their_maximum_age(server):
    pool = SessionPool(config_for(server), max_age_seconds=0.0)
    send(pool)
    send(pool)

    assert server.connections == 2
    pool.close_all()


@pytest.mark.integration
def test_a_failed_open_frees_its_slot(server):
    pool = SessionPool(config_for(server, max_connections=1), acquire_timeout_seconds=0.5)
    server.set_rules([Rule("CONNECT", 554, times=1)])

    with pytest.raises(SendError) as caught:
        send(pool)
    send(pool)

    assert caught.value.kind is FailureKind.PROVIDER_FAULT
    assert pool.open_count == 1


@pytest.mark.integration
def test_a_caller_waits_for_a_session_to_come_back(server):
    pool = SessionPool(config_for(server, max_connections=1), acquire_timeout_seconds=5.0)
    lent = threading.Event()

    def hold_a_session() -> None:
        with pool.session():
            lent.set()
            threading.Event().wait(0.2)

    holder = threading.Thread(target=hold_a_session)
    holder.start()
    lent.wait(5)
    send(pool)  # blocks until the holder gives its session back
    holder.join(5)

    assert server.connections == 1
    assert len(server.messages) == 1
    pool.close_all()


@pytest.mark.integration
def test_a_caller_gives_up_when_the_pool_stays_full(server):
    pool = SessionPool(config_for(server, max_connections=1), acquire_timeout_seconds=0.2)
    with pool.session(), pytest.raises(PoolTimeout) as caught:
        send(pool)

    assert caught.value.kind is FailureKind.TRANSIENT
    send(pool)  # free again once the first caller gave its session back
    assert server.connections == 1
    pool.close_all()


@pytest.mark.integration
def test_threads_share_the_pool_within_its_connection_cap():
    with FaultSMTPServer(latency_seconds=0.002) as server:
        pool = SessionPool(config_for(server, max_connections=2))
        errors: list[BaseException] = []

        def worker(n: int) -> None:
            try:
                for i in range(10):
                    send(pool, f"t{n}-{i}@example.org")
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        assert len(server.messages) == 40
        assert server.connections <= 2
        assert pool.open_count <= 2
        pool.close_all()


@pytest.mark.integration
def test_close_all_closes_idle_sessions_and_lent_ones_on_return(server, pool):
    send(pool)
    with pool.session() as lent:
        pool.close_all()
        assert pool.idle_count == 0
        lent.send(SENDER, "bob@example.org", MESSAGE)  # still works until it is returned
    assert pool.open_count == 0
    assert lent.broken

    send(pool)  # the pool opens a fresh session on demand
    assert server.connections == 2


@pytest.mark.integration
def test_a_registry_opens_nothing_until_a_session_is_asked_for(server):
    registry = PoolRegistry()

    pool = registry.get(config_for(server))

    assert registry.get(config_for(server)) is pool
    assert server.connections == 0
    send(pool)
    registry.close_all()
    assert pool.open_count == 0


def test_a_registry_keeps_one_pool_per_provider_name():
    registry = PoolRegistry(max_idle_seconds=1.0)
    first = ProviderConfig("first", "127.0.0.1", 2525)
    second = ProviderConfig("second", "127.0.0.1", 2526)

    assert registry.get(first) is registry.get(first)
    assert registry.get(first) is not registry.get(second)
    assert registry.get(first).max_idle_seconds == 1.0


def test_a_registry_replaces_a_pool_whose_config_changed():
    registry = PoolRegistry()
    old = registry.get(ProviderConfig("relay", "127.0.0.1", 2525))

    new = registry.get(ProviderConfig("relay", "127.0.0.1", 2526))

    assert new is not old and new.config.port == 2526


def test_a_registry_inherited_across_fork_starts_fresh():
    registry = PoolRegistry()
    config = ProviderConfig("relay", "127.0.0.1", 2525)
    parent_pool = registry.get(config)

    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        fresh = registry.get(config) is not parent_pool
        os._exit(0 if fresh else 1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert registry.get(config) is parent_pool


def test_a_pool_refuses_to_be_used_across_fork():
    pool = SessionPool(ProviderConfig("relay", "127.0.0.1", 2525))

    pid = os.fork()
    if pid == 0:
        try:
            send(pool)
        except RuntimeError:
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
