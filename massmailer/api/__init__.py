"""HTTP API: /v1 (API key required), health checks, /metrics and the operator dashboard."""

from __future__ import annotations

from flask import Blueprint, Flask

from massmailer.api import (
    batches,
    dashboard,
    emails,
    health,
    metrics,
    suppressions,
    unsubscribe,
)
from massmailer.api.auth import require_api_key
from massmailer.api.errors import error_response, register_error_handlers
from massmailer.batches import TooManyRecipients
from massmailer.idempotency import HEADER, IdempotencyConflict


def register_api(app: Flask) -> None:
    """Mount the blueprints and the JSON error handlers."""
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(require_api_key)
    v1.register_blueprint(emails.bp)
    v1.register_blueprint(batches.bp)
    v1.register_blueprint(suppressions.bp)
    app.register_blueprint(v1)
    app.register_blueprint(unsubscribe.bp)  # no API key: the signed token is the authority
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(dashboard.bp)
    register_error_handlers(app)

    @app.errorhandler(TooManyRecipients)
    def _too_many(exc: TooManyRecipients):
        return error_response(413, exc.message, exc.field)

    @app.errorhandler(IdempotencyConflict)
    def _conflict(exc: IdempotencyConflict):
        return error_response(409, str(exc), HEADER)
