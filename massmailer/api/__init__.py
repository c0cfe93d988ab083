"""HTTP API: /v1 (API key required), health checks, /metrics and the operator dashboard."""

from __future__ import annotations

from flask import Blueprint, Flask

from massmailer.api import dashboard, emails, health, metrics
from massmailer.api.auth import require_api_key
from massmailer.api.errors import register_error_handlers


def register_api(app: Flask) -> None:
    """Mount the blueprints and the JSON error handlers."""
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(require_api_key)
    v1.register_blueprint(emails.bp)
    app.register_blueprint(v1)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(dashboard.bp)
    register_error_handlers(app)
