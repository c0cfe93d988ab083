"""After a provider's 250 no Redis error may turn the delivered message into a retry or a release.

Issue 10, finding 2: the breaker update after a success, or the pool's bookkeeping, can raise
(Redis away, READONLY on a demoted replica, OOM). The send is done; the job must read as sent.
"""

from __future__ import annotations

import random
import uuid

import pytest
import redis

from massmailer.delivery.limits import RedisLimits
from massmailer.delivery.picker import ProviderPicker
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.delivery.providers.pool import PoolRegistry
from massmailer.delivery.sending import JobSender, SendWindow
from massmailer.jobstore import ClaimedJob
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra

pytestmark = pytest.mark.integration

MESSAGE = b"Subject: x\r\n\r\nx\r\n"


class BreakerUpdateFails(RedisLimits):
    """Real fleet limits whose success report raises, as Redis does in the failures below."""

    error: Exception

    def record_success(self, provider_name: str) -> None:
        raise self.error


def job(job_id: int) -> ClaimedJob:
    return ClaimedJob(
        job_id=job_id,
        recipient=f"r{job_id}@example.com",
        recipient_name=None,
        sender="s@massmailer.test",
        sender_name=None,
        subject="x",
        body="x",
        html=None,
        headers=None,
        priority=0,
        attempts=0,
        message_id=f"<{job_id}@massmailer.test>",
        failed_provider=None,
        dispatch_seq=1,
        category="transactional",
    )


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Redis went away"),
        redis.exceptions.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ],
    ids=["outage", "readonly", "oom"],
)
def test_a_redis_error_after_the_250_leaves_the_job_delivered(error):
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    limits = BreakerUpdateFails(redis.Redis.from_url(infra.REDIS_URL), prefix=prefix)
    limits.error = error
    pools = PoolRegistry(slots=limits, maintain_every_seconds=None)
    try:
        with FaultSMTPServer() as server:
            provider = ProviderConfig("relay", "127.0.0.1", server.port, timeout_seconds=5)
            picker = ProviderPicker([provider], limits, random.Random(1))
            sender = JobSender(picker, limits, pools, rate_wait_seconds=5)
            window = SendWindow(may_start=lambda needed: None, deadline_seconds=5)

            result = sender.send(job(1), "b@massmailer.test", MESSAGE, window)
            pools.close_all()

        assert result.delivered is not None and result.delivered.smtp_code == 250
        assert (result.error, result.outage, result.not_started) == (None, None, None)
        assert [a.outcome for a in result.attempts] == ["sent"]
        assert server.message_count == 1
    finally:
        infra.delete_redis_prefix(prefix)
