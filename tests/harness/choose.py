"""Choose, per service, where the tests get PostgreSQL, RabbitMQ and Redis from.

In order: the machine's own server on its usual localhost port *if it grants what the tests need*
(create a database; `rabbitmqctl` can add a vhost; Redis answers PING), else a throwaway server
started from the installed Debian packages (tests/harness/services.py), else `docker compose`
when a Docker engine answers, else one message saying what to install.

MASSMAILER_TEST_SERVICES forces a source: `auto` (the default order), `machine`, `own`, `compose`.
The choice is made once per process, on first use, so unit-only runs start nothing.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import redis
from kombu import Connection

from tests.harness import compose
from tests.harness import services as servers

KINDS = ("postgres", "rabbitmq", "redis")
MODES = ("auto", "machine", "own", "compose")
INHERIT_VARIABLE = "MASSMAILER_TEST_SERVICES_CHOSEN"
MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_AMQP = "amqp://guest:guest@127.0.0.1:5672//"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
PACKAGES = {"postgres": "postgresql", "rabbitmq": "rabbitmq-server", "redis": "redis-server"}
LABELS = {"postgres": "PostgreSQL", "rabbitmq": "RabbitMQ", "redis": "Redis"}


class ServicesUnavailable(RuntimeError):
    """No source could provide a service; the message says what to install."""


@dataclass
class Service:
    """One chosen service: where it is, where it came from, and the server if the harness runs it.

    `instance` is None for the machine's own servers: tests that restart or kill a service act
    on `instance` when there is one (never on a server the harness did not start).
    """

    kind: str
    source: str  # "machine", "own" or "compose"
    url: str  # postgres admin DSN, amqp URL of the default vhost, or redis URL
    instance: servers.ServiceInstance | None = None
    ctl: Callable[..., object] | None = None  # rabbitmqctl against this broker (RabbitMQ only)

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0


@dataclass
class ServiceSet:
    postgres: Service
    rabbitmq: Service
    redis: Service
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def describe(self) -> str:
        return ", ".join(
            f"{LABELS[s.kind]} {s.source} :{s.port}"
            for s in (self.postgres, self.rabbitmq, self.redis)
        )

    def close(self) -> None:
        """Stop what the harness started; the machine's servers are left alone."""
        while self._closers:
            self._closers.pop()()


_lock = threading.Lock()
_current: ServiceSet | None = None


def current() -> ServiceSet:
    """The services of this process, chosen on first call (or inherited from the parent)."""
    global _current
    with _lock:
        if _current is None:
            inherited = os.environ.get(INHERIT_VARIABLE)
            if inherited:
                _current = _from_json(inherited)
            else:
                _current = choose(os.environ.get("MASSMAILER_TEST_SERVICES", "auto"))
                atexit.register(_current.close)
                # Child processes (multiprocessing spawn, scripts) use these, not servers of
                # their own; Procfile-like processes get plain URLs from infra.service_env.
                os.environ[INHERIT_VARIABLE] = _to_json(_current)
        return _current


def _exit(message: str) -> None:
    raise SystemExit(message)


# What to do when no source can provide a service: scripts exit; the pytest plugin stops the run.
on_unavailable: Callable[[str], None] = _exit


def services() -> ServiceSet:
    """The services of this process; end the program with the install message if there are none."""
    try:
        return current()
    except ServicesUnavailable as exc:
        on_unavailable(str(exc))
        raise


def chosen() -> ServiceSet | None:
    """The services if they were chosen already, without choosing them."""
    return _current


def close() -> None:
    """Stop what this process started and forget the choice."""
    global _current
    with _lock:
        if _current is not None:
            _current.close()
            _current = None
            os.environ.pop(INHERIT_VARIABLE, None)


def _to_json(chosen: ServiceSet) -> str:
    ctl = chosen.rabbitmq.ctl
    if isinstance(ctl, servers.NodeCtl):
        ctl_data = {"kind": "node", **dataclasses.asdict(ctl)}
    elif isinstance(ctl, compose.ComposeCtl):
        ctl_data = {"kind": "compose", **dataclasses.asdict(ctl)}
    else:
        ctl_data = {"kind": "machine"}
    entries = {
        s.kind: {"source": s.source, "url": s.url}
        for s in (chosen.postgres, chosen.rabbitmq, chosen.redis)
    }
    return json.dumps({**entries, "rabbitmqctl": ctl_data})


def _from_json(raw: str) -> ServiceSet:
    """The parent's choice: same servers, no instance to stop (the parent owns them)."""
    data = json.loads(raw)
    ctl_data = data.pop("rabbitmqctl")
    kind = ctl_data.pop("kind")
    ctl = {
        "node": lambda: servers.NodeCtl(**ctl_data),
        "compose": lambda: compose.ComposeCtl(**ctl_data),
        "machine": lambda: machine_rabbitmqctl,
    }[kind]()
    found = {k: Service(k, v["source"], v["url"]) for k, v in data.items()}
    found["rabbitmq"].ctl = ctl
    return ServiceSet(**found)


def choose(mode: str) -> ServiceSet:
    """Pick every service from the sources `mode` allows; raise ServicesUnavailable naming gaps."""
    mode = mode.strip().lower() or "auto"
    if mode not in MODES:
        raise ServicesUnavailable(
            f"MASSMAILER_TEST_SERVICES={mode!r}: expected one of {', '.join(MODES)}"
        )
    servers.stop_on_sigterm()  # from the main thread: the servers start in worker threads
    workdir = Path(tempfile.mkdtemp(prefix="massmailer-test-services-"))
    closers: list[Callable[[], None]] = [lambda: shutil.rmtree(workdir, ignore_errors=True)]
    reasons: dict[str, list[str]] = {kind: [] for kind in KINDS}
    with ThreadPoolExecutor(len(KINDS)) as pool:  # RabbitMQ's boot dominates: overlap the three
        futures = {k: pool.submit(_local, k, mode, workdir, reasons[k]) for k in KINDS}
        found = {kind: future.result() for kind, future in futures.items()}
    for service in found.values():
        if service is not None and service.instance is not None:
            closers.append(_stopper(service.instance))
    missing = [kind for kind, service in found.items() if service is None]
    if missing and mode in ("auto", "compose"):
        found.update(_from_compose(missing, closers, reasons))
        missing = [kind for kind, service in found.items() if service is None]
    if missing:
        for close_one in reversed(closers):
            close_one()
        raise ServicesUnavailable(_install_message(missing, reasons, mode))
    return ServiceSet(**found, _closers=closers)


def _stopper(instance: servers.ServiceInstance) -> Callable[[], None]:
    def stop() -> None:
        instance.stop()
        getattr(instance, "cleanup", lambda: None)()

    return stop


def _local(kind: str, mode: str, workdir: Path, reasons: list[str]) -> Service | None:
    if mode in ("auto", "machine"):
        service = _machine(kind, reasons)
        if service is not None:
            return service
    if mode in ("auto", "own"):
        return _own(kind, workdir / kind, reasons)
    return None


# --- the machine's own servers -------------------------------------------------------------------


def _machine(kind: str, reasons: list[str]) -> Service | None:
    probe = {"postgres": _probe_postgres, "rabbitmq": _probe_rabbitmq, "redis": _probe_redis}[kind]
    try:
        return probe()
    except Exception as exc:  # any failure means "not usable"; the reason goes in the message
        reasons.append(f"not usable on localhost ({_first_line(exc)})")
        return None


def _probe_postgres() -> Service:
    url = os.environ.get("MASSMAILER_TEST_PG_ADMIN", MACHINE_PG)
    name = f"mmprobe_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(url, connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:  # the right every run needs: a database of its own
            cur.execute(f'CREATE DATABASE "{name}"')
            cur.execute(f'DROP DATABASE "{name}"')
    finally:
        conn.close()
    return Service("postgres", "machine", url)


def machine_rabbitmqctl(*args: str) -> subprocess.CompletedProcess:
    """rabbitmqctl against the machine's node (needs its Erlang cookie: root or user rabbitmq)."""
    # Debian installs it in /usr/sbin, which an ordinary user's PATH leaves out.
    ctl = shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")
    command = [ctl or "rabbitmqctl", *args]
    return subprocess.run(command, check=True, capture_output=True, timeout=60)


def _probe_rabbitmq() -> Service:
    with Connection(MACHINE_AMQP, connect_timeout=3) as conn:
        conn.connect()
    vhost = f"mmprobe_{uuid.uuid4().hex[:10]}"
    try:
        machine_rabbitmqctl("add_vhost", vhost)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"rabbitmqctl add_vhost failed: {_first_line(exc.stderr)}") from None
    machine_rabbitmqctl("delete_vhost", vhost)
    return Service("rabbitmq", "machine", MACHINE_AMQP, ctl=machine_rabbitmqctl)


def _probe_redis() -> Service:
    client = redis.Redis.from_url(MACHINE_REDIS, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    finally:
        client.close()
    return Service("redis", "machine", MACHINE_REDIS)


# --- throwaway servers from the installed packages ----------------------------------------------


def _own(kind: str, workdir: Path, reasons: list[str]) -> Service | None:
    missing = servers.missing_binaries(kind)
    if missing:
        reasons.append(f"not installed ({', '.join(missing)} not found)")
        return None
    start = {
        "postgres": servers.start_postgres,
        "rabbitmq": servers.start_rabbitmq,
        "redis": servers.start_redis,
    }[kind]
    try:
        instance = start(workdir)
    except (servers.ServiceError, OSError) as exc:
        reasons.append(f"installed, but a throwaway server did not start ({_first_line(exc)})")
        return None
    ctl = instance.node_ctl() if kind == "rabbitmq" else None
    return Service(kind, "own", instance.url, instance=instance, ctl=ctl)


# --- docker compose -----------------------------------------------------------------------------


def _from_compose(
    kinds: list[str], closers: list[Callable[[], None]], reasons: dict[str, list[str]]
) -> dict[str, Service]:
    problem = compose.unavailable()
    if problem:
        for kind in kinds:
            reasons[kind].append(f"no Docker ({problem})")
        return {}
    stack = compose.ComposeStack(kinds)
    closers.append(stack.down)
    try:
        stack.up()
    except compose.ComposeError as exc:
        for kind in kinds:
            reasons[kind].append(f"docker compose failed ({_first_line(exc)})")
        return {}
    found = {}
    for kind in kinds:
        ctl = stack.rabbitmqctl() if kind == "rabbitmq" else None
        found[kind] = Service(
            kind, "compose", stack.url(kind), instance=stack.service(kind), ctl=ctl
        )
    return found


# --- the one message ----------------------------------------------------------------------------


def _install_message(missing: list[str], reasons: dict[str, list[str]], mode: str) -> str:
    lines = [f"MassMailer's integration tests need {', '.join(LABELS[k] for k in missing)}:"]
    lines += [f"  {LABELS[k]}: " + "; ".join(reasons[k] or ["not tried"]) for k in missing]
    packages = " ".join(PACKAGES[k] for k in missing)
    lines += [
        "Any one of these fixes it:",
        f"  - install the server packages, and the tests start throwaway instances themselves:"
        f"\n      sudo apt-get install {packages}",
        "  - start a Docker engine with the compose plugin (the tests then use compose.yaml)",
        "  - run the services on localhost: PostgreSQL 5432 (user postgres, trust, may create"
        " databases), RabbitMQ 5672 (guest/guest, rabbitmqctl usable), Redis 6379",
    ]
    if mode != "auto":
        lines.append(f"(MASSMAILER_TEST_SERVICES={mode} allowed only that source.)")
    return "\n".join(lines)


def _first_line(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip()
    return text.splitlines()[0][:200] if text else type(value).__name__
