"""pytest plugin: the tests bring their own PostgreSQL, RabbitMQ and Redis (see choose.py).

Services are chosen when a test first needs one (tests/infra.py calls choose.services()), so
unit-only runs start nothing. If none can be had, the run stops at once with one message listing
what to install, not a traceback per test. Whatever the harness started stops with the session.
"""

from __future__ import annotations

import os

import pytest

from tests.harness import choose

_used = {"description": ""}


def pytest_configure(config: pytest.Config) -> None:
    choose.on_unavailable = _stop_the_run


def _stop_the_run(message: str) -> None:
    pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_report_header(config: pytest.Config) -> str:
    mode = os.environ.get("MASSMAILER_TEST_SERVICES", "auto")
    return f"services: MASSMAILER_TEST_SERVICES={mode}, chosen when a test first needs one"


def pytest_sessionfinish(session: pytest.Session) -> None:
    chosen = choose.chosen()
    if chosen is not None:
        _used["description"] = chosen.describe()
    choose.close()


def pytest_terminal_summary(terminalreporter) -> None:
    if _used["description"]:
        terminalreporter.write_line(f"services used: {_used['description']}")
