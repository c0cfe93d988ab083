"""Errors that mean a service we depend on went away, not that a job or our code is wrong."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError

# PostgreSQL restarting or unreachable, Redis unreachable. A chunk hit by one of these is handed
# back to the broker whole (the claim keeps the redelivery from sending anything twice).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
)
