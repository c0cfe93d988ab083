"""The Procfile's processes for chaos runs: workers (tests.infra) and a separate `celery beat`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tests import infra

_PROCFILE_CONCURRENCY = re.compile(r"^worker:.*--concurrency=\$\{WORKER_CONCURRENCY:-(\d+)\}", re.M)


def procfile_concurrency() -> int:
    """The worker's default concurrency in the Procfile, so the cases run what is deployed."""
    found = _PROCFILE_CONCURRENCY.search((infra.ROOT / "Procfile").read_text())
    if found is None:
        raise RuntimeError(
            "the Procfile's worker line has no --concurrency=${WORKER_CONCURRENCY:-N}"
        )
    return int(found.group(1))


# Debian's faketime package puts it under the architecture's library directory.
LIBFAKETIMES = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))


class BeatProcess:
    """`celery -A wsgi:celery beat`, as the Procfile runs it: schedules the sweep."""

    def __init__(self, env: Mapping[str, str]) -> None:
        infra.OUTPUT_DIR.mkdir(exist_ok=True)
        run = infra.run_id()
        self.log_path = infra.OUTPUT_DIR / f"beat-{run}.log"
        self.args = [
            sys.executable,
            *("-m", "celery", "-A", "wsgi:celery", "beat", "--loglevel=INFO"),
            f"--schedule={infra.OUTPUT_DIR / ('beat-schedule-' + run)}",
        ]
        self.env = dict(env)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BeatProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args,
            cwd=infra.ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while b"beat: Starting" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"beat did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def clock_ahead(env: Mapping[str, str], seconds: int) -> dict[str, str]:
    """The environment of a process whose wall clock runs `seconds` ahead (libfaketime).

    Only this process and its children see the shifted clock; the machine's clock is untouched.
    CLOCK_MONOTONIC moves by the same constant, which no interval notices. (Debian's libfaketime
    with FAKETIME_DONT_FAKE_MONOTONIC=1 makes every time.sleep() fail with EINVAL, since Python
    sleeps with an absolute clock_nanosleep: that option would test the tool, not the worker.)
    """
    if not LIBFAKETIMES:
        raise RuntimeError("libfaketime is missing: apt-get install -y faketime")
    return {**env, "LD_PRELOAD": str(LIBFAKETIMES[0]), "FAKETIME": f"+{seconds}s"}
