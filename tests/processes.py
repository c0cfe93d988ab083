"""The Procfile's `bounces` and `webhooks` processes and a local webhook receiver, for tests (and
benches) on real processes.

The receiver listens on 127.0.0.1, so whoever delivers to it runs with
MASSMAILER_WEBHOOK_ALLOW_PRIVATE=true; nothing leaves this machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from massmailer.extensions import db
from massmailer.models import EmailJob, Suppression
from tests import infra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def bounces_process(env: dict[str, str]):
    """`flask --app wsgi bounces serve` on a free port; yield the port, then stop it cleanly."""
    port = free_port()
    args = [sys.executable, "-m", "flask", "--app", "wsgi", "bounces", "serve"]
    proc = subprocess.Popen(
        [*args, "--host", "127.0.0.1", "--port", str(port)],
        cwd=infra.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        infra.wait_until(lambda: _listening(port, proc), 20, message="the bounces process")
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode("utf-8", "replace")
    assert proc.returncode == 0, output[-3000:]


def _listening(port: int, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(proc.stdout.read().decode("utf-8", "replace")[-3000:])
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def send_report(port: int, rcpt: str, raw: bytes) -> str:
    """Send a report with a null sender, as an MTA returns one; return the 250 reply's text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.ehlo("mx.example.net")
        code, reply = smtp.mail("")
        assert code == 250, reply
        code, reply = smtp.rcpt(rcpt)
        assert code == 250, reply
        code, reply = smtp.data(raw)
        assert code == 250, reply
        return reply.decode()


def state() -> dict[str, tuple[str, str | None, str | None]]:
    """Each job's recipient -> (status, last_error, suppression reason of the address)."""
    db.session.expire_all()
    jobs = db.session.scalars(select(EmailJob)).all()
    suppressed = {s.email: s.reason for s in db.session.scalars(select(Suppression))}
    return {j.recipient: (j.status, j.last_error, suppressed.get(j.recipient)) for j in jobs}


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # a burst of concurrent tries is accepted, not refused


# Webhooks to a receiver on 127.0.0.1, claimed twice a second rather than every 5 s.
WEBHOOK_ENV = {
    "MASSMAILER_WEBHOOK_ALLOW_PRIVATE": "true",
    "MASSMAILER_WEBHOOK_DISPATCH_SECONDS": "0.5",
}


class Receiver:
    """An HTTP server that records every request and answers from a script (then 200).

    `delay_seconds` makes each answer that slow; every request has its own thread.
    """

    def __init__(self, script: list[int] | None = None, delay_seconds: float = 0.0) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script = list(script or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.script.pop(0) if receiver.script else 200
                time.sleep(delay_seconds)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def webhooks_worker(env, concurrency: int = 8):
    """The Procfile's `webhooks` process: -Q webhooks on the threads pool, with its own log."""
    worker = infra.WorkerProcess(
        env,
        queues="webhooks",
        pool="threads",
        concurrency=concurrency,
        name=f"webhooks-{infra.run_id()}",
    )
    worker.log_path = infra.OUTPUT_DIR / f"webhooks-{infra.run_id()}.log"
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def register(client, auth, url, events):
    """POST /v1/webhooks through the Flask client; return the answer (with the secret)."""
    response = client.post("/v1/webhooks", json={"url": url, "events": events}, headers=auth)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def verified(secret: str, request) -> dict:
    """The request's payload, once `standardwebhooks` (an independent implementation) checks it."""
    headers, body = request
    return Webhook(secret).verify(body, headers)
