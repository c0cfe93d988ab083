"""A Redis error around a fleet slot never shrinks the pool nor turns a finished send into one."""

from __future__ import annotations

import pytest
import redis

from massmailer.delivery.limits import RedisLimits
from massmailer.delivery.providers.base import ProviderConfig, SendError
from massmailer.delivery.providers.pool import SLOT_REFRESH_EVERY_SECONDS, SessionPool
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


class FailingSlots:
    """Real RedisLimits whose chosen calls raise a Redis error, as during a Redis blip."""

    def __init__(self, limits: RedisLimits) -> None:
        self.limits = limits
        self.failing: set[str] = set()

    def _call(self, name: str, *args):
        if name in self.failing:
            raise redis.ConnectionError(f"{name}: Redis went away")
        return getattr(self.limits, name)(*args)

    def acquire_connection(self, provider, holder=""):
        return self._call("acquire_connection", provider, holder)

    def connection_demand(self, provider, holder):
        return self._call("connection_demand", provider, holder)

    def refresh_connection(self, provider, token):
        return self._call("refresh_connection", provider, token)

    def release_connection(self, provider, token):
        return self._call("release_connection", provider, token)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    with FaultSMTPServer() as server:
        yield server


def make_pool(port: int, prefix: str, *, lease: float = 60.0, **options):
    config = ProviderConfig("relay", "127.0.0.1", port, max_connections=1, timeout_seconds=5)
    limits = RedisLimits(
        redis.Redis.from_url(infra.REDIS_URL), prefix=prefix, connection_lease_seconds=lease
    )
    slots, clock = FailingSlots(limits), Clock()
    pool = SessionPool(config, slots=slots, clock=clock, acquire_timeout_seconds=1.0, **options)
    return pool, slots, clock


def send(pool: SessionPool, rcpt: str) -> None:
    with pool.session() as session:
        session.send("b@test", rcpt, MESSAGE)


def sessions_held(slots: FailingSlots, pool: SessionPool) -> int:
    return slots.limits.snapshot([pool.config])["relay"]["connections_in_use"]


def test_a_failed_slot_refresh_keeps_the_session_in_the_pool(server, prefix):
    pool, slots, clock = make_pool(server.port, prefix)
    send(pool, "a@example.com")
    clock.now += SLOT_REFRESH_EVERY_SECONDS + 1  # the next loan refreshes the slot's lease
    slots.failing = {"refresh_connection"}

    with pytest.raises(redis.ConnectionError):
        send(pool, "b@example.com")

    assert (pool.open_count, pool.idle_count) == (1, 1)
    slots.failing = set()
    send(pool, "c@example.com")  # with a cap of 1, a leaked session would make this time out
    assert server.connections == 1
    assert [m.rcpt_tos for m in server.messages] == [["a@example.com"], ["c@example.com"]]
    assert sessions_held(slots, pool) == 1
    pool.close_all()
    assert sessions_held(slots, pool) == 0


def test_a_failed_slot_release_after_a_send_is_not_an_error(server, prefix):
    pool, slots, _ = make_pool(server.port, prefix, lease=0.5, max_messages_per_session=1)
    slots.failing = {"release_connection"}

    send(pool, "a@example.com")  # the session retires after one message; its release fails

    assert pool.open_count == 0
    slots.failing = set()
    # The slot that could not be given back frees itself when its lease lapses.
    infra.wait_until(lambda: sessions_held(slots, pool) == 0, 5, message="the lease to lapse")
    send(pool, "b@example.com")
    assert server.message_count == 2
    pool.close_all()


def test_a_failed_slot_acquire_leaves_nothing_reserved(server, prefix):
    pool, slots, _ = make_pool(server.port, prefix)
    slots.failing = {"acquire_connection"}

    with pytest.raises(redis.ConnectionError):
        send(pool, "a@example.com")

    assert pool.open_count == 0
    slots.failing = set()
    send(pool, "b@example.com")
    assert server.message_count == 1
    pool.close_all()


def test_a_failed_connect_reports_the_smtp_error_even_if_the_release_fails(prefix):
    with FaultSMTPServer() as gone:
        port = gone.port  # nobody listens there once the server has stopped
    pool, slots, _ = make_pool(port, prefix)
    slots.failing = {"release_connection"}

    with pytest.raises(SendError):
        send(pool, "a@example.com")

    assert pool.open_count == 0
