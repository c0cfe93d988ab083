"""A sender thread's run: jobs follow one another on one session, each as it would go alone.

Real SMTP servers (advertising PIPELINING), real fleet limits in Redis. The chaining itself, round
trip by round trip, is tests/test_smtp_round_trips.py; here, what a run does with each job.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from massmailer.delivery.limits import RedisLimits
from massmailer.delivery.picker import ProviderPicker
from massmailer.delivery.providers.base import FailureKind, ProviderConfig
from massmailer.delivery.providers.pool import PoolRegistry
from massmailer.delivery.sending import JobSender, Outgoing, SendWindow, run_length
from massmailer.testing.relay import LatencyRelay
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from tests import infra
from tests.test_after_a_250 import MESSAGE, job

pytestmark = pytest.mark.integration

WINDOW = SendWindow(may_start=lambda needed: None, deadline_seconds=5)


@pytest.fixture
def limits() -> Iterator[RedisLimits]:
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    yield RedisLimits(redis.Redis.from_url(infra.REDIS_URL), prefix=prefix)
    infra.delete_redis_prefix(prefix)


def run_of(count: int) -> list[Outgoing]:
    return [Outgoing(job(i), "b@massmailer.test", MESSAGE) for i in range(count)]


def by_recipient(server: FaultSMTPServer) -> dict[str, int]:
    """Recipient -> the connection it came on."""
    return {m.rcpt_tos[0]: m.connection_id for m in server.messages}


def test_a_run_goes_on_one_session_and_a_refused_follower_fails_over_alone(limits):
    relay_refused = Rule(
        "RCPT", 550, "5.7.1 Relaying denied", match="r3@"
    )  # our account: fail over
    unknown_user = Rule("RCPT", 550, "5.1.1 No such user", match="r5@")  # the recipient: a bounce
    pools = PoolRegistry(slots=limits, maintain_every_seconds=None)
    with (
        FaultSMTPServer(rules=[relay_refused, unknown_user]) as first,
        FaultSMTPServer() as second,
    ):
        # The first provider is drawn for every fresh stream; the second only takes a failover.
        a = ProviderConfig("a", "127.0.0.1", first.port, timeout_seconds=5, weight=1_000_000)
        b = ProviderConfig("b", "127.0.0.1", second.port, timeout_seconds=5, weight=1)
        sender = JobSender(
            ProviderPicker([a, b], limits, random.Random(1)), limits, pools, rate_wait_seconds=5
        )
        results = sender.send_run(run_of(8), WINDOW)
        pools.close_all()

    outcomes = {r.job.job_id: [(x.provider, x.outcome) for x in r.attempts] for r in results}
    assert outcomes == {
        0: [("a", "sent")],
        1: [("a", "sent")],
        2: [("a", "sent")],
        3: [("a", "provider_fault"), ("b", "sent")],
        4: [("a", "sent")],
        5: [("a", "permanent_recipient")],
        6: [("a", "sent")],
        7: [("a", "sent")],
    }
    assert [r.job.job_id for r in results] == list(range(8))  # one result a job, in run order
    assert results[5].error is not None
    assert results[5].error.kind is FailureKind.PERMANENT_RECIPIENT
    assert all(r.delivered is not None for r in results if r.job.job_id != 5)
    # Six messages on the first provider's one session: followers ride the leader's connection.
    assert sorted(by_recipient(first)) == [f"r{i}@example.com" for i in (0, 1, 2, 4, 6, 7)]
    assert len(set(by_recipient(first).values())) == 1
    assert list(by_recipient(second)) == ["r3@example.com"]


def test_a_job_whose_send_raises_is_a_bug_of_its_own_and_its_neighbours_are_delivered(limits):
    class SignerWithABug:
        def sign(self, data: bytes, from_addr: str, exclude: object = ()) -> bytes:
            if from_addr == "broken@massmailer.test":
                raise KeyError("a bug in the signer")
            return data

    run = run_of(3)
    broken = replace(job(1), sender="broken@massmailer.test")
    run[1] = Outgoing(broken, "b@massmailer.test", MESSAGE)
    pools = PoolRegistry(slots=limits, maintain_every_seconds=None)
    with FaultSMTPServer() as server:
        provider = ProviderConfig("a", "127.0.0.1", server.port, timeout_seconds=5)
        sender = JobSender(
            ProviderPicker([provider], limits, random.Random(1)),
            limits,
            pools,
            rate_wait_seconds=5,
            signer=SignerWithABug(),  # type: ignore[arg-type]
        )
        results = sender.send_run(run, WINDOW)
        pools.close_all()

    assert [r.delivered is not None for r in results] == [True, False, True]
    assert isinstance(results[1].bug, KeyError) and results[1].attempts == []
    assert sorted(by_recipient(server)) == ["r0@example.com", "r2@example.com"]


def test_followers_wait_their_own_turn_when_the_window_closes(limits):
    # The chunk stops (SIGTERM, budget, lease) after the first send: nothing more may start.
    starts: list[float] = []

    def may_start(needed: float) -> str | None:
        starts.append(needed)
        return None if len(starts) == 1 else "stopping"

    pools = PoolRegistry(slots=limits, maintain_every_seconds=None)
    with FaultSMTPServer() as server:
        provider = ProviderConfig("a", "127.0.0.1", server.port, timeout_seconds=5)
        sender = JobSender(
            ProviderPicker([provider], limits, random.Random(1)), limits, pools, rate_wait_seconds=5
        )
        results = sender.send_run(run_of(4), SendWindow(may_start, deadline_seconds=5))
        pools.close_all()

    assert results[0].delivered is not None
    assert [r.not_started for r in results[1:]] == ["stopping"] * 3
    assert all(r.attempts == [] for r in results[1:])
    assert list(by_recipient(server)) == ["r0@example.com"]


def test_a_runs_followers_cost_one_round_trip_each_through_a_distant_relay(limits):
    # 50 ms each way and back, as tests/test_smtp_round_trips.py measures one session. Nine jobs
    # one pipelined send after another would take 9 x 2 round trips; chained, 2 + 8 x 1.
    rtt = 0.050
    pools = PoolRegistry(slots=limits, maintain_every_seconds=None)
    with (
        FaultSMTPServer(pipelining=True) as server,
        LatencyRelay("127.0.0.1", server.port, rtt_ms=rtt * 1000) as relay,
    ):
        provider = ProviderConfig("far", "127.0.0.1", relay.port, timeout_seconds=10)
        sender = JobSender(
            ProviderPicker([provider], limits, random.Random(1)), limits, pools, rate_wait_seconds=5
        )
        pools.get(provider).prewarm()  # the session is open: only the sends are timed
        started = time.monotonic()
        results = sender.send_run(run_of(9), WINDOW)
        round_trips = (time.monotonic() - started) / rtt
        pools.close_all()

    print(f"[{round_trips:.1f} round trips for 9 messages]", end=" ")
    assert all(r.delivered is not None for r in results)
    assert len(set(by_recipient(server).values())) == 1
    assert round_trips <= 2.3 + 8 * 1.3


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [(1, 1), (99, 1), (100, 2), (200, 4), (400, 8), (800, 16), (5000, 16)],
)
def test_small_chunks_go_a_job_at_a_time_and_big_ones_in_runs_of_at_most_sixteen(chunk, expected):
    assert run_length(chunk) == expected
