"""The operators' Grafana dashboard and Prometheus alerts: valid PromQL, alerts that fire on the
series they are written for, and only metric names that /metrics serves after real sends."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from massmailer import create_app
from massmailer.config import load_settings
from massmailer.extensions import db
from massmailer.testing.smtp_server import Rule
from tests import infra
from tests.conftest import provider_entry

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "massmailer.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bmassmailer_[a-z0-9_]+\b")
# Grafana's variables, replaced by what Prometheus would get, so promtool can parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$provider": ".*"}


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return queries


def alert_rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def metric_names(queries: list[str]) -> set[str]:
    return {name for query in queries for name in METRIC.findall(query)}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool is needed (Debian: apt-get install --no-install-recommends prometheus)"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_dashboard_covers_what_operators_watch():
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in (
        "Emails finished by status and provider",
        "Attempts by SMTP reply class",
        "Queue depths",
        "Breaker states",
        "Rate headroom",
        "Accept-to-sent latency by priority",
    ):
        assert wanted in titles


def test_every_dashboard_query_is_valid_promql(tmp_path):
    rules = []
    for i, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values")):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        rules.append({"record": f"massmailer:dashboard_query_{i}", "expr": query})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )

    checked = promtool("check", "rules", "queries.yml", cwd=tmp_path)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def test_the_alert_rules_are_valid_and_fire_on_the_series_they_are_written_for():
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "MassMailerProviderBreakerOpen",
        "MassMailerQueueGrowingWithoutSends",
        "MassMailerFailedShareHigh",
    } <= names

    checked = promtool("check", "rules", "alerts.yml", cwd=ALERTS.parent)
    tested = promtool("test", "rules", "alerts.test.yml", cwd=ALERTS.parent)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.fixture
def providers(smtp_server) -> list[dict]:
    # Limited, so the rate headroom and daily cap gauges are served too.
    return [
        provider_entry(
            "primary", smtp_server, rate_per_second=500, rate_per_day=100000, max_connections=4
        )
    ]


def served_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.integration
@pytest.mark.slow
def test_every_metric_the_dashboard_and_alerts_use_is_served_after_real_sends(
    client, auth, env, smtp_server, tmp_path
):
    smtp_server.set_rules(
        [
            Rule("RCPT", 550, "5.1.1 No such user", match="gone@"),
            Rule("RCPT", 451, "4.3.0 Try again later", match="later@"),
        ]
    )
    multiproc = tmp_path / "prometheus"  # shared by the worker and the web app, as on one host
    multiproc.mkdir()
    host_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    for to in ["reader1", "reader2", "reader3", "gone", "later"]:
        response = client.post(
            "/v1/emails",
            json={"to": f"{to}@example.com", "subject": "Hi", "text": "Hi"},
            headers=auth,
        )
        assert response.status_code == 202, response.get_json()
    web = create_app(load_settings(host_env))

    def scraped() -> str | None:
        text = web.test_client().get("/metrics").get_data(as_text=True)
        finished = {
            (s.labels.get("status"), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "massmailer_emails_total"
        }
        counted = {("SENT", 3.0), ("FAILED", 1.0)} <= finished
        return text if counted and "massmailer_retries_total" in served_names(text) else None

    with infra.running_worker(host_env, concurrency=2):
        text = infra.wait_until(scraped, 60, message="sends, a bounce and a retry to be counted")
    with web.app_context():
        db.engine.dispose()

    used = metric_names(dashboard_queries()) | metric_names([r["expr"] for r in alert_rules()])
    assert used, "no metric names found in the dashboard and alerts"
    assert used - served_names(text) == set()
