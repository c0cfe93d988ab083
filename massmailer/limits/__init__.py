"""Per-provider rate limits, session caps and circuit breakers: in Redis or in memory."""

from massmailer.limits.interface import Limits
from massmailer.limits.memory_backend import MemoryLimits
from massmailer.limits.policy import BreakerState, LimitSettings, burst_for
from massmailer.limits.redis_backend import RedisLimits

__all__ = ["BreakerState", "LimitSettings", "Limits", "MemoryLimits", "RedisLimits", "burst_for"]
