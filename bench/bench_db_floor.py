"""The database's share of one delivered email: the send path's writes, with no SMTP at all.

Inserts `--count` PENDING jobs, then runs exactly what a worker's slot writes for each chunk of
`--chunk` jobs: the claim (one guarded UPDATE … RETURNING), then one attempt row and one SENT
outcome per job, flushed every 50 by `OutcomeRecorder` (one UPDATE … FROM unnest and one INSERT,
with the triggers that log each job's event and keep `job_counts`). It prints the wall time and
the CPU seconds of this process and of its PostgreSQL backend per email, read from /proc.

That backend's CPU per email is a floor under what any sending design costs on this machine as
long as every email keeps its claim, attempt row, outcome and event.

    python bench/bench_db_floor.py                 # 60,000 jobs in chunks of 200
    python bench/bench_db_floor.py --count 20000 --chunk 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import text  # noqa: E402

from massmailer import create_app, jobstore  # noqa: E402
from massmailer.delivery.outcomes import FLUSH_EVERY_MESSAGES, OutcomeRecorder  # noqa: E402
from massmailer.extensions import db  # noqa: E402
from massmailer.models.types import utcnow  # noqa: E402
from tests import infra  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def insert_jobs(count: int) -> list[int]:
    db.session.execute(
        text(
            "INSERT INTO email_jobs (recipient, subject, body, priority, status, attempts,"
            " created_at, updated_at, enqueued_at, sender, category, message_id, dispatch_seq)"
            " SELECT 'user' || g || '@example.com', 'Hello ' || g, 'Dear reader.', 0, 'PENDING',"
            " 0, now(), now(), now(), 'bench@massmailer.test', 'transactional',"
            " '<floor-' || g || '@bench>', 0 FROM generate_series(1, :count) AS g"
        ),
        {"count": count},
    )
    db.session.commit()
    db.session.execute(text("ANALYZE email_jobs"))
    db.session.commit()
    return list(db.session.scalars(text("SELECT job_id FROM email_jobs ORDER BY job_id")))


def send_path_writes(ids: list[int], chunk: int) -> None:
    """What the slots write for every chunk: claim, then attempt + outcome, flushed every 50."""
    session = db.session
    for start in range(0, len(ids), chunk):
        token = uuid.uuid4().hex
        claimed = jobstore.claim(session, ids[start : start + chunk], token, 60)
        recorder = OutcomeRecorder(session, token, utcnow)
        for job in claimed:
            recorder.attempt(job.job_id, 1, "sink", "sent", smtp_code=250, duration_ms=1)
            recorder.sent(
                job.job_id, "sink", "Q1", "250 2.0.0 Ok: queued as Q1", accepted_at=job.created_at
            )
            if recorder.pending() >= FLUSH_EVERY_MESSAGES:
                recorder.flush()
        recorder.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=60_000)
    parser.add_argument("--chunk", type=int, default=200)
    args = parser.parse_args(argv)

    with infra.throwaway_services("mmfloor") as run:
        os.environ.update(run.service_env([]))
        app = create_app()
        with app.app_context():
            upgrade(directory=str(ROOT / "migrations"))
            ids = insert_jobs(args.count)
            backend = db.session.scalar(text("SELECT pg_backend_pid()"))
            db.session.commit()
            ours, theirs = cpu_seconds(os.getpid()), cpu_seconds(backend)
            started = time.perf_counter()
            send_path_writes(ids, args.chunk)
            wall = time.perf_counter() - started
            ours, theirs = cpu_seconds(os.getpid()) - ours, cpu_seconds(backend) - theirs
            sent = db.session.scalar(text("SELECT count(*) FROM email_jobs WHERE status='SENT'"))
            db.session.remove()
            db.engine.dispose()
    per = 1000 / args.count
    print(f"{args.count} jobs in chunks of {args.chunk}: {sent} SENT in {wall:.1f} s")
    print(f"PostgreSQL backend CPU {theirs:.2f} s = {theirs * per:.3f} ms per email")
    print(f"this process (SQLAlchemy, psycopg2) CPU {ours:.2f} s = {ours * per:.3f} ms per email")
    print(f"writes alone: {args.count / wall:,.0f} emails/s on one connection")
    return 0 if sent == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
