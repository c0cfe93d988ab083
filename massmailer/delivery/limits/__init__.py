"""Per-provider rate limits, session caps and circuit breakers: in Redis or in memory."""

from massmailer.delivery.limits.interface import Limits
from massmailer.delivery.limits.memory_backend import MemoryLimits
from massmailer.delivery.limits.policy import BreakerState, LimitSettings, burst_for
from massmailer.delivery.limits.redis_backend import RedisLimits

__all__ = ["BreakerState", "LimitSettings", "Limits", "MemoryLimits", "RedisLimits", "burst_for"]
