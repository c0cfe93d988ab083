"""/healthz: the process answers. /readyz: its dependencies answer."""

from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import text

from massmailer.extensions import db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    checks = {"postgresql": _database}
    settings = current_app.extensions["massmailer.settings"]
    if settings.broker_url:
        checks["rabbitmq"] = _broker
    if settings.redis_url:
        checks["redis"] = _redis
    failed = {}
    for name, check in checks.items():
        try:
            check()
        except Exception as exc:  # any failure means not ready; say which and why
            failed[name] = type(exc).__name__
    if failed:
        names = ", ".join(sorted(failed))
        return {
            "status": "unavailable",
            "failing": failed,
            "message": f"not reachable: {names}",
        }, 503
    return {"status": "ready", "checked": sorted(checks)}


def _database() -> None:
    db.session.execute(text("SELECT 1"))
    db.session.rollback()


def _broker() -> None:
    celery_app = current_app.extensions["celery"]
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def _redis() -> None:
    import redis

    client = redis.Redis.from_url(
        current_app.extensions["massmailer.settings"].redis_url, socket_timeout=2
    )
    try:
        client.ping()
    finally:
        client.close()
