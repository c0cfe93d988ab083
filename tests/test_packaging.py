"""MassMailer installs as a package: explicit packages, ranges that admit the pinned set, the
top-level migrations/ and celeryconfig.py found in a checkout and in a wheel, and a `massmailer`
command that works from a virtualenv outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from massmailer import resources

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned() -> dict[str, str]:
    """requirements.txt's runtime pins (the lines before the tests' section), by lower-case name."""
    runtime = (ROOT / "requirements.txt").read_text().split("# Tests and tooling")[0]
    pins = {}
    for line in runtime.splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_package_under_massmailer_is_listed():
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "massmailer").rglob("__init__.py")
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])

    assert on_disk - listed == set()
    assert listed - on_disk == {"massmailer._project"}  # the mapped repository root


def test_the_declared_ranges_admit_every_pinned_runtime_version():
    declared = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
    pins = pinned()
    for requirement in declared:
        name = requirement.name.lower().replace("_", "-")
        if name in pins:
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]}"
    assert set(pins) <= {r.name.lower().replace("_", "-") for r in declared}


def test_a_checkout_finds_the_top_level_migrations_and_celeryconfig():
    assert Path(resources.migrations_dir()) == ROOT / "migrations"
    config = resources.celery_config()
    assert Path(config.__file__).resolve() == ROOT / "celeryconfig.py"
    assert config.task_acks_late is True


def _copy_source(dest: Path) -> Path:
    """The checkout's files without build leftovers, so building never writes into the checkout."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "test-output", ".*cache"
    )
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_the_wheel_gives_a_massmailer_command_outside_the_checkout(tmp_path):
    source = _copy_source(tmp_path / "source")
    run = dict(capture_output=True, text=True, check=True, timeout=300)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), "."],
        cwd=source,
        **run,
    )
    [wheel] = tmp_path.glob("massmailer-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    # The dependencies come from this interpreter's site-packages (the pinned set), and
    # --no-index fails the install if a declared range does not admit what is installed.
    site = Path(sysconfig.get_paths(vars={"base": str(venv)})["purelib"])
    (site / "pinned-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel)], **run)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "URL" not in k}
    env = {k: v for k, v in env.items() if not k.startswith("MASSMAILER_")}
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import massmailer, massmailer.resources as r;"
            "print(massmailer.__file__); print(r.migrations_dir())",
        ],
        cwd=elsewhere,
        env=env,
        **run,
    ).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where

    command = venv / "bin" / "massmailer"
    helped = subprocess.run([str(command), "--help"], cwd=elsewhere, env=env, **run).stdout
    for name in ("demo", "status", "api-key", "providers", "jobs", "db"):
        assert f"  {name} " in helped

    demo = subprocess.run(
        [str(command), "demo", "--count", "20", "--flaky-share", "0", "--json"],
        cwd=elsewhere,
        env=env,
        **run,
    )
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["status"]["SENT"] == 20, summary
