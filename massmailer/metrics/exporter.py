"""The worker host's /metrics: a small HTTP server in the worker's main process.

Prefork children write their counters to PROMETHEUS_MULTIPROC_DIR; this server merges the files
on each scrape, so one endpoint per worker host covers all of its processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from massmailer.metrics.exposition import host_registry, token_accepted


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds would drown the worker's log."""


def metrics_app(multiproc_dir: str | None, token: str | None) -> Callable:
    """A WSGI app serving the host registry, behind the scrape token when one is set."""
    serve = make_wsgi_app(host_registry(multiproc_dir))

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not token_accepted(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
            )
            return [b"metrics need the scrape token (MASSMAILER_METRICS_TOKEN)\n"]
        return serve(environ, start_response)

    return app


def start_exporter(
    addr: str, port: int, multiproc_dir: str | None, token: str | None
) -> WSGIServer:
    """Serve /metrics on addr:port from a daemon thread; return the server (shutdown() stops it)."""
    server = make_server(
        addr, port, metrics_app(multiproc_dir, token), ThreadingWSGIServer, _QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-exporter", daemon=True)
    thread.start()
    return server
