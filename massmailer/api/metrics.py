"""/metrics: this host's counters plus the fleet's state read at scrape time.

Open unless MASSMAILER_METRICS_TOKEN is set; then the token is required as a Bearer token (or
as the password of basic auth, any user). It shows counts and provider names, no addresses.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST

from massmailer.extensions import db
from massmailer.limits.interface import Limits
from massmailer.metrics.collector import StateCollector
from massmailer.metrics.exposition import host_registry, render, token_accepted
from massmailer.metrics.state import OpsState, make_limits, read_state

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    settings = current_app.extensions["massmailer.settings"]
    if not token_accepted(request.headers.get("Authorization"), settings.ops.metrics_token):
        return Response(
            "metrics need the scrape token (MASSMAILER_METRICS_TOKEN)\n",
            401,
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
            mimetype="text/plain",
        )
    app = current_app._get_current_object()
    registry = host_registry(
        settings.ops.metrics_multiproc_dir, StateCollector(lambda: current_state(app))
    )
    return Response(render(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def current_state(app: Flask) -> OpsState:
    """Read job counts, queue depths and provider health for app's settings."""
    return read_state(db.session, app.extensions["massmailer.settings"], ops_limits(app))


def ops_limits(app: Flask) -> Limits:
    """The limits store to read provider health from, built once per app (after any fork)."""
    limits = app.extensions.get("massmailer.ops_limits")
    if limits is None:
        limits = app.extensions["massmailer.ops_limits"] = make_limits(
            app.extensions["massmailer.settings"]
        )
    return limits
