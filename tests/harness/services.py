"""Throwaway PostgreSQL, RabbitMQ and Redis servers in a work directory, on free loopback ports.

Built for Debian's packages run as root (as CI does): PostgreSQL refuses root, so its binaries
under /usr/lib/postgresql/<ver>/bin run as the `postgres` user; RabbitMQ's /usr/lib/rabbitmq/bin
server runs with its own node name, ports, directories, Erlang cookie and epmd, so neither it
nor its `rabbitmqctl` ever reaches the machine's node. Each server runs in its own process group, so
`kill()` can SIGKILL exactly it (and its children) and nothing else. Every instance is stopped at
interpreter exit; `stop_all()` does it earlier (the pytest plugin calls it at session end).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

LOOPBACK = "127.0.0.1"
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
_running: list[_Server] = []


class ServiceInstance(Protocol):
    url: str
    port: int

    def stop(self) -> None: ...
    def start(self) -> None: ...
    def restart(self) -> None: ...
    def kill(self) -> None: ...


class ServiceError(RuntimeError):
    """A throwaway server could not be set up or did not come up."""


def free_port() -> int:
    """Return a loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def stop_all(servers: list | None = None) -> None:
    """Stop every server this process started, or just `servers` (registered with atexit too)."""
    for server in reversed(_running[:] if servers is None else servers):
        server.stop()
        server.cleanup()


atexit.register(stop_all)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so the servers are stopped by atexit and pytest's teardown.

    By default SIGTERM ends Python without running atexit, which would leave the servers running
    in their own sessions. Only the main thread may set handlers; a handler someone else installed
    is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


class _Server:
    """One server process in its own process group, logging to a file in its directory."""

    url: str
    port: int
    start_timeout = 30.0
    stop_signal = signal.SIGTERM
    cwd: str | None = None

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._temp_dirs: list[Path] = []
        _running.append(self)
        stop_on_sigterm()

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start (again: same port, same data) and wait until the server answers."""
        if self.running():
            return
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115  (the child keeps its own copy)
        with log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: kill() reaches it and its children
            )
        deadline = time.monotonic() + self.start_timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"{self.name} not ready after {self.start_timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop cleanly; SIGKILL whatever is left after `timeout`."""
        if not self.running():
            return
        self.proc.send_signal(self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        self._kill_group()

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server and its children: no shutdown, no flush."""
        self._kill_group()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        for path in self._temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        if self in _running:
            _running.remove(self)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "server.log"
        return path.read_bytes().decode("utf-8", "replace")[-chars:] if path.exists() else ""

    @property
    def name(self) -> str:
        return f"{type(self).__name__} on port {self.port}"

    def _kill_group(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        _wait_group_gone(self.proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until the whole group is gone (a restarted PostgreSQL checks its shared memory)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def missing_binaries(kind: str) -> list[str]:
    """The programs a throwaway `kind` server needs that are not installed."""
    if kind == "postgres":
        try:
            bindir = _pg_bindir()
        except ServiceError:
            return ["initdb"]
        wanted = [bindir / "postgres", bindir / "pg_isready"]
        if os.geteuid() == 0:
            wanted.append(Path(shutil.which("setpriv") or "setpriv"))
    elif kind == "rabbitmq":
        wanted = [RABBIT_BIN / "rabbitmq-server", Path(shutil.which("epmd") or "epmd")]
    else:
        wanted = [Path(shutil.which("redis-server") or "redis-server")]
    return [path.name for path in wanted if not os.access(path, os.X_OK)]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version_key)
    if not versions:
        found = shutil.which("initdb")
        if found:
            return Path(found).parent
        raise ServiceError(
            "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
        )
    return versions[-1].parent


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.parent.parent.name.split(".") if p.isdigit())


class PostgresInstance(_Server):
    """A PostgreSQL cluster in <workdir>, owned by the `postgres` user when run as root."""

    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to leave
    cwd = "/"  # the postgres user may not be able to read our working directory

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"
        self.bindir = _pg_bindir()
        self.user = _postgres_user()
        self.data = self._data_dir()
        self._initdb()

    def _data_dir(self) -> Path:
        wanted = self.dir / "data"
        if self.user is None or self._user_can_reach(self.dir):
            return wanted
        # The `postgres` user cannot traverse <workdir> (a 0700 temp dir of root): keep the data in
        # a directory of its own under the system temp dir, removed at cleanup.
        outside = Path(tempfile.mkdtemp(prefix="massmailer-pg-"))
        os.chmod(outside, 0o755)
        self._temp_dirs.append(outside)
        return outside / "data"

    def _user_can_reach(self, path: Path) -> bool:
        probe = subprocess.run([*self._as_user(), "test", "-x", str(path)], capture_output=True)
        return probe.returncode == 0

    def _as_user(self) -> list[str]:
        if self.user is None:
            return []
        return [
            "setpriv",
            f"--reuid={self.user.pw_uid}",
            f"--regid={self.user.pw_gid}",
            "--init-groups",
            "--",
        ]

    def _initdb(self) -> None:
        self.data.mkdir(mode=0o700, parents=True)
        if self.user is not None:
            os.chown(self.data, self.user.pw_uid, self.user.pw_gid)
        result = subprocess.run(
            [
                *self._as_user(),
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--locale=C.UTF-8",
            ],
            capture_output=True,
            text=True,
            cwd="/",
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed:\n{result.stdout}{result.stderr}")
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data}'",  # not /var/run/postgresql
            # Throwaway data: surviving an OS crash does not matter, so no fsync. Commits still
            # write their WAL before answering (synchronous_commit stays on), so a SIGKILLed
            # server keeps every commit it acknowledged, as the chaos tests expect.
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def command(self) -> list[str]:
        return [*self._as_user(), str(self.bindir / "postgres"), "-D", str(self.data)]

    def ready(self) -> bool:
        probe = subprocess.run(
            [str(self.bindir / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port)],
            capture_output=True,
        )
        return probe.returncode == 0


def _postgres_user() -> pwd.struct_passwd | None:
    """The user the server runs as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("running as root needs a `postgres` user to run PostgreSQL") from None


def start_postgres(workdir: Path) -> PostgresInstance:
    """Initialise and start a throwaway PostgreSQL (trust auth, loopback only, fsync off)."""
    instance = PostgresInstance(Path(workdir))
    instance.start()
    return instance


# --- RabbitMQ -----------------------------------------------------------------------------------


class RabbitMQInstance(_Server):
    """A RabbitMQ node with its own name, ports, directories, cookie and epmd; no plugins."""

    start_timeout = 90.0  # boot takes a few seconds alone, more on a loaded 2-core machine

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"mmtest{self.port}@localhost"
        self.url = f"amqp://guest:guest@{LOOPBACK}:{self.port}//"
        self.home = self.dir / "home"
        self._epmd: subprocess.Popen | None = None
        self._write_files()

    def _write_files(self) -> None:
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex().upper())
        cookie.chmod(0o400)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {LOOPBACK}:{self.port}\n"
            "loopback_users = none\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self.dir
        env.update(
            HOME=str(self.home),  # the Erlang cookie lives in $HOME for the node and rabbitmqctl
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(d / "plugins-expand"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_MNESIA_DIR=str(d / "mnesia" / "node"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(d / "feature_flags"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def command(self) -> list[str]:
        return [str(RABBIT_BIN / "rabbitmq-server")]

    def start(self) -> None:
        self._start_epmd()
        super().start()

    def _start_epmd(self) -> None:
        # Our own epmd: the node never registers with (or starts) the machine's one on 4369, and
        # nothing of ours outlives the run.
        if self._epmd is not None and self._epmd.poll() is None:
            return
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", LOOPBACK],
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not _port_open(self.epmd_port):
            if time.monotonic() > deadline or self._epmd.poll() is not None:
                raise ServiceError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def ready(self) -> bool:
        return _amqp_answers(self.port)

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run rabbitmqctl against this node (same cookie and epmd); raise if it fails."""
        return self.node_ctl()(*args, timeout=timeout)

    def node_ctl(self) -> NodeCtl:
        return NodeCtl(self.node, str(self.home), self.epmd_port)

    def cleanup(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            os.killpg(self._epmd.pid, signal.SIGKILL)
            self._epmd.wait(10)
        super().cleanup()


@dataclass(frozen=True)
class NodeCtl:
    """rabbitmqctl for one harness node; plain data, so a child process can rebuild it."""

    node: str
    home: str  # holds the node's Erlang cookie
    epmd_port: int

    def __call__(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        # rabbitmqctl is itself an Erlang node; by default every one on the machine competes for
        # ports 35672-35682. Give ours a range of its own.
        ctl_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=self.home,
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
            RABBITMQ_CONF_ENV_FILE="/dev/null",  # not /etc/rabbitmq's, which names the machine node
            RABBITMQ_CTL_DIST_PORT_MIN=str(ctl_port),
            RABBITMQ_CTL_DIST_PORT_MAX=str(min(ctl_port + 10, 65535)),
        )
        result = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"rabbitmqctl {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            )
        return result


def _amqp_answers(port: int) -> bool:
    """True when the port speaks AMQP 0-9-1: the listener opens last in RabbitMQ's boot."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"  # a method frame: connection.start
    except OSError:
        return False


def start_rabbitmq(workdir: Path) -> RabbitMQInstance:
    """Start a throwaway RabbitMQ node (guest/guest, loopback only, no management plugin)."""
    instance = RabbitMQInstance(Path(workdir))
    instance.start()
    return instance


# --- Redis --------------------------------------------------------------------------------------


class RedisInstance(_Server):
    """redis-server on a free port, nothing saved to disk."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            binary,
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(7) == b"+PONG\r\n"
        except OSError:
            return False


def start_redis(workdir: Path) -> RedisInstance:
    """Start a throwaway redis-server (no RDB snapshots, no AOF)."""
    instance = RedisInstance(Path(workdir))
    instance.start()
    return instance
