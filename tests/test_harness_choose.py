"""How the harness picks each service's source, and the one message when none is left."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import infra
from tests.harness import choose, compose
from tests.harness import services as servers


@pytest.fixture
def nothing_available(monkeypatch):
    """No usable machine server, no packages, no Docker: every source fails for its own reason."""
    monkeypatch.setattr(choose, "_machine", lambda kind, reasons: reasons.append("refused"))
    monkeypatch.setattr(servers, "missing_binaries", lambda kind: [f"{kind}-server"])
    monkeypatch.setattr(compose, "unavailable", lambda: "no Docker engine answers `docker info`")


def test_without_any_source_the_message_lists_what_to_install(nothing_available):
    with pytest.raises(choose.ServicesUnavailable) as caught:
        choose.choose("auto")

    message = str(caught.value)
    assert message.startswith("MassMailer's integration tests need PostgreSQL, RabbitMQ, Redis:")
    assert "apt-get install postgresql rabbitmq-server redis-server" in message
    assert "RabbitMQ: refused; not installed (rabbitmq-server not found); no Docker" in message


def test_own_mode_never_probes_the_machine(nothing_available, monkeypatch):
    monkeypatch.setattr(choose, "_machine", lambda kind, reasons: pytest.fail("probed"))

    with pytest.raises(choose.ServicesUnavailable) as caught:
        choose.choose("own")

    assert "(MASSMAILER_TEST_SERVICES=own allowed only that source.)" in str(caught.value)
    assert "Docker" not in str(caught.value).split("Any one")[0]  # compose was not tried


def test_an_unknown_mode_is_refused():
    with pytest.raises(choose.ServicesUnavailable, match="expected one of auto, machine"):
        choose.choose("docker")


def test_a_child_process_inherits_the_choice_instead_of_starting_servers():
    chosen = infra.services()  # the run's choice, exported to the environment
    code = (
        "from tests.harness import choose; s = choose.current();"
        "print(s.postgres.url, s.rabbitmq.url, s.redis.url, s.redis.instance)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=infra.ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [chosen.postgres.url, chosen.rabbitmq.url, chosen.redis.url, "None"]


@pytest.mark.integration
def test_the_run_stops_at_once_with_one_message_and_no_traceback():
    closed = servers.free_port()
    env = {k: v for k, v in os.environ.items() if k != choose.INHERIT_VARIABLE}
    env.update(
        MASSMAILER_TEST_SERVICES="machine",
        MASSMAILER_TEST_PG_ADMIN=f"postgresql://postgres@127.0.0.1:{closed}/postgres",
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/test_health.py"],
        cwd=infra.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert "MassMailer's integration tests need PostgreSQL:" in output
    assert "apt-get install postgresql" in output
    assert "Traceback" not in output
    assert output.count("MassMailer's integration tests need") == 1
    assert "no tests ran" in output  # stopped before the first test, not one error per test
