"""Test infrastructure: a throwaway PostgreSQL database, RabbitMQ vhost and Redis prefix per run,
and real Celery worker processes.

Where PostgreSQL, RabbitMQ and Redis are comes from tests/harness (the machine's own servers if
usable, else throwaway ones, else docker compose), chosen on first use: `services()`.
`PG_ADMIN_DSN`, `RABBIT_HOST` and `REDIS_URL` are still attributes of this module, resolved then.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import redis
from kombu import Connection

from tests.harness.choose import services

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "test-output"


def __getattr__(name: str) -> str:
    """Resolve the service addresses on first use, not at import (choosing may start servers)."""
    if name == "PG_ADMIN_DSN":
        return services().postgres.url
    if name == "RABBIT_HOST":
        return urlsplit(services().rabbitmq.url).netloc.rsplit("@", 1)[-1]
    if name == "REDIS_URL":
        return services().redis.url
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run_id() -> str:
    return uuid.uuid4().hex[:10]


def create_database(name: str) -> str:
    admin_dsn = services().postgres.url
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    conn = psycopg2.connect(services().postgres.url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


def rabbitmqctl(*args: str) -> None:
    """rabbitmqctl against the run's broker (the harness's node, or the machine's)."""
    services().rabbitmq.ctl(*args)


def create_vhost(name: str) -> str:
    amqp = urlsplit(services().rabbitmq.url)
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, amqp.username or "guest", ".*", ".*", ".*")
    return f"{amqp.scheme}://{amqp.netloc}/{name}"


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


@dataclass(frozen=True)
class Throwaway:
    """One run's own database, RabbitMQ vhost and Redis key prefix."""

    run: str
    database_url: str
    broker_url: str
    redis_prefix: str

    def service_env(self, providers: list[dict], **extra: str) -> dict[str, str]:
        """The environment a web or worker process of this run gets."""
        return service_env(
            database_url=self.database_url,
            broker_url=self.broker_url,
            redis_prefix=self.redis_prefix,
            providers=providers,
            **extra,
        )


@contextmanager
def throwaway_services(kind: str = "mmbench") -> Iterator[Throwaway]:
    """Create a database and a vhost named `<kind>_<run id>`, and use that name as the Redis key
    prefix; remove all three when the block ends, however it ends."""
    run = run_id()
    name = f"{kind}_{run}"
    database_url = create_database(name)
    try:
        broker_url = create_vhost(name)
        try:
            yield Throwaway(run, database_url, broker_url, f"{name}:")
        finally:
            delete_vhost(name)
            delete_redis_prefix(f"{name}:")
    finally:
        drop_database(name)


def purge_queues(broker_url: str, names: list[str]) -> None:
    with Connection(broker_url) as conn:
        channel = conn.default_channel
        for name in names:
            try:
                channel.queue_purge(name)
            except Exception:  # the queue may not exist yet; the channel must be reopened then
                channel = conn.channel()


def queue_depth(broker_url: str, name: str) -> int:
    with Connection(broker_url) as conn:
        return conn.default_channel.queue_declare(name, passive=True).message_count


def delete_redis_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(services().redis.url)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# Service processes refuse to start without a signing key; each test run makes its own.
TEST_SECRET_KEY = secrets.token_urlsafe(32)


def service_env(
    *, database_url: str, broker_url: str, redis_prefix: str, providers: list[dict], **extra: str
) -> dict[str, str]:
    """The environment a web or worker process gets, as on a Procfile platform."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASSMAILER_", "FLASK_"))}
    env.update(
        DATABASE_URL=database_url,
        BROKER_URL=broker_url,
        REDIS_URL=services().redis.url,
        MASSMAILER_REDIS_PREFIX=redis_prefix,
        MASSMAILER_PROVIDERS=json.dumps(providers),
        MASSMAILER_DEFAULT_FROM="MassMailer Tests <sender@massmailer.test>",
        MASSMAILER_BOUNCE_ADDRESS="bounces@massmailer.test",
        MASSMAILER_SECRET_KEY=TEST_SECRET_KEY,
        # /metrics is closed without a token in production; the ops tests scrape it open.
        MASSMAILER_METRICS_PUBLIC="true",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A real `celery worker` process started from the project's wsgi module."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        concurrency: int = 2,
        pool: str = "prefork",
        queues: str = "emails,maintenance",
        name: str | None = None,
        beat: bool = False,
    ) -> None:
        self.env = dict(env)
        self.args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "wsgi:celery",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            "-Q",
            queues,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{name or 'test-' + run_id()}@%h",
        ]
        OUTPUT_DIR.mkdir(exist_ok=True)
        if beat:
            # The embedded beat runs the sweeper every MASSMAILER_SWEEP_INTERVAL_SECONDS.
            self.args += ["--beat", f"--schedule={OUTPUT_DIR / ('beat-' + run_id())}"]
        self.log_path = OUTPUT_DIR / f"worker-{run_id()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait_ready: float = 30.0) -> WorkerProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + wait_ready
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {wait_ready}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def child_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_hard(self) -> None:
        """SIGKILL the whole process group: nothing gets to clean up."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log and not log.closed:
            log.close()


@contextmanager
def running_worker(env: Mapping[str, str], **kwargs):
    worker = WorkerProcess(env, **kwargs).start()
    try:
        yield worker
    finally:
        worker.stop()


def wait_until(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
