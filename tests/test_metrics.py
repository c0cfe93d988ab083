"""Prometheus metrics: counters from real sends through a worker, gauges read at scrape time."""

from __future__ import annotations

import base64
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from massmailer import create_app
from massmailer.config import load_settings
from massmailer.extensions import db
from massmailer.metrics import instruments
from massmailer.metrics.collector import state_metrics
from massmailer.metrics.exporter import start_exporter
from massmailer.metrics.exposition import host_registry, render, token_accepted
from massmailer.metrics.state import OpsState
from massmailer.testing.smtp_server import Rule
from tests import infra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample called name with exactly these labels, or None."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def scrape(url: str, headers: dict | None = None) -> str:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def post(client, auth, to: str) -> int:
    response = client.post(
        "/v1/emails", json={"to": to, "subject": "Hi", "text": "Hello"}, headers=auth
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (250, "2xx"),
        (251, "2xx"),
        (421, "4xx"),
        (451, "4xx"),
        (550, "5xx"),
        (554, "5xx"),
        (None, "none"),
        (354, "none"),
        (0, "none"),
    ],
)
def test_smtp_codes_are_counted_by_class(code, expected):
    assert instruments.code_class(code) == expected


@pytest.mark.parametrize(
    ("header", "token", "accepted"),
    [
        (None, None, True),
        ("Bearer anything", None, True),
        (None, "s3cret", False),
        ("Bearer s3cret", "s3cret", True),
        ("bearer s3cret", "s3cret", True),
        ("Bearer wrong", "s3cret", False),
        ("Basic " + base64.b64encode(b"prometheus:s3cret").decode(), "s3cret", True),
        ("Basic " + base64.b64encode(b"prometheus:wrong").decode(), "s3cret", False),
        ("Basic not-base64!", "s3cret", False),
        ("Token s3cret", "s3cret", False),
    ],
)
def test_the_scrape_token_is_a_bearer_token_or_a_basic_password(header, token, accepted):
    assert token_accepted(header, token) is accepted


def test_state_gauges_cover_each_source_and_leave_out_what_could_not_be_read():
    state = OpsState(
        jobs={"PENDING": 3, "SENT": 5, "FAILED": 1, "CANCELLED": 0},
        queues=None,
        providers={
            "primary": {
                "state": "open",
                "failures": 5,
                "rate_headroom": 2.5,
                "daily_remaining": None,
                "connections_in_use": 1,
                "max_connections": 4,
            }
        },
        errors={"rabbitmq": "ConnectionRefusedError"},
    )
    text = render(_registry_of(state)).decode()

    assert sample(text, "massmailer_jobs", status="SENT") == 5
    assert sample(text, "massmailer_state_source_up", source="rabbitmq") == 0
    assert sample(text, "massmailer_state_source_up", source="postgresql") == 1
    assert "massmailer_queue_messages" not in text
    breaker = "massmailer_provider_breaker_state"
    assert sample(text, breaker, provider="primary", state="open") == 1
    assert sample(text, breaker, provider="primary", state="closed") == 0
    assert sample(text, "massmailer_provider_rate_headroom", provider="primary") == 2.5
    assert sample(text, "massmailer_provider_daily_remaining", provider="primary") is None
    assert sample(text, "massmailer_provider_connections_in_use", provider="primary") == 1


def _registry_of(state: OpsState):
    class Fixed:
        def collect(self):
            return state_metrics(state)

    registry = host_registry(None)
    registry.register(Fixed())
    return registry


def test_without_a_multiprocess_dir_the_process_registry_is_served():
    instruments.count_final("SENT", ["single-process-check"])

    text = render(host_registry(None)).decode()

    assert sample(text, "massmailer_emails_total", status="SENT", provider="single-process-check")


def test_the_worker_exporter_wants_the_token_when_one_is_set(tmp_path):
    port = free_port()
    server = start_exporter("127.0.0.1", port, str(tmp_path), "s3cret")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(f"http://127.0.0.1:{port}/metrics")
        assert refused.value.code == 401
        scrape(f"http://127.0.0.1:{port}/metrics", {"Authorization": "Bearer s3cret"})
    finally:
        server.shutdown()
        server.server_close()


def test_queue_depth_and_job_counts_are_read_at_scrape_time(client, auth):
    # No worker runs: every accepted email waits in the send queue, one message per request.
    for i in range(4):
        post(client, auth, f"reader{i}@example.com")

    text = client.get("/metrics").get_data(as_text=True)

    assert sample(text, "massmailer_queue_messages", queue="emails") == 4
    assert sample(text, "massmailer_queue_consumers", queue="emails") == 0
    assert sample(text, "massmailer_queue_messages", queue="emails.delay.10s") == 0
    assert sample(text, "massmailer_jobs", status="PENDING") == 4
    assert sample(text, "massmailer_jobs", status="SENT") == 0
    for source in ("postgresql", "rabbitmq", "redis"):
        assert sample(text, "massmailer_state_source_up", source=source) == 1
    assert sample(text, "massmailer_provider_breaker_state", provider="primary", state="closed")


def test_metrics_need_the_token_when_one_is_set(env):
    app = create_app(load_settings({**env, "MASSMAILER_METRICS_TOKEN": "s3cret"}))
    client = app.test_client()

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200
    assert "massmailer_jobs" in answer.get_data(as_text=True)
    with app.app_context():
        db.engine.dispose()


def test_with_a_multiprocess_dir_the_web_serves_the_merged_files_and_the_state(env, tmp_path):
    multiproc = tmp_path / "web-prometheus"  # not there yet: created on the first scrape
    app = create_app(load_settings({**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}))

    text = app.test_client().get("/metrics").get_data(as_text=True)
    with app.app_context():
        db.engine.dispose()

    assert multiproc.is_dir()
    assert "python_gc_objects_collected_total" not in text  # not this process's own registry
    assert sample(text, "massmailer_state_source_up", source="postgresql") == 1


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_host_exposes_counts_of_its_real_sends(client, auth, env, smtp_server, tmp_path):
    smtp_server.set_rules([Rule("RCPT", 550, "5.1.1 No such user", match="gone@")])
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    port = free_port()
    worker_env = {
        **env,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "MASSMAILER_WORKER_METRICS_PORT": str(port),
        "MASSMAILER_WORKER_METRICS_ADDR": "127.0.0.1",
    }
    for i in range(5):
        post(client, auth, f"reader{i}@example.com")
    post(client, auth, "gone@example.com")
    url = f"http://127.0.0.1:{port}/metrics"

    with infra.running_worker(worker_env, concurrency=2):
        text = infra.wait_until(
            lambda: _when_counted(scrape(url)), 30, message="the worker's metrics to count 6 jobs"
        )
        web = client.get("/metrics").get_data(as_text=True)

    assert sample(text, "massmailer_emails_total", status="SENT", provider="primary") == 5
    assert sample(text, "massmailer_emails_total", status="FAILED", provider="primary") == 1
    attempts = "massmailer_attempts_total"
    assert sample(text, attempts, provider="primary", classification="sent", code_class="2xx") == 5
    bounced = {"classification": "permanent_recipient", "code_class": "5xx"}
    assert sample(text, attempts, provider="primary", **bounced) == 1
    duration = "massmailer_smtp_send_duration_seconds_count"
    assert sample(text, duration, provider="primary") == 6
    assert sample(text, "massmailer_accept_to_sent_seconds_count", priority="0") == 5
    # The prefork children wrote the figures; the main process merged their files.
    assert list(multiproc.glob("counter_*.db"))
    assert sample(web, "massmailer_jobs", status="SENT") == 5
    assert sample(web, "massmailer_jobs", status="FAILED") == 1
    assert sample(web, "massmailer_queue_messages", queue="emails") == 0


def _when_counted(text: str) -> str | None:
    sent = sample(text, "massmailer_emails_total", status="SENT", provider="primary") or 0
    failed = sample(text, "massmailer_emails_total", status="FAILED", provider="primary") or 0
    return text if sent + failed >= 6 else None
