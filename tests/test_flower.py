"""Flower runs only behind basic auth taken from the environment, never open."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests import infra

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_of(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flower_refuses_to_start_without_basic_auth(env):
    flower_env = {k: v for k, v in env.items() if k != "FLOWER_BASIC_AUTH"}

    result = subprocess.run(
        [sys.executable, "-m", "massmailer.flower"],
        cwd=infra.ROOT,
        env=flower_env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH is not set" in result.stderr


@pytest.mark.slow
def test_flower_answers_401_without_credentials_and_200_with_them(env):
    port = free_port()
    flower_env = {
        **env,
        "FLOWER_BASIC_AUTH": "ops:flower-s3cret",
        "FLOWER_ADDRESS": "127.0.0.1",  # Flower reads its options from FLOWER_* variables
        "PORT": str(port),
    }
    log = infra.OUTPUT_DIR / f"flower-{infra.run_id()}.log"
    infra.OUTPUT_DIR.mkdir(exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "massmailer.flower"],
            cwd=infra.ROOT,
            env=flower_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    good = {"Authorization": "Basic " + base64.b64encode(b"ops:flower-s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}
    try:
        infra.wait_until(lambda: _answers(url, proc), 30, message="Flower to listen")
        assert status_of(url) == 401
        assert status_of(url, bad) == 401
        assert status_of(url, good) == 200
        assert status_of(f"http://127.0.0.1:{port}/tasks", good) == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # The password came from the environment: it is on no command line and in no log line.
    assert "flower-s3cret" not in " ".join(proc.args)
    assert "flower-s3cret" not in log.read_text(errors="replace")


def _answers(url: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"flower exited with {proc.returncode}")
    try:
        return status_of(url) in (200, 401)
    except OSError:
        time.sleep(0.2)
        return False
