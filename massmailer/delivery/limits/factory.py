"""Build the limits store a process uses: Redis for the fleet, in-process without it."""

from __future__ import annotations

import redis

from massmailer.config import Settings
from massmailer.delivery.limits.cached import CachedBreakers
from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.limits.memory_backend import MemoryLimits
from massmailer.delivery.limits.redis_backend import RedisLimits


def limits_for(settings: Settings, *, timeout_seconds: float) -> Limits:
    """Limits with the configured breaker, shared through Redis when REDIS_URL is set.

    Senders and the readers of provider health (metrics, dashboard, CLI) build theirs here, so
    both judge a breaker with the same threshold, window and cool-down. The timeouts make a Redis
    that stops answering an error instead of a hang.
    """
    breaker = {
        "failure_threshold": settings.breaker_failure_threshold,
        "window_seconds": settings.breaker_window_seconds,
        "cooldown_seconds": settings.breaker_cooldown_seconds,
        "aimd": settings.throttle,
    }
    if not settings.redis_url:
        return MemoryLimits(**breaker)
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
    )
    return CachedBreakers(RedisLimits(client, prefix=settings.redis_key_prefix, **breaker))
