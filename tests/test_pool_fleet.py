"""A provider's connection cap holds across pools (processes) that share Redis."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from massmailer.limits import RedisLimits
from massmailer.providers.base import ProviderConfig
from massmailer.providers.pool import PoolTimeout, SessionPool
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix():
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    yield prefix
    infra.delete_redis_prefix(prefix)


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
