"""Real worker processes against a provider that answers Gmail's throttle reply for a while."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis
from sqlalchemy import select

from massmailer.delivery.limits import RedisLimits
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.extensions import db
from massmailer.models import EmailAttempt, EmailJob
from massmailer.testing.smtp_server import FaultSMTPServer, Rule
from tests import infra
from tests.conftest import provider_entry
from tests.test_concurrent_delivery import post_batch, received_per_recipient, wait_settled

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 20.0
GMAIL_THROTTLE = Rule(
    "DATA",
    421,
    "4.7.28 [127.0.0.1] Our system has detected an unusual rate of unsolicited mail "
    "originating from your IP address. To protect our users from spam, mail sent from your IP "
    "address has been temporarily rate limited. - gsmtp",
)
JOBS = 200
THROTTLE_SECONDS = 5.0
# How the workers answer: halve at once and every 2 s while it lasts (0.5, 0.25, 0.125), then
# after a 1 s cool-down add 20 % of the configured rate per second of successes: back to 80 %
# within 1 + (0.8 - 0.125) / 0.2 = 4.4 s by the arithmetic. The test allows RECOVERY_SECONDS
# (success reports come once a second per process, and the wire follows the gauge by a second).
AIMD_ENV = {
    "MASSMAILER_THROTTLE_COOLDOWN_SECONDS": "1",
    "MASSMAILER_THROTTLE_INCREASE_PER_SECOND": "0.2",
}
RECOVERY_SECONDS = 8.0


class RecordingServer(FaultSMTPServer):
    """Also notes when each message's data arrived and whether it was accepted."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_at: list[tuple[float, bool]] = []

    async def answer(self, command: str, subject: str | bytes) -> str | None:
        reply = await super().answer(command, subject)
        if command == "DATA":
            self.data_at.append((time.monotonic(), reply is None))
        return reply


@pytest.fixture
def gmail():
    with RecordingServer() as server:
        yield server


@pytest.fixture
def providers(gmail):
    return [provider_entry("gmail-mx", gmail, rate_per_second=RATE, max_connections=20)]


def watch_effective_rate(env: dict, provider: ProviderConfig, stop: threading.Event, seen: list):
    client = redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5)
    limits = RedisLimits(client, prefix=env["MASSMAILER_REDIS_PREFIX"])
    while not stop.wait(0.2):
        seen.append((time.monotonic(), limits.snapshot([provider])["gmail-mx"]["effective_rate"]))


def per_second(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / (end - start)


def test_a_throttling_provider_gets_half_its_rate_then_recovers_and_nothing_is_charged(
    client, auth, env, gmail
):
    env = {**env, **AIMD_ENV}
    provider = ProviderConfig("gmail-mx", "127.0.0.1", gmail.port, rate_per_second=RATE)
    batch_id = post_batch(client, auth, JOBS, prefix="gm")
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_effective_rate, args=(env, provider, stop, seen))

    with infra.running_worker(env, concurrency=2):
        watcher.start()
        assert gmail.wait_for_messages(30, timeout=30)
        gmail.set_rules([GMAIL_THROTTLE])
        throttle_from = time.monotonic()
        time.sleep(THROTTLE_SECONDS)
        gmail.set_rules([])
        throttle_until = time.monotonic()
        counts = wait_settled(batch_id, JOBS, timeout=60)
    stop.set()
    watcher.join()

    assert counts == Counter({"SENT": JOBS}), "everything is delivered once the throttle ends"
    assert set(received_per_recipient(gmail).values()) == {1}

    # During the throttle: sends reserved before the first 421 (up to a second ahead, at the full
    # rate) still go out, so the rate is measured from one second after the throttle began.
    throttled = [t for t, ok in gmail.data_at if throttle_from <= t < throttle_until and not ok]
    first = min(throttled)
    during = per_second([t for t, _ in gmail.data_at], first + 1.0, throttle_until)
    lowest = min(rate for t, rate in seen if throttle_from <= t < throttle_until)
    print(
        f"throttle replies {len(throttled)}; during the throttle {during:.1f} sends/s "
        f"(configured {RATE:g}/s); lowest effective rate {lowest:g}/s"
    )
    assert during <= RATE / 2
    assert lowest <= RATE / 2

    # After it: back to at least 80 % within RECOVERY_SECONDS, by the gauge and by the wire.
    back_at = next(t for t, rate in seen if t > throttle_until and rate >= 0.8 * RATE)
    accepted = [t for t, ok in gmail.data_at if ok]
    wire = [
        round(per_second(accepted, throttle_until + i, throttle_until + i + 1)) for i in range(9)
    ]
    gauge = [(round(t - throttle_until), round(r, 1)) for t, r in seen if t > throttle_until][:45:5]
    recovered = per_second(
        accepted, throttle_until + RECOVERY_SECONDS - 2, throttle_until + RECOVERY_SECONDS
    )
    print(f"effective rate back to 80 % {back_at - throttle_until:.1f}s after the throttle")
    print(f"accepted per second after the throttle: {wire}; effective rate: {gauge}")
    print(f"accepted {recovered:.1f}/s in the 2 s up to {RECOVERY_SECONDS:g}s after the throttle")
    assert back_at - throttle_until <= RECOVERY_SECONDS
    assert recovered >= 0.8 * RATE

    # No attempt is charged for a throttle reply: each job's one charged attempt is its send.
    db.session.expire_all()
    attempts = db.session.scalars(select(EmailJob.attempts).where(EmailJob.batch_id == batch_id))
    assert set(attempts) == {1}
    outcomes = Counter(db.session.scalars(select(EmailAttempt.outcome)))
    print(f"attempt rows: {dict(outcomes)}")
    assert outcomes["sent"] == JOBS
    assert outcomes["throttled"] == len(throttled)
