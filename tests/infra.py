"""Test infrastructure: a throwaway PostgreSQL database, RabbitMQ vhost and Redis prefix per run,
and real Celery worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import redis
from kombu import Connection

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = os.environ.get(
    "MASSMAILER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBIT_HOST = "127.0.0.1:5672"
REDIS_URL = "redis://127.0.0.1:6379/0"
OUTPUT_DIR = ROOT / "test-output"


def run_id() -> str:
    return uuid.uuid4().hex[:10]


def create_database(name: str) -> str:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def create_vhost(name: str) -> str:
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@{RABBIT_HOST}/{name}"


def delete_vhost(name: str) -> None:
    rabbitmqctl("delete_vhost", name)


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
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def service_env(
    *, database_url: str, broker_url: str, redis_prefix: str, providers: list[dict], **extra: str
) -> dict[str, str]:
    """The environment a web or worker process gets, as on a Procfile platform."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASSMAILER_", "FLASK_"))}
    env.update(
        DATABASE_URL=database_url,
        BROKER_URL=broker_url,
        REDIS_URL=REDIS_URL,
        MASSMAILER_REDIS_PREFIX=redis_prefix,
        MASSMAILER_PROVIDERS=json.dumps(providers),
        MASSMAILER_DEFAULT_FROM="MassMailer Tests <sender@massmailer.test>",
        MASSMAILER_BOUNCE_ADDRESS="bounces@massmailer.test",
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
