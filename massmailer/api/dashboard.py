"""/dashboard: the operator's page, and /dashboard/data.json that it polls; basic auth only."""

from __future__ import annotations

import secrets
from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, request, url_for

from massmailer import dashboard
from massmailer.admin_auth import require_admin
from massmailer.api.metrics import current_state
from massmailer.dashboard.data import dashboard_data
from massmailer.extensions import db
from massmailer.models import Status
from massmailer.models.types import utcnow

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder=str(Path(dashboard.__file__).parent / "templates"),
)
bp.before_request(require_admin)

DEFAULT_REFRESH_SECONDS = 5


@bp.get("")
def page() -> Response:
    nonce = secrets.token_urlsafe(16)
    html = render_template(
        "dashboard.html",
        nonce=nonce,
        statuses=[str(s) for s in Status],
        refresh_seconds=_refresh_seconds(),
        data_url=url_for("dashboard.data"),
    )
    response = Response(html, mimetype="text/html")
    # Only this page's own inline script and style run; it fetches only from this origin.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    )
    return _private(response)


@bp.get("/data.json")
def data() -> Response:
    app = current_app._get_current_object()
    settings = app.extensions["massmailer.settings"]
    payload = dashboard_data(db.session, settings, current_state(app), utcnow())
    return _private(current_app.json.response(payload))


def _refresh_seconds() -> int:
    # ?refresh=N lets a wall screen poll slower (or a test faster); bounded either way.
    return min(60, max(1, request.args.get("refresh", DEFAULT_REFRESH_SECONDS, type=int)))


def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
