"""The last resort for the tests' services: PostgreSQL, RabbitMQ and Redis from compose.yaml.

Used only when a Docker engine answers (`docker info`, not just a client on PATH). Each run is its
own compose project on free loopback ports, removed with its volumes at the end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.harness.services import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
# compose.yaml's service names, the host-port variables it reads, and its credentials.
SERVICE = {"postgres": "postgres", "rabbitmq": "rabbitmq", "redis": "redis"}
PORT_VARIABLE = {
    "postgres": "MASSMAILER_POSTGRES_PORT",
    "rabbitmq": "MASSMAILER_RABBITMQ_PORT",
    "redis": "MASSMAILER_REDIS_PORT",
}
URL = {
    "postgres": "postgresql://postgres:massmailer@127.0.0.1:{port}/postgres",
    "rabbitmq": "amqp://massmailer:massmailer@127.0.0.1:{port}//",
    "redis": "redis://127.0.0.1:{port}/0",
}


class ComposeError(RuntimeError):
    """docker compose failed; the message carries its output."""


def unavailable() -> str | None:
    """Why compose cannot be used here, or None when it can."""
    for args, what in (
        (["docker", "info"], "no Docker engine answers `docker info`"),
        (["docker", "compose", "version"], "the docker compose plugin is missing"),
    ):
        try:
            result = subprocess.run(args, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return "docker is not installed" if args == ["docker", "info"] else what
        if result.returncode != 0:
            return what
    return None


class ComposeStack:
    """Some of compose.yaml's backing services in a project of their own."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = kinds
        self.project = f"massmailer-test-{uuid.uuid4().hex[:8]}"
        self.ports = {kind: free_port() for kind in PORT_VARIABLE}
        self.env = {PORT_VARIABLE[kind]: str(port) for kind, port in self.ports.items()}
        self.env["MASSMAILER_RABBITMQ_UI_PORT"] = str(free_port())

    def command(self, *args: str) -> list[str]:
        return ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.command(*args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ComposeError(f"docker compose {' '.join(args)}: {result.stderr.strip()}")
        return result

    def up(self) -> None:
        self.run("up", "--detach", "--wait", *(SERVICE[kind] for kind in self.kinds))

    def down(self) -> None:
        # Nothing more to do at exit if this fails; the project name says what to remove by hand.
        with contextlib.suppress(ComposeError, OSError, subprocess.TimeoutExpired):
            self.run("down", "--volumes", "--remove-orphans", timeout=120)

    def url(self, kind: str) -> str:
        return URL[kind].format(port=self.ports[kind])

    def service(self, kind: str) -> ComposeService:
        return ComposeService(self, kind)

    def rabbitmqctl(self) -> ComposeCtl:
        return ComposeCtl(self.project, dict(self.env))


@dataclass(frozen=True)
class ComposeCtl:
    """rabbitmqctl inside the project's rabbitmq container; plain data for child processes."""

    project: str
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project]
        result = subprocess.run(
            [*command, "exec", "-T", SERVICE["rabbitmq"], "rabbitmqctl", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise ComposeError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()}")
        return result


class ComposeService:
    """One compose service seen as a ServiceInstance (stop, start, restart, kill)."""

    def __init__(self, stack: ComposeStack, kind: str) -> None:
        self.stack = stack
        self.name = SERVICE[kind]
        self.port = stack.ports[kind]
        self.url = stack.url(kind)

    def stop(self) -> None:
        self.stack.run("stop", self.name)

    def start(self) -> None:
        self.stack.run("up", "--detach", "--wait", self.name)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        self.stack.run("kill", "-s", "SIGKILL", self.name)
