"""A provider's connection cap holds across pools (processes) that share Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from massmailer.delivery.limits import RedisLimits
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.providers.pool import PoolRegistry, PoolTimeout, SessionPool
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra

pytestmark = pytest.mark.integration


def limits(prefix: str) -> RedisLimits:
    # A client of its own per "process", as two hosts would have.
    return RedisLimits(redis.Redis.from_url(infra.REDIS_URL), prefix=prefix)


def test_two_pools_together_never_open_more_than_the_cap(prefix):
    with FaultSMTPServer(latency_seconds=0.02) as server:
        config = ProviderConfig(
            "capped", "127.0.0.1", server.port, max_connections=2, timeout_seconds=5
        )
        pools = [SessionPool(config, slots=limits(prefix)) for _ in range(2)]
        timeouts = []

        def send_many(pool: SessionPool, worker: int) -> None:
            for i in range(5):
                try:
                    with pool.session() as session:
                        session.send("b@test", f"w{worker}-{i}@example.com", b"Subject: x\r\n\r\nx")
                except PoolTimeout:
                    timeouts.append(worker)

        threads = [threading.Thread(target=send_many, args=(pools[w % 2], w)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for pool in pools:
            pool.close_all()

        assert server.connections <= 2, server.connections
        assert server.message_count + len(timeouts) == 30
        assert server.message_count >= 10


def test_closing_a_pool_gives_its_slots_back(prefix):
    with FaultSMTPServer() as server:
        config = ProviderConfig(
            "capped", "127.0.0.1", server.port, max_connections=1, timeout_seconds=2
        )
        first, second = (
            SessionPool(config, slots=limits(prefix)),
            SessionPool(config, slots=limits(prefix), acquire_timeout_seconds=0.2),
        )
        with first.session() as session:
            session.send("b@test", "a@example.com", b"Subject: x\r\n\r\nx")
        with pytest.raises(PoolTimeout, match="fleet-wide cap"), second.session():
            pass

        first.close_all()

        with second.session() as session:
            session.send("b@test", "b@example.com", b"Subject: x\r\n\r\nx")
        second.close_all()
        assert server.message_count == 2


def open_sessions(pool: SessionPool, count: int) -> None:
    """Open `count` sessions at once, then leave them idle in the pool."""
    held = [pool._acquire() for _ in range(count)]
    for session in held:
        pool._release(session)


def test_idle_sessions_yield_to_a_process_that_waits_for_a_slot(prefix):
    with FaultSMTPServer() as server:
        config = ProviderConfig("capped", "127.0.0.1", server.port, max_connections=4)
        holder = SessionPool(config, slots=limits(prefix))
        waiter = SessionPool(config, slots=limits(prefix), acquire_timeout_seconds=0.2)
        open_sessions(holder, 4)
        holder.maintain()
        assert holder.open_count == 4, "nobody waits: idle sessions stay open"

        with pytest.raises(PoolTimeout, match="fleet-wide cap"), waiter.session():
            pass
        holder.maintain()

        assert holder.open_count == 2, "one waiter: the holder keeps half the cap"
        with waiter.session() as session:
            session.send("b@test", "w@example.com", b"Subject: x\r\n\r\nx")
        for pool in (holder, waiter):
            pool.close_all()
        assert server.message_count == 1


def test_a_busy_pool_gives_a_session_back_as_it_returns_while_another_waits(prefix):
    with FaultSMTPServer() as server:
        config = ProviderConfig("capped", "127.0.0.1", server.port, max_connections=2)
        holder = SessionPool(config, slots=limits(prefix))
        waiter = SessionPool(config, slots=limits(prefix), acquire_timeout_seconds=0.2)
        first, second = holder._acquire(), holder._acquire()
        with pytest.raises(PoolTimeout), waiter.session():
            pass
        holder.maintain()  # learns that someone waits; both its sessions are busy

        holder._release(first)

        assert holder.open_count == 1, "the returned session was closed, its slot freed"
        with waiter.session() as session:
            session.send("b@test", "w@example.com", b"Subject: x\r\n\r\nx")
        holder._release(second)
        for pool in (holder, waiter):
            pool.close_all()


def test_the_registry_hands_idle_slots_to_a_waiting_process_without_help(prefix):
    with FaultSMTPServer() as server:
        config = ProviderConfig(
            "capped", "127.0.0.1", server.port, max_connections=2, timeout_seconds=5
        )
        holders = PoolRegistry(slots=limits(prefix), maintain_every_seconds=0.1)
        waiters = PoolRegistry(slots=limits(prefix), maintain_every_seconds=0.1)
        open_sessions(holders.get(config), 2)

        started = time.monotonic()
        with waiters.get(config).session() as session:  # polls the fleet cap for up to 2 s
            session.send("b@test", "w@example.com", b"Subject: x\r\n\r\nx")
        waited = time.monotonic() - started

        holders.close_all()
        waiters.close_all()
        assert waited < 1.5, f"the waiter got a slot after {waited:.2f}s"
        assert server.message_count == 1
