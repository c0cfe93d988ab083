"""End to end as a user runs it: POST /v1/batches to gunicorn, the Procfile's worker, providers.

Times from the first batch POST until every job is SENT, against three providers that are either
Postfix's `smtp-sink` itself (fast, local) or `smtp-sink` behind a relay that delays every byte
by half a round trip each way (a distant provider; pipelining can overlap there, as on a real
network). In the same run it measures the naive baseline (`bench/naive.py`: one Celery task per
email, a new SMTP session each) against the same providers, and prints both.

    python bench/bench_delivery.py --count 60000                 # fast sink
    python bench/bench_delivery.py --count 12000 --rtt-ms 20     # three providers 20 ms away
    python bench/bench_delivery.py --count 40000 --rtt-ms 20 --providers 2 --priority-probe 40
    python bench/bench_delivery.py --count 60000 --naive-count 3000 --dkim --webhooks
    python bench/bench_delivery.py --smoke                       # what CI runs

--dkim signs every MassMailer message with a fresh RSA-2048 key; --webhooks adds an endpoint for
every event type (a local receiver) and the Procfile's `webhooks` and `beat` processes. The naive
baseline does neither.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from email.utils import parseaddr
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from massmailer import apikeys, create_app  # noqa: E402
from massmailer.config import Settings, load_settings  # noqa: E402
from massmailer.delivery.dkim import DkimSigner  # noqa: E402
from massmailer.extensions import db  # noqa: E402
from massmailer.models import EmailJob  # noqa: E402
from massmailer.webhooks import EVENT_TYPES  # noqa: E402
from tests import infra  # noqa: E402
from tests.processes import Receiver  # noqa: E402

BATCH_LIMIT = 10_000
TEMPLATE = {
    "subject": "Your weekly digest, {{ name }}",
    "text": "Hello {{ name }},\n\nHere is what happened this week.\n" + "Lorem ipsum.\n" * 20,
    "html": "<p>Hello {{ name }},</p><p>Here is what happened this week.</p>"
    + "<p>Lorem ipsum.</p>" * 20,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, what: str) -> None:
    def accepts() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    infra.wait_until(accepts, 30, message=f"{what} to listen on {port}")


class Sink:
    """Postfix's smtp-sink, counting every message it accepts (-c)."""

    def __init__(self) -> None:
        if not shutil.which("smtp-sink"):
            sys.exit("smtp-sink is not installed: bash .ci/install-smtp-sink.sh")
        self.port = free_port()
        self._out = open(infra.OUTPUT_DIR / f"sink-{self.port}.out", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.port, "smtp-sink")

    def messages(self) -> int:
        """Messages accepted so far (smtp-sink prints its counters after each one)."""
        self._out.flush()
        tail = Path(self._out.name).read_bytes()[-400:].decode("ascii", "replace")
        found = re.findall(r"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._out.close()


class Sinks:
    """One smtp-sink per provider, as three providers are three servers; counted together.

    One sink shared by every provider stops accepting at about 290 connections, and its greeting
    then waits for another session to close: a stall of the bench, not of the senders.
    """

    def __init__(self, how_many: int) -> None:
        self.all = [Sink() for _ in range(how_many)]

    def messages(self) -> int:
        return sum(sink.messages() for sink in self.all)

    def stop(self) -> None:
        for sink in self.all:
            sink.stop()


@contextlib.contextmanager
def providers(rtt_ms: int, how_many: int) -> Iterator[tuple[list[dict], Sinks]]:
    """Providers: each its own sink, or a relay rtt_ms away in front of it."""
    sink = Sinks(how_many)
    relays: list[subprocess.Popen] = []
    try:
        entries = []
        for n, own_sink in enumerate(sink.all):
            port = own_sink.port
            if rtt_ms:
                port = free_port()
                relays.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "massmailer.testing.relay", "--rtt-ms",
                         str(rtt_ms), "--port", str(port), f"127.0.0.1:{own_sink.port}"],
                        cwd=ROOT,
                    )
                )  # fmt: skip
                wait_listening(port, "the latency relay")
            entries.append(
                {
                    "name": f"provider{n}",
                    "host": "127.0.0.1",
                    "port": port,
                    "max_connections": 100,
                    "rate_per_second": 100_000,  # limits on, but never the bound here
                }
            )
        yield entries, sink
    finally:
        for relay in relays:
            relay.terminate()
            relay.wait(10)
        sink.stop()


def start(args: list[str], env: dict, name: str) -> subprocess.Popen:
    log = open(infra.OUTPUT_DIR / f"bench-{name}.log", "wb")  # noqa: SIM115
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def procfile_process(name: str, env: dict) -> subprocess.Popen:
    """Start the Procfile's `name` line as a platform does, its ${VAR:-default}s from env."""
    procfile = (ROOT / "Procfile").read_text()
    command = re.search(rf"^{name}: (.*)$", procfile, re.M).group(1)
    command = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), command)
    return start(["sh", "-c", f"exec {command}"], env, name)


def wait_worker_ready(name: str) -> None:
    """Wait for a Celery worker started by procfile_process to log that it is ready."""
    log = infra.OUTPUT_DIR / f"bench-{name}.log"
    infra.wait_until(lambda: b" ready." in log.read_bytes(), 60, message=f"the {name} to start")


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 15)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(10)


def count_sent() -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).where(EmailJob.status == "SENT"))


def post(port: int, key: str, path: str, payload: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 202, response.read()
        return json.loads(response.read())


def call(port: int, key: str, method: str, path: str, payload: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode() if payload is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        return json.loads(body) if body else {}


def outbox_waiting() -> int:
    db.session.rollback()
    return db.session.scalar(
        text("SELECT count(*) FROM webhook_outbox WHERE state IN ('pending', 'sending')")
    )


def post_batches(port: int, key: str, count: int, priorities: tuple[int, ...]) -> float:
    """POST the recipients in batches of 10,000, cycling through priorities; return seconds."""
    started = time.perf_counter()
    for n, first in enumerate(range(0, count, BATCH_LIMIT)):
        size = min(BATCH_LIMIT, count - first)
        people = [
            {"to": f"user{first + i}@example.com", "vars": {"name": f"User {first + i}"}}
            for i in range(size)
        ]
        priority = priorities[n % len(priorities)]
        post(
            port,
            key,
            "/v1/batches",
            {"template": TEMPLATE, "recipients": people, "priority": priority},
        )
    return time.perf_counter() - started


def probe_priority(port: int, key: str, probes: int) -> list[float]:
    """While the backlog drains, POST urgent emails one by one; seconds from 202 to sent each."""
    ids = []
    for n in range(probes):
        payload = {"to": f"urgent{n}@example.com", "subject": "Reset", "text": "x", "priority": 9}
        ids.append(post(port, key, "/v1/emails", payload)["id"])
        time.sleep(0.25)
    infra.wait_until(
        lambda: all(j.sent_at for j in urgent_jobs(ids)), 120, message="urgent mail sent"
    )
    return sorted((j.sent_at - j.created_at).total_seconds() for j in urgent_jobs(ids))


def urgent_jobs(ids: list[int]) -> list[EmailJob]:
    db.session.rollback()
    return db.session.scalars(select(EmailJob).where(EmailJob.job_id.in_(ids))).all()


@contextlib.contextmanager
def dkim_key(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A fresh RSA-2048 key for the bench's From domain in a temporary PEM file; yield the
    MASSMAILER_DKIM_KEYS that makes the web and worker processes sign with it."""
    domain = parseaddr(env["MASSMAILER_DEFAULT_FROM"])[1].rpartition("@")[2]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with tempfile.NamedTemporaryFile(prefix="bench-dkim-", suffix=".pem") as file:
        file.write(pem)
        file.flush()
        entry = {"domain": domain, "selector": "bench", "private_key_file": file.name}
        yield {"MASSMAILER_DKIM_KEYS": json.dumps([entry])}


def check_signing(settings: Settings) -> None:
    """Stop before timing if the default From would go unsigned: a key for another domain is
    not an error for the service, it would only make the DKIM run measure nothing."""
    sender = parseaddr(settings.default_from)[1]
    if not DkimSigner(settings.dkim_keys).keys_for(sender):
        sys.exit(f"--dkim: no key signs mail from {sender}")


def webhook_env(run: str) -> dict[str, str]:
    return {
        "MASSMAILER_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
        # Beat claims the outbox every 5 s; its schedule file is the run's, not a shared /tmp one.
        "BEAT_SCHEDULE_FILE": str(infra.OUTPUT_DIR / f"beat-{run}"),
    }


def start_webhooks(env: dict) -> list[subprocess.Popen]:
    """The Procfile's `webhooks` worker, and `beat`, whose schedule dispatches the outbox."""
    processes = [procfile_process("webhooks", env), procfile_process("beat", env)]
    wait_worker_ready("webhooks")
    return processes


def subscribe(web_port: int, key: str, receiver: Receiver) -> None:
    """An endpoint for every event type, as a product that listens to everything has."""
    payload = {"url": receiver.url, "events": list(EVENT_TYPES)}
    call(web_port, key, "POST", "/v1/webhooks", payload)


WEBHOOK_DRAIN_TIMEOUT = 1800


def webhook_figures(receiver: Receiver, started: float) -> dict:
    """Did the deliveries keep up with the sending (taken when every job is SENT), and how long
    until the outbox was empty?"""
    figures = {
        "webhook_deliveries": len(receiver.requests),
        "outbox_waiting_at_end": outbox_waiting(),
    }
    infra.wait_until(
        lambda: outbox_waiting() == 0, WEBHOOK_DRAIN_TIMEOUT, interval=0.5, message="outbox empty"
    )
    seconds = time.perf_counter() - started
    figures["webhooks_all_delivered_seconds"] = round(seconds, 2)
    figures["webhooks_per_second"] = round(len(receiver.requests) / seconds, 1)
    return figures


def run_massmailer(
    env: dict, key: str, count: int, probes: int, receiver: Receiver | None = None
) -> dict:
    web_port = free_port()
    web = start(
        ["gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{web_port}", "--workers", "2"], env, "web"
    )
    processes = [web, procfile_process("worker", env)]
    try:
        wait_listening(web_port, "gunicorn")
        wait_worker_ready("worker")
        if receiver is not None:
            processes += start_webhooks(env)
            subscribe(web_port, key, receiver)
        started = time.perf_counter()
        priorities = (0,) if probes else (0, 5)
        intake_seconds = post_batches(web_port, key, count, priorities)
        urgent = probe_priority(web_port, key, probes) if probes else []
        infra.wait_until(
            lambda: count_sent() >= count + probes, 1800, interval=0.25, message="all SENT"
        )
        seconds = time.perf_counter() - started
        webhooks = webhook_figures(receiver, started) if receiver is not None else {}
    finally:
        for proc in processes:
            stop(proc)
    return {
        "design": "MassMailer (Procfile worker)",
        "emails": count,
        "seconds": round(seconds, 2),
        "emails_per_second": round(count / seconds, 1),
        "intake_recipients_per_second": round(count / intake_seconds, 1),
        "urgent_seconds_202_to_sent": [round(u, 2) for u in urgent],
        **webhooks,
    }


def run_naive(env: dict, count: int) -> dict:
    """The same emails through bench/naive.py: rows inserted, one task published per email."""
    table = EmailJob.__table__
    now = func.now()
    for first in range(0, count, 5000):
        rows = [
            {
                "recipient": f"naive{i}@example.com",
                "sender": "bench@massmailer.test",
                "subject": f"Your weekly digest, User {i}",
                "body": TEMPLATE["text"].replace("{{ name }}", f"User {i}"),
                "html": TEMPLATE["html"].replace("{{ name }}", f"User {i}"),
                "priority": 0,
                "status": "PENDING",
                "attempts": 0,
                "message_id": f"<naive-{i}@massmailer.test>",
            }
            for i in range(first, min(count, first + 5000))
        ]
        db.session.execute(
            table.insert().values(created_at=now, updated_at=now, category="transactional"), rows
        )
    db.session.commit()
    ids = db.session.scalars(
        select(EmailJob.job_id).where(EmailJob.recipient.like("naive%")).order_by(EmailJob.job_id)
    ).all()
    sys.path.insert(0, str(ROOT / "bench"))
    import naive

    naive.app.conf.broker_url = env["BROKER_URL"]
    worker = start(
        [sys.executable, "-m", "celery", "-A", "bench.naive", "worker", "--pool", "prefork",
         "--concurrency", "4", "-Q", "naive", "--without-gossip", "--without-mingle"],
        env, "naive",
    )  # fmt: skip
    try:
        before = count_sent()
        started = time.perf_counter()
        with naive.app.connection_for_write() as conn:
            for job_id in ids:
                naive.send.apply_async((job_id,), connection=conn)
        infra.wait_until(
            lambda: count_sent() - before >= count, 3600, interval=0.25, message="naive SENT"
        )
        seconds = time.perf_counter() - started
    finally:
        stop(worker)
    return {
        "design": "naive (one task per email)",
        "emails": count,
        "seconds": round(seconds, 2),
        "emails_per_second": round(count / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=60_000)
    parser.add_argument("--rtt-ms", type=int, default=0, help="providers this far away")
    parser.add_argument("--naive-count", type=int, default=None, help="default: like --count")
    parser.add_argument("--providers", type=int, default=3)
    parser.add_argument(
        "--priority-probe",
        type=int,
        default=0,
        metavar="N",
        help="post the backlog at priority 0, then N priority-9 emails while it drains",
    )
    parser.add_argument("--dkim", action="store_true", help="DKIM-sign (RSA-2048) what we send")
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="an endpoint for every event type, and the webhooks and beat processes",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the web and worker processes, e.g. MASSMAILER_SENDER_THREADS=16",
    )
    parser.add_argument("--smoke", action="store_true", help="a small run for CI")
    args = parser.parse_args(argv)
    # A SIGTERM runs the finally blocks below, which stop the processes this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    count = 600 if args.smoke else args.count
    naive_count = 200 if args.smoke else (args.naive_count or count)
    infra.OUTPUT_DIR.mkdir(exist_ok=True)

    with (
        infra.throwaway_services() as own,
        providers(args.rtt_ms, args.providers) as (entries, sink),
        contextlib.ExitStack() as options,
    ):
        env = own.service_env(entries, **dict(pair.split("=", 1) for pair in args.set))
        receiver = None
        if args.dkim:
            env.update(options.enter_context(dkim_key(env)))
        if args.webhooks:
            env.update(webhook_env(own.run))
            receiver = Receiver()  # answers 200 at once: the receiver is never the bound
            options.callback(receiver.close)
        settings = load_settings(env)
        if args.dkim:
            check_signing(settings)
        app = create_app(settings)
        with app.app_context():
            with contextlib.redirect_stderr(io.StringIO()):
                upgrade()
            key = apikeys.create(db.session, "bench")
            ours = run_massmailer(env, key, count, args.priority_probe, receiver)
            ours["sink_messages"] = sink.messages()
            print(json.dumps(ours), flush=True)
            baseline = run_naive(env, naive_count)
            print(json.dumps(baseline), flush=True)
            db.session.execute(text("SELECT 1"))
            db.session.remove()

    where = f"{args.providers} providers"
    where += f", {args.rtt_ms} ms away (relay + smtp-sink)" if args.rtt_ms else " (smtp-sink)"
    where += ", DKIM on" if args.dkim else ""
    where += ", webhooks on" if args.webhooks else ""
    ratio = ours["emails_per_second"] / baseline["emails_per_second"]
    if args.priority_probe:
        urgent = ours["urgent_seconds_202_to_sent"]
        print(f"priority 9 during the backlog, 202 to sent: median {urgent[len(urgent) // 2]} s, "
              f"max {urgent[-1]} s over {len(urgent)} emails")  # fmt: skip
    print(f"\nproviders: {where}")
    print(f"MassMailer: {count} emails in {ours['seconds']} s = {ours['emails_per_second']}/s "
          f"(intake {ours['intake_recipients_per_second']} recipients/s); "
          f"the sink received {ours['sink_messages']}")  # fmt: skip
    if args.webhooks:
        print(f"webhooks:   the receiver got {ours['webhook_deliveries']} deliveries; "
              f"{ours['outbox_waiting_at_end']} outbox rows waiting when all SENT; all "
              f"delivered {ours['webhooks_all_delivered_seconds']} s after the first POST "
              f"({ours['webhooks_per_second']}/s)")  # fmt: skip
    print(f"naive:      {naive_count} emails in {baseline['seconds']} s = "
          f"{baseline['emails_per_second']}/s")  # fmt: skip
    print(f"ratio:      {ratio:.2f}x")
    lost_or_doubled = ours["sink_messages"] - count - args.priority_probe
    return 0 if lost_or_doubled == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
