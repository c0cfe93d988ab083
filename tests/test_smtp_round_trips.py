"""Round trips per message through a 50 ms relay: what pipelining and chaining buy (issue 9)."""

from __future__ import annotations

import itertools
import statistics
import time

import pytest

from massmailer.delivery.providers.base import Delivered, Envelope, ProviderConfig
from massmailer.delivery.providers.smtp import SmtpSession
from massmailer.testing.relay import LatencyRelay
from massmailer.testing.smtp_server import FaultSMTPServer

integration = pytest.mark.integration

RTT = 0.050
MESSAGES = 20  # measured after one warm-up message on the same open session
SENDER = "bounces@mailer.example.com"


def envelope(n: int) -> Envelope:
    body = f"Subject: round trip {n}\r\n\r\n".encode() + (b"x" * 98 + b"\r\n") * 20
    return Envelope(SENDER, f"user{n}@example.org", body, key=n)


@pytest.fixture(scope="module")
def relay():
    with (
        FaultSMTPServer(pipelining=True, keep_messages=False) as server,
        LatencyRelay("127.0.0.1", server.port, rtt_ms=RTT * 1000) as relay,
    ):
        relay.server = server
        yield relay


def open_session(relay: LatencyRelay, *, pipelining: bool) -> SmtpSession:
    config = ProviderConfig("far", "127.0.0.1", relay.port, timeout_seconds=10)
    session = SmtpSession(config, pipelining=pipelining)
    session.open()
    return session


# The median of the 20 per-message times: the steady state, robust to the odd scheduling stall
# of a shared 2-core machine (the mean is printed too).


def round_trips_per_send(relay: LatencyRelay, *, pipelining: bool) -> float:
    """Round trips per message for send() on one open session, in the steady state."""
    session = open_session(relay, pipelining=pipelining)
    session.send(SENDER, "warm@example.org", envelope(0).message)
    times = [time.monotonic()]
    for n in range(1, MESSAGES + 1):
        e = envelope(n)
        session.send(e.mail_from, e.rcpt, e.message)
        times.append(time.monotonic())
    session.close()
    return steady_round_trips(times)


def round_trips_per_chained_message(relay: LatencyRelay) -> float:
    """Round trips per message for send_many(), between consecutive outcomes."""
    session = open_session(relay, pipelining=True)
    times = []
    for _, outcome in session.send_many(envelope(n) for n in range(MESSAGES + 1)):
        assert isinstance(outcome, Delivered)
        times.append(time.monotonic())
    session.close()
    return steady_round_trips(times)


def steady_round_trips(times: list[float]) -> float:
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == MESSAGES
    mean = (times[-1] - times[0]) / MESSAGES / RTT
    median = statistics.median(gaps) / RTT
    print(f"[median {median:.2f}, mean {mean:.2f} round trips]", end=" ")
    return median


@integration
def test_a_pipelined_message_costs_at_most_2_3_round_trips(relay):
    measured = round_trips_per_send(relay, pipelining=True)

    print(f"pipelined send(): {measured:.2f} round trips per message")
    assert measured <= 2.3


@integration
def test_a_chained_message_costs_at_most_1_3_round_trips(relay):
    measured = round_trips_per_chained_message(relay)

    print(f"chained send_many(): {measured:.2f} round trips per message")
    assert measured <= 1.3


@integration
def test_a_client_that_does_not_pipeline_fails_the_bound(relay):
    # The same measurement with the client's pipelining off: MAIL, RCPT, DATA and the final dot
    # each wait for their reply, so it cannot meet the 2.3 round trips above.
    one_by_one = round_trips_per_send(relay, pipelining=False)
    pipelined = round_trips_per_send(relay, pipelining=True)

    print(f"one command per round trip: {one_by_one:.2f}; pipelined: {pipelined:.2f}")
    assert one_by_one > 2.3
    assert one_by_one > pipelined + 1.5
