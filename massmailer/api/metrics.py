"""/metrics: this host's counters plus the fleet's state read at scrape time.

The token (MASSMAILER_METRICS_TOKEN) is required as a Bearer token (or as the password of basic
auth, any user): a scrape reads the fleet's state, so it is not open to anyone who can reach the
API. Without a token the endpoint answers 503 and start-up says so, unless
MASSMAILER_METRICS_PUBLIC opts in to an open endpoint (only the demo is open by default).
It shows counts and provider names, no addresses.
"""

from __future__ import annotations

import logging
import os
import threading

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST

from massmailer.delivery.limits.interface import Limits
from massmailer.extensions import db
from massmailer.metrics.collector import StateCollector
from massmailer.metrics.exposition import host_registry, render, token_accepted
from massmailer.metrics.state import OpsState, QueueReader, make_limits, read_state

bp = Blueprint("metrics", __name__)
_lock = threading.Lock()
logger = logging.getLogger(__name__)
DISABLED_MESSAGE = (
    "metrics are disabled: set MASSMAILER_METRICS_TOKEN (or MASSMAILER_METRICS_PUBLIC=true "
    "on a network only the scraper reaches)\n"
)


def warn_if_closed(app: Flask) -> None:
    """Say at start-up that /metrics answers nothing until a token is set."""
    ops = app.extensions["massmailer.settings"].ops
    if not ops.metrics_token and not ops.metrics_public:
        logger.warning(
            "event=metrics_disabled reason=MASSMAILER_METRICS_TOKEN_unset detail=%r",
            "GET /metrics answers 503 until MASSMAILER_METRICS_TOKEN is set",
        )


@bp.get("/metrics")
def metrics() -> Response:
    settings = current_app.extensions["massmailer.settings"]
    if not settings.ops.metrics_token and not settings.ops.metrics_public:
        return Response(DISABLED_MESSAGE, 503, mimetype="text/plain")
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
    settings = app.extensions["massmailer.settings"]
    return read_state(db.session, settings, ops_limits(app), ops_queues(app))


def ops_limits(app: Flask) -> Limits:
    """The limits store to read provider health from, built once per app (after any fork)."""
    limits = app.extensions.get("massmailer.ops_limits")
    if limits is None:
        limits = app.extensions["massmailer.ops_limits"] = make_limits(
            app.extensions["massmailer.settings"]
        )
    return limits


def ops_queues(app: Flask) -> QueueReader | None:
    """The broker connection scrapes read queue depths over, one per process (after any fork)."""
    broker_url = app.extensions["massmailer.settings"].broker_url
    if not broker_url:
        return None
    key = f"massmailer.ops_queues.{os.getpid()}"
    reader = app.extensions.get(key)
    if reader is None:
        with _lock:
            reader = app.extensions.get(key)
            if reader is None:
                reader = app.extensions[key] = QueueReader(broker_url)
    return reader
