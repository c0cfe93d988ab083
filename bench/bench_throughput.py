"""End-to-end send throughput: PostgreSQL -> RabbitMQ -> real Celery workers -> a local SMTP sink.

Measures emails/s for each chunk size in the same run, so the ratio against the one-email-per-task
baseline (chunk size 1) is what to quote. Uses Postfix's smtp-sink (a fast C server; installed by
.ci/install-smtp-sink.sh) when present, else the project's FaultSMTPServer.

    python bench/bench_throughput.py                       # 20,000 emails, chunk sizes 1 and 200
    python bench/bench_throughput.py --count 2000 --chunk-sizes 1,50,200 --concurrency 4
    python bench/bench_throughput.py --smoke               # a few hundred, for CI
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

from massmailer import create_app  # noqa: E402
from massmailer.config import load_settings  # noqa: E402
from massmailer.extensions import db  # noqa: E402
from massmailer.jobstore import Dispatch  # noqa: E402
from massmailer.models import EmailJob  # noqa: E402
from massmailer.queues import ALL_QUEUES  # noqa: E402
from tests import infra  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_sink(latency_ms: int = 0):
    """A local SMTP server: smtp-sink (C, fast) unless a reply latency is asked for."""
    port = free_port()
    if shutil.which("smtp-sink") and not latency_ms:
        # -u: drop to nobody when run as root; backlog 256.
        proc = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "256"])
        name = "smtp-sink (C)"
    else:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "massmailer.testing.smtp_server",
                "--port",
                str(port),
                "--latency-ms",
                str(latency_ms),
            ],
            stdout=subprocess.PIPE,
        )
        proc.stdout.readline()
        name = f"FaultSMTPServer (Python), {latency_ms} ms per reply"
    infra.wait_until(lambda: _accepts(port), 10, message="the SMTP sink to listen")
    try:
        yield port, name
    finally:
        proc.terminate()
        proc.wait(10)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def insert_jobs(count: int) -> list[Dispatch]:
    """Bulk-insert PENDING jobs (what intake or a batch would have committed)."""
    now = time.time()
    rows = [
        {
            "recipient": f"user{i}@example.com",
            "subject": f"Benchmark message {i}",
            "body": "Hello from the MassMailer benchmark.\n" * 5,
            "priority": 0,
            "status": "PENDING",
            "attempts": 0,
            "sender": "bench@massmailer.test",
            "message_id": f"<bench-{now}-{i}@massmailer.test>",
        }
        for i in range(count)
    ]
    stamp = func.now()
    table = EmailJob.__table__
    for start in range(0, count, 5000):
        db.session.execute(
            table.insert().values(created_at=stamp, updated_at=stamp, category="transactional"),
            rows[start : start + 5000],
        )
    db.session.commit()
    db.session.execute(text("ANALYZE email_jobs"))
    db.session.commit()
    ids = db.session.scalars(select(EmailJob.job_id).order_by(EmailJob.job_id)).all()
    return [Dispatch(i, 0, 0) for i in ids]


def sent_count() -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).where(EmailJob.status == "SENT"))


def run_once(app, env, count, chunk_size, concurrency, pool) -> dict:
    publisher = app.extensions["massmailer.publisher"]
    db.session.execute(
        text("TRUNCATE email_attempts, email_events, email_jobs RESTART IDENTITY CASCADE")
    )
    db.session.commit()
    dispatches = insert_jobs(count)
    publish_started = time.perf_counter()
    for start in range(0, count, chunk_size):
        publisher.publish([d.job_id for d in dispatches[start : start + chunk_size]], 0)
    publish_seconds = time.perf_counter() - publish_started
    worker_env = {**env, "MASSMAILER_CHUNK_SIZE": str(chunk_size)}
    worker = infra.WorkerProcess(worker_env, concurrency=concurrency, pool=pool).start()
    try:
        started = time.perf_counter()
        infra.wait_until(lambda: sent_count() >= count, 600, interval=0.2, message="all SENT")
        seconds = time.perf_counter() - started
    finally:
        worker.stop()
    return {
        "chunk_size": chunk_size,
        "emails": count,
        "seconds": round(seconds, 2),
        "emails_per_second": round(count / seconds, 1),
        "publish_seconds": round(publish_seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--chunk-sizes", default="1,200")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads"])
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="delay each SMTP reply this long, like a distant provider",
    )
    parser.add_argument("--smoke", action="store_true", help="a small run for CI")
    args = parser.parse_args(argv)
    count = 300 if args.smoke else args.count
    chunk_sizes = [int(c) for c in args.chunk_sizes.split(",")]

    results = []
    with infra.throwaway_services() as own, smtp_sink(args.latency_ms) as (port, sink_name):
        providers = [{"name": "sink", "host": "127.0.0.1", "port": port, "max_connections": 64}]
        env = own.service_env(providers)
        app = create_app(load_settings(env))
        with app.app_context():
            with contextlib.redirect_stderr(io.StringIO()):
                upgrade()
            infra.purge_queues(own.broker_url, [q.name for q in ALL_QUEUES])
            for chunk_size in chunk_sizes:
                results.append(run_once(app, env, count, chunk_size, args.concurrency, args.pool))
                print(json.dumps(results[-1]), flush=True)
            db.session.remove()

    baseline = results[0]["emails_per_second"]
    print(f"\nsink: {sink_name}; worker pool: {args.pool} x {args.concurrency}; {count} emails")
    print(f"{'chunk size':>10} {'emails/s':>10} {'vs chunk ' + str(chunk_sizes[0]):>12}")
    for r in results:
        ratio = r["emails_per_second"] / baseline
        print(f"{r['chunk_size']:>10} {r['emails_per_second']:>10.1f} {ratio:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
