"""HTTP API: /v1 (API key required), health checks, /metrics and the operator dashboard."""

from __future__ import annotations

from flask import Blueprint, Flask

from massmailer.api import (
    batches,
    dashboard,
    emails,
    health,
    inbound,
    metrics,
    openapi,
    provider_hooks,
    suppressions,
    unsubscribe,
    webhooks,
)
from massmailer.api.auth import Forbidden, QuotaExceeded, require_api_key
from massmailer.api.body import check_url
from massmailer.api.errors import error_response, register_error_handlers
from massmailer.batches import TooManyRecipients
from massmailer.idempotency import HEADER, IdempotencyConflict
from massmailer.templates import TemplateBudgetError


def register_api(app: Flask) -> None:
    """Mount the blueprints and the JSON error handlers."""
    app.before_request(check_url)
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(require_api_key)
    v1.register_blueprint(emails.bp)
    v1.register_blueprint(batches.bp)
    v1.register_blueprint(suppressions.bp)
    v1.register_blueprint(webhooks.bp)
    app.register_blueprint(v1)
    app.register_blueprint(inbound.bp)  # no API key: the inbound token is the authority
    app.register_blueprint(provider_hooks.bp)  # no API key: each provider's signature is
    app.register_blueprint(unsubscribe.bp)  # no API key: the signed token is the authority
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(dashboard.bp)
    register_error_handlers(app)
    metrics.warn_if_closed(app)

    @app.errorhandler(TooManyRecipients)
    def _too_many(exc: TooManyRecipients):
        return error_response(413, exc.message, exc.field)

    @app.errorhandler(QuotaExceeded)
    def _over_quota(exc: QuotaExceeded):
        body, status = error_response(429, exc.message, "Authorization")
        body.headers["Retry-After"] = exc.retry_after
        return body, status

    @app.errorhandler(Forbidden)
    def _forbidden(exc: Forbidden):
        return error_response(403, exc.message, exc.field)

    @app.errorhandler(TemplateBudgetError)
    def _too_costly(exc: TemplateBudgetError):
        # The template itself is at fault, whoever the recipient: refuse the whole request.
        return error_response(400, exc.message, f"template.{exc.part}")

    @app.errorhandler(IdempotencyConflict)
    def _conflict(exc: IdempotencyConflict):
        return error_response(409, str(exc), HEADER)
