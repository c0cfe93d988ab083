"""Chaos fixtures: short leases and a fast sweep, a provider with realistic-ish latency."""

from __future__ import annotations

import pytest

from massmailer.testing.smtp_server import FaultSMTPServer

# Every reply waits a little, so a few thousand emails take long enough for a fault to land
# mid-run, and several sends are in flight in each worker when it does.
REPLY_LATENCY_SECONDS = 0.005

# Recovery in seconds: a 20 s lease (renewed while a chunk makes progress), the sweep every 2 s
# from a separate `celery beat`. The task's time limit is only a last resort behind the lease and
# the per-send deadline; a chunk starts no send its budget (most of the soft limit) cannot fit.
CHAOS_SETTINGS = {
    "MASSMAILER_LEASE_SECONDS": "20",
    "MASSMAILER_TASK_TIME_LIMIT_SECONDS": "60",
    "MASSMAILER_SWEEP_INTERVAL_SECONDS": "2",
    "MASSMAILER_PUBLISH_GRACE_SECONDS": "5",
    "MASSMAILER_BACKOFF_BASE_SECONDS": "1",
    # A transient fault of 30 s may cost a job several tries: it must not end FAILED for that.
    "MASSMAILER_MAX_ATTEMPTS": "12",
    "MASSMAILER_BREAKER_COOLDOWN_SECONDS": "5",
    # A send starts only while the lease outlasts its deadline: 5 s, the providers' timeout.
    "MASSMAILER_SEND_DEADLINE_SECONDS": "5",
}


@pytest.fixture
def smtp_server():
    with FaultSMTPServer(latency_seconds=REPLY_LATENCY_SECONDS, keep_messages=True) as server:
        yield server


@pytest.fixture
def chaos_env(env) -> dict[str, str]:
    return {**env, **CHAOS_SETTINGS}
