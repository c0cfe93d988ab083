"""Gauges read at scrape time, so they hold for the whole fleet however many processes run."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from massmailer.metrics.state import OpsState

BREAKER_STATES = ("closed", "open", "half_open")
SOURCES = ("postgresql", "rabbitmq", "redis")


class StateCollector(Collector):
    """Read the shared state on each collect() and expose it as gauges."""

    def __init__(self, read: Callable[[], OpsState]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        return state_metrics(self._read())


def state_metrics(state: OpsState) -> list[Metric]:
    """Turn an OpsState into gauge families; a part that could not be read is left out."""
    families = [_sources(state)]
    if state.jobs is not None:
        jobs = GaugeMetricFamily(
            "massmailer_jobs", "Jobs by status (PostgreSQL)", labels=["status"]
        )
        for status, count in state.jobs.items():
            jobs.add_metric([status], count)
        families.append(jobs)
    if state.queues is not None:
        families.extend(_queues(state))
    if state.providers is not None:
        families.extend(_providers(state.providers))
    return families


def _sources(state: OpsState) -> GaugeMetricFamily:
    up = GaugeMetricFamily(
        "massmailer_state_source_up",
        "1 when the scrape could read this source, 0 when it could not",
        labels=["source"],
    )
    for source in SOURCES:
        up.add_metric([source], 0 if source in state.errors else 1)
    return up


def _queues(state: OpsState) -> list[Metric]:
    messages = GaugeMetricFamily(
        "massmailer_queue_messages", "Messages ready in each queue (RabbitMQ)", labels=["queue"]
    )
    consumers = GaugeMetricFamily(
        "massmailer_queue_consumers", "Consumers of each queue (RabbitMQ)", labels=["queue"]
    )
    for queue in state.queues or ():
        messages.add_metric([queue.name], queue.messages)
        consumers.add_metric([queue.name], queue.consumers)
    return [messages, consumers]


def _providers(providers: dict[str, dict]) -> list[Metric]:
    labels = ["provider"]
    breaker = GaugeMetricFamily(
        "massmailer_provider_breaker_state",
        "1 for the provider's current circuit breaker state",
        labels=["provider", "state"],
    )
    failures = GaugeMetricFamily(
        "massmailer_provider_breaker_failures",
        "Provider faults within the breaker window",
        labels=labels,
    )
    headroom = GaugeMetricFamily(
        "massmailer_provider_rate_headroom",
        "Sends the provider's rate limit admits right now (only rate-limited providers)",
        labels=labels,
    )
    configured = GaugeMetricFamily(
        "massmailer_provider_rate_configured",
        "The provider's configured rate limit, sends per second (only rate-limited providers)",
        labels=labels,
    )
    effective = GaugeMetricFamily(
        "massmailer_provider_rate_effective",
        "The rate in force after throttle replies cut it (AIMD), sends per second; absent when "
        "unlimited",
        labels=labels,
    )
    daily = GaugeMetricFamily(
        "massmailer_provider_daily_remaining",
        "Sends left today under the provider's daily cap (only capped providers)",
        labels=labels,
    )
    in_use = GaugeMetricFamily(
        "massmailer_provider_connections_in_use", "SMTP sessions held fleet-wide", labels=labels
    )
    cap = GaugeMetricFamily(
        "massmailer_provider_connections_max", "The provider's session cap", labels=labels
    )
    for name, snap in providers.items():
        for state in BREAKER_STATES:
            breaker.add_metric([name, state], 1 if snap["state"] == state else 0)
        failures.add_metric([name], snap["failures"])
        if snap.get("rate_headroom") is not None:
            headroom.add_metric([name], snap["rate_headroom"])
        if snap.get("rate_per_second") is not None:
            configured.add_metric([name], snap["rate_per_second"])
        if snap.get("effective_rate") is not None:
            effective.add_metric([name], snap["effective_rate"])
        if snap.get("daily_remaining") is not None:
            daily.add_metric([name], snap["daily_remaining"])
        in_use.add_metric([name], snap["connections_in_use"])
        cap.add_metric([name], snap["max_connections"])
    return [breaker, failures, headroom, configured, effective, daily, in_use, cap]
