"""The Dockerfile and compose.yaml run the Procfile's processes, checked without Docker."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from massmailer.config import load_settings
from tests.harness import compose as harness

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
BACKING = {"postgres", "rabbitmq", "redis"}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def with_defaults(value: str) -> str:
    """Resolve compose's ${VAR:-default} the way it does with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_runs_every_procfile_process_as_a_service_of_that_name():
    services = compose()["services"]
    app_services = {name for name, s in services.items() if s.get("image") == "massmailer:local"}
    processes = {name for name in app_services if len(services[name]["command"]) == 1}

    assert processes == set(procfile())
    for name in processes:
        assert services[name]["command"] == [name]


def test_compose_has_the_backing_services_with_health_checks():
    services = compose()["services"]

    assert set(services) >= BACKING
    assert "management" in services["rabbitmq"]["image"]
    long_running = set(services) - {"release"}
    assert {name for name in long_running if "healthcheck" not in services[name]} == set()
    for name in set(procfile()) - {"release"}:
        assert services[name]["depends_on"]["release"] == {
            "condition": "service_completed_successfully"
        }


@pytest.mark.parametrize("process", ["web", "worker", "beat", "flower", "release"])
def test_compose_gives_each_process_a_valid_configuration(process):
    service = compose()["services"][process]
    env = {key: with_defaults(str(value)) for key, value in service["environment"].items()}

    settings = load_settings(env)  # raises ConfigError naming a bad setting

    assert settings.providers and settings.redis_url
    assert settings.database_url.startswith("postgresql+psycopg2://postgres:")


def test_the_dockerfile_is_one_slim_non_root_image_for_the_procfile_processes():
    text = dockerfile()
    label = re.search(r'io\.massmailer\.processes="([^"]+)"', text)

    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert label and set(label.group(1).split()) == set(procfile())
    assert re.search(r"^USER (?!root\b)\S+", text, re.M)
    assert "requirements.txt" in text and "pip install -r" in text
    assert '"/app/deploy/docker-entrypoint.sh"' in text
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


def _fake_programs(bin_dir: Path) -> dict[str, str]:
    """Programs that print how they were called instead of running."""
    bin_dir.mkdir()
    for program in ("gunicorn", "celery", "flask", "python"):
        path = bin_dir / program
        path.write_text(f'#!/bin/sh\necho "{program} $*"\n')
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PORT": "8123"}


@pytest.mark.parametrize("process", sorted(procfile()))
def test_the_entrypoint_runs_the_procfile_line_the_command_names(process, tmp_path):
    env = _fake_programs(tmp_path / "bin")

    ran = subprocess.run(
        ["sh", str(ENTRYPOINT), process], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()

    expected = subprocess.run(
        ["sh", "-c", f"echo {procfile()[process]}"], env=env, capture_output=True, text=True
    ).stdout.strip()
    assert ran == expected  # the same program and arguments, ${PORT:-…} expanded
    if process == "web":
        assert "--bind 0.0.0.0:8123" in ran


def test_the_entrypoint_runs_any_other_command_as_given(tmp_path):
    ran = subprocess.run(
        ["sh", str(ENTRYPOINT), "echo", "massmailer", "status"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout == "massmailer status\n"


def test_the_tests_harness_and_compose_agree_on_ports_and_credentials():
    # Docker is not available here, so check what tests/harness/compose.py relies on.
    services = compose()["services"]
    for kind, variable in harness.PORT_VARIABLE.items():
        service = services[harness.SERVICE[kind]]
        assert any(f"${{{variable}:-" in port for port in service["ports"]), kind
        assert "healthcheck" in service  # `up --wait` waits for it
    postgres = urlsplit(harness.URL["postgres"])
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == postgres.password
    rabbit = urlsplit(harness.URL["rabbitmq"])
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"] == rabbit.username
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == rabbit.password
    assert any("MASSMAILER_RABBITMQ_UI_PORT" in port for port in services["rabbitmq"]["ports"])
