"""Batch intake: POST /v1/batches of 10,000 recipients, from request to 202, over real HTTP.

Loads 1,000,000 jobs first (INSERT ... SELECT generate_series, then one ANALYZE, as a table
that has been in use would have), then starts two gunicorn servers on the same database and
broker: one with today's intake, one with the previous code path (bench/legacy_intake.py:
every part rendered per recipient, INSERT ... RETURNING, ANALYZE in the request). POSTs alternate
between them, so both see the same machine load; each POST is timed from the request to the
202 on the client (JSON upload, parsing, screening, COPY, commit, confirmed publishes, stamps).

    python bench/bench_intake.py                          # 1,000,000 jobs, 10 POSTs per path
    python bench/bench_intake.py --posts 20 --recipients 10000 --preload 1000000
    python bench/bench_intake.py --smoke                  # 20,000 jobs, 2 POSTs of 1,000
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import text  # noqa: E402

from massmailer import apikeys, create_app  # noqa: E402
from massmailer.config import load_settings  # noqa: E402
from massmailer.extensions import db  # noqa: E402
from massmailer.heap import freeze_startup_objects  # noqa: E402
from tests import infra  # noqa: E402

PATH_VARIABLE = "BENCH_INTAKE_PATH"  # which intake a gunicorn server runs: current or legacy
TEMPLATE = {
    "subject": "Hello {{ name }}",
    "text": "Dear {{ name }}, your code is {{ code }}.\nSee you soon.",
    "html": "<p>Dear {{ name }}, your code is <b>{{ code }}</b>.</p><p>See you soon.</p>",
}


def make_app():
    """gunicorn's app factory: the real app, with the legacy intake swapped in if asked."""
    from massmailer.logs import configure_logging

    configure_logging()
    app = create_app()
    if os.environ.get(PATH_VARIABLE) == "legacy":
        sys.path.insert(0, str(ROOT / "bench"))
        import legacy_intake

        legacy_intake.install()
    freeze_startup_objects()  # as wsgi.py does
    return app


def preload(count: int) -> float:
    """Insert count jobs (19 in 20 SENT, the rest PENDING and enqueued); return the seconds."""
    started = time.perf_counter()
    step = 250_000
    for first in range(1, count + 1, step):
        last = min(count, first + step - 1)
        db.session.execute(
            text(
                "INSERT INTO email_jobs (recipient, subject, body, priority, status, attempts,"
                " created_at, updated_at, sent_at, enqueued_at, sender, category, message_id,"
                " dispatch_seq)"
                " SELECT 'user' || g || '@example.com', 'Earlier message ' || g, 'Hello.', 0,"
                " CASE WHEN g % 20 = 0 THEN 'PENDING' ELSE 'SENT' END, 1, now(), now(),"
                " CASE WHEN g % 20 = 0 THEN NULL ELSE now() END, now(),"
                " 'bench@massmailer.test', 'transactional', '<preload-' || g || '@bench>', 0"
                " FROM generate_series(:first, :last) AS g"
            ),
            {"first": first, "last": last},
        )
        db.session.commit()
    db.session.execute(text("ANALYZE email_jobs"))
    db.session.commit()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class Server:
    """A gunicorn server for one path; knows the CPU its workers and their backends used."""

    def __init__(self, port: int, master: int, application_name: str) -> None:
        self.port = port
        self.master = master
        self.application_name = application_name

    def cpu(self) -> tuple[float, float]:
        """(gunicorn workers' CPU seconds, their PostgreSQL backends' CPU seconds) so far."""
        web = sum(cpu_seconds(pid) for pid in children(self.master))
        backends = db.session.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
            {"name": self.application_name},
        ).scalars()
        database = sum(cpu_seconds(pid) for pid in backends)
        db.session.commit()
        return web, database


@contextlib.contextmanager
def gunicorn(env: dict[str, str], path: str, workers: int):
    port = free_port()
    name = f"bench-intake-{path}"
    # Each server's database sessions carry its name, so their backends' CPU can be read.
    env = {**env, "DATABASE_URL": f"{env['DATABASE_URL']}?application_name={name}"}
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers), "--timeout", "300", "--chdir", str(ROOT),
            "bench.bench_intake:make_app()",
        ],
        env={**env, PATH_VARIABLE: path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        infra.wait_until(lambda: _accepts(port), 60, message=f"gunicorn ({path}) to listen")
        yield Server(port, proc.pid, name)
    finally:
        proc.terminate()
        proc.wait(30)


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def batch_body(tag: str, recipients: int) -> bytes:
    people = [
        {"to": f"{tag}.reader{i}@example.com", "vars": {"name": f"Reader {i}", "code": i}}
        for i in range(recipients)
    ]
    return json.dumps({"template": TEMPLATE, "recipients": people}).encode()


def post(port: int, key: str, body: bytes) -> tuple[float, dict]:
    """POST one batch; return the seconds from sending the request to reading the 202."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    started = time.perf_counter()
    conn.request("POST", "/v1/batches", body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    seconds = time.perf_counter() - started
    conn.close()
    if response.status != 202:
        raise RuntimeError(f"POST answered {response.status}: {payload[:300]!r}")
    return seconds, json.loads(payload)


def run(args, env: dict[str, str], key: str) -> dict[str, dict[str, list[float]]]:
    results = {p: {"seconds": [], "web_cpu": [], "db_cpu": []} for p in ("legacy", "current")}
    with (
        gunicorn(env, "legacy", args.workers) as legacy,
        gunicorn(env, "current", args.workers) as current,
    ):
        servers = {"legacy": legacy, "current": current}
        for path, server in servers.items():  # warm-up: imports, connections, topology declared
            post(server.port, key, batch_body(f"warm-{path}", 100))
        for i in range(args.posts):
            # Alternate which path goes first, so neither always follows the other's load.
            order = ("current", "legacy") if i % 2 else ("legacy", "current")
            for path in order:
                server = servers[path]
                body = batch_body(f"{path}{i}", args.recipients)
                web_before, db_before = server.cpu()
                seconds, answer = post(server.port, key, body)
                web_after, db_after = server.cpu()
                assert answer["accepted"] == args.recipients, answer
                result = results[path]
                result["seconds"].append(seconds)
                result["web_cpu"].append(web_after - web_before)
                result["db_cpu"].append(db_after - db_before)
                print(json.dumps({
                    "post": i, "path": path, "seconds": round(seconds, 3),
                    "recipients_per_second": round(args.recipients / seconds),
                    "web_cpu_seconds": round(web_after - web_before, 3),
                    "postgres_cpu_seconds": round(db_after - db_before, 3),
                }), flush=True)  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preload", type=int, default=1_000_000, help="jobs already in the table")
    parser.add_argument("--posts", type=int, default=10, help="timed POSTs per path")
    parser.add_argument("--recipients", type=int, default=10_000, help="recipients per POST")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per server")
    parser.add_argument(
        "--without-accepted-events",
        action="store_true",
        help="disable the trigger that logs each new job's `accepted` event, to measure its cost",
    )
    parser.add_argument("--smoke", action="store_true", help="a small run for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preload, args.posts, args.recipients = 20_000, 2, 1_000

    with infra.throwaway_services() as own:
        env = own.service_env([])
        env.setdefault("MASSMAILER_SECRET_KEY", "bench-" + own.run)
        app = create_app(load_settings(env))
        with app.app_context():
            with contextlib.redirect_stderr(io.StringIO()):
                upgrade()
            loaded_in = preload(args.preload)
            if args.without_accepted_events:
                db.session.execute(
                    text("ALTER TABLE email_jobs DISABLE TRIGGER email_events_accepted")
                )
                db.session.commit()
            key = apikeys.create(db.session, "bench")
            print(f"preloaded {args.preload:,} jobs in {loaded_in:.1f} s", flush=True)
            load_before = os.getloadavg()
            timings = run(args, env, key)
            load_after = os.getloadavg()
            db.session.remove()
            db.engine.dispose()

    print(
        f"\n{args.posts} POSTs of {args.recipients:,} recipients per path, {args.preload:,} jobs"
        f" preloaded{' (no accepted events)' if args.without_accepted_events else ''},"
        f" gunicorn sync x {args.workers} per path, POSTs alternating between paths;"
        f" load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores)"
    )
    print(
        f"{'path':>8} {'median s':>9} {'best s':>7} {'recipients/s':>13} {'best':>7}"
        f" {'web CPU s':>10} {'pg CPU s':>9} {'recipients/CPU s':>17}"
    )
    medians = {}
    for path in ("legacy", "current"):
        r = timings[path]
        medians[path] = statistics.median(r["seconds"])
        web, pg = statistics.median(r["web_cpu"]), statistics.median(r["db_cpu"])
        best = min(r["seconds"])
        print(
            f"{path:>8} {medians[path]:>9.3f} {best:>7.3f}"
            f" {args.recipients / medians[path]:>13,.0f} {args.recipients / best:>7,.0f}"
            f" {web:>10.3f} {pg:>9.3f} {args.recipients / (web + pg):>17,.0f}"
        )
    print(f"current vs legacy (medians): {medians['legacy'] / medians['current']:.2f}x")
    print(
        "recipients/CPU s: recipients over the CPU the web worker and its PostgreSQL backend"
        " spent on the POST (medians), a bound on one request stream on an idle machine"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
