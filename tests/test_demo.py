"""The embedded demo: `python -m massmailer demo` with no services; the table it uses as queue."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from massmailer import create_app
from massmailer.demo import database
from massmailer.demo.progress import render
from massmailer.demo.runner import demo_settings
from massmailer.demo.table_queue import TableQueue
from massmailer.demo.traffic import plan, recipients
from massmailer.extensions import db
from massmailer.jobstore import LEASE_GRACE_SECONDS
from massmailer.models import EmailJob, Status
from massmailer.models.types import utcnow
from massmailer.testing.smtp_server import FaultSMTPServer, Rule

REPO = Path(__file__).resolve().parent.parent
SERVICE_VARIABLES = ("DATABASE_URL", "BROKER_URL", "CLOUDAMQP_URL", "REDIS_URL")
DEMO_TIMEOUT = 90  # the demo gives up after 60 s (its retries alone wait 10 s)


def unknown_readers(count: int) -> int:
    """How many of the demo's recipients every provider refuses (550 5.1.1)."""
    return sum("nobody" in to for to in recipients(plan(count, high_share=0.1)))


def newcomer_env() -> dict[str, str]:
    """This environment without any service URL or MassMailer setting: a fresh machine."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SERVICE_VARIABLES and not k.startswith("MASSMAILER_")
    }
    env["PYTHONPATH"] = str(REPO)
    return env


def start_demo(cwd: Path, *args: str) -> subprocess.Popen:
    cwd.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "massmailer", "demo", "--json", "--timeout=60", *args],
        cwd=cwd,
        env=newcomer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> dict:
    """Wait for the demo; return its JSON summary (the last line on stdout)."""
    stdout, stderr = process.communicate(timeout=DEMO_TIMEOUT)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run the demo twice at once (each waits 10 s for its retries): with its own providers,
    and against two SMTP servers this test owns, so their counts are the servers' own."""
    root = tmp_path_factory.mktemp("demo")
    steady = FaultSMTPServer(rules=[Rule("RCPT", 550, match="nobody")])
    flaky = FaultSMTPServer(
        rules=[Rule("RCPT", 550, match="nobody"), Rule("DATA", 451, probability=0.3)], seed=7
    )
    with steady, flaky:
        own = start_demo(root / "own", "--count", "400", "--workers", "2")
        kept = root / "kept.sqlite3"
        ours = start_demo(
            root / "ours",
            "--count=150",
            f"--provider-port={steady.port}",
            f"--provider-port={flaky.port}",
            f"--db={kept}",
        )
        try:
            results = {
                "own": (finish(own), root / "own"),
                "ours": (finish(ours), steady, flaky, kept),
            }
        finally:
            for process in (own, ours):
                if process.poll() is None:
                    process.kill()
                    process.wait()
        yield results


@pytest.mark.slow
def test_demo_sends_everything_through_its_own_local_providers(runs):
    summary, _ = runs["own"]

    assert summary["messages"] == 400
    status = summary["status"]
    assert status["PENDING"] == 0 and status["CANCELLED"] == 0
    # Every 100th newsletter reader is unknown to the providers: a hard bounce, suppressed.
    bounced = unknown_readers(400)
    assert bounced > 0
    assert summary["failed_by_kind"] == {"permanent_recipient": bounced}
    assert status["FAILED"] == bounced and summary["suppressed"] == bounced
    assert status["SENT"] == 400 - bounced
    # The counts each SMTP server kept match what the database says each provider sent.
    assert summary["accepted_by_server"] == summary["sent_by_provider"]
    assert set(summary["sent_by_provider"]) == {"steady", "flaky"}
    assert summary["attempts_by_provider"]["flaky"]["transient 451"] > 0
    assert "transient 451" not in summary["attempts_by_provider"]["steady"]
    assert summary["retried_jobs"] == summary["retried_then_sent"] > 0
    assert summary["rate_per_second"] > 0


@pytest.mark.slow
def test_demo_sends_high_priority_mail_ahead_of_the_backlog(runs):
    summary, _ = runs["own"]

    latency = summary["latency_by_priority"]
    assert list(latency) == ["9", "0"]  # highest first
    high, low = latency["9"]["first_try"], latency["0"]["first_try"]
    assert high["count"] + low["count"] + summary["retried_jobs"] == summary["status"]["SENT"]
    assert high["median"] < low["median"]


@pytest.mark.slow
def test_demo_writes_its_database_in_a_temporary_directory(runs):
    summary, cwd = runs["own"]

    assert list(cwd.iterdir()) == []  # nothing left where it ran
    assert summary["database_kept"] is False
    assert not Path(summary["database"]).exists()


@pytest.mark.slow
def test_each_recipient_reaches_the_smtp_servers_exactly_once(runs):
    summary, steady, flaky, _ = runs["ours"]

    received = [r for server in (steady, flaky) for r in server.messages]
    recipients = Counter(rcpt for r in received for rcpt in r.rcpt_tos)
    assert len(recipients) == 150 - unknown_readers(150)
    assert set(recipients.values()) == {1}  # retried, never sent twice
    assert not any("nobody" in rcpt for rcpt in recipients)
    assert summary["status"]["SENT"] == len(received)
    assert summary["retried_jobs"] == summary["retried_then_sent"] > 0
    steady_name, flaky_name = f"port{steady.port}", f"port{flaky.port}"
    assert summary["sent_by_provider"] == {
        steady_name: steady.message_count,
        flaky_name: flaky.message_count,
    }
    # MAIL FROM is the bounce address carrying the job id (VERP), as in production.
    assert all(r.mail_from.startswith("bounces+") for r in received)


@pytest.mark.slow
def test_demo_keeps_the_sqlite_file_given_with_db(runs):
    summary, _, _, kept = runs["ours"]

    assert summary["database"] == str(kept) and summary["database_kept"] is True
    with sqlite3.connect(kept) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM email_jobs GROUP BY status ORDER BY status"
        ).fetchall()
        [version] = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        events = connection.execute(
            "SELECT type, count(DISTINCT job_id) FROM email_events GROUP BY type"
        ).fetchall()
    bounced = unknown_readers(150)
    assert dict(rows) == {"FAILED": bounced, "SENT": 150 - bounced}
    # SQLite logs events too: a row trigger for accepted, the outcome flush for the rest.
    jobs_by_event = dict(events)
    assert (jobs_by_event["accepted"], jobs_by_event["sent"]) == (150, 150 - bounced)
    assert jobs_by_event["failed"] == bounced
    assert version  # built by the migrations


def test_demo_help_explains_its_options():
    result = subprocess.run(
        [sys.executable, "-m", "massmailer", "demo", "--help"],
        cwd=REPO,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0
    for option in ("--count", "--flaky-share", "--db", "--keep", "--json", "--provider-port"):
        assert option in result.stdout


def test_demo_refuses_to_reuse_an_existing_database_file(tmp_path):
    existing = tmp_path / "old.sqlite3"
    existing.write_bytes(b"")

    result = subprocess.run(
        [sys.executable, "-m", "massmailer", "demo", "--count=1", f"--db={existing}"],
        cwd=tmp_path,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "already exists" in result.stderr


@pytest.fixture
def demo_db(tmp_path):
    app = create_app(demo_settings(database.url_for(tmp_path / "q.sqlite3"), []))
    database.prepare(app)
    with app.app_context():
        yield db.session
        db.session.remove()
        db.engine.dispose()


def add_job(session, n: int, priority: int, status: str = Status.PENDING, **fields) -> int:
    now = utcnow()
    job = EmailJob(
        recipient=f"r{n}@example.com",
        sender="s@example.com",
        subject="s",
        body="b",
        priority=priority,
        status=status,
        message_id=f"<{n}@example.com>",
        created_at=now,
        updated_at=now,
        **fields,
    )
    session.add(job)
    session.commit()
    return job.job_id


def test_table_queue_hands_out_high_priority_first_one_priority_per_chunk(demo_db):
    low = [add_job(demo_db, n, 0) for n in range(3)]
    high = [add_job(demo_db, n, 9) for n in range(3, 5)]
    queue = TableQueue(chunk_size=10)

    assert queue.take(demo_db) == high
    assert queue.take(demo_db) == low  # the high ones are in flight, not handed out twice
    assert queue.take(demo_db) == []
    queue.done(high)
    assert queue.take(demo_db) == high  # still PENDING and unclaimed: due again


def test_table_queue_skips_jobs_not_yet_due_or_claimed(demo_db):
    later = utcnow() + timedelta(seconds=30)
    add_job(demo_db, 1, 5, next_attempt_at=later)
    add_job(demo_db, 2, 5, send_at=later)
    add_job(demo_db, 3, 5, claim_token="t" * 32, lease_until=later)
    add_job(demo_db, 4, 5, status=Status.SENT)
    lapsed = utcnow() - timedelta(seconds=LEASE_GRACE_SECONDS)
    expired = add_job(demo_db, 5, 5, claim_token="u" * 32, lease_until=lapsed)
    due = add_job(demo_db, 6, 1)
    queue = TableQueue(chunk_size=10)

    assert queue.take(demo_db) == [expired]  # a claim whose lease ran out (and its grace) is free
    assert queue.take(demo_db) == [due]
    assert queue.take(demo_db) == []


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (
            (10, 0, 0, 0, 0, 0.0),
            "[--------------------] 0/10  sent 0  failed 0  retries 0  queued 0",
        ),
        (
            (10, 10, 5, 0, 2, 1.0),
            "[##########----------] 5/10  sent 5  failed 0  retries 2  queued 5",
        ),
        (
            (10, 10, 9, 1, 3, 2.0),
            "[####################] 10/10  sent 9  failed 1  retries 3  queued 0",
        ),
    ],
)
def test_progress_line_shows_the_finished_share(counts, expected):
    line = render(*counts)

    assert line.startswith(expected)
    assert line.endswith("/s  " + f"{counts[-1]:.0f}s")
