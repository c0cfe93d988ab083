"""Run the embedded demo: SQLite, the table as queue, local providers, the real API and delivery."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from flask import Flask

from massmailer import apikeys, create_app
from massmailer.config import Settings, load_settings
from massmailer.delivery.providers.base import ProviderConfig
from massmailer.demo import database
from massmailer.demo.progress import ProgressBar, Tally
from massmailer.demo.providers import (
    LocalProvider,
    external_providers,
    start_local_providers,
    stop_providers,
)
from massmailer.demo.summary import Summary, collect
from massmailer.demo.table_queue import TablePublisher, TableQueue
from massmailer.demo.traffic import plan, post_all
from massmailer.demo.workers import WorkerThreads
from massmailer.extensions import db
from massmailer.services import build_services

# Small chunks keep a high-priority job's wait short: it goes out once a worker finishes its chunk.
DEMO_CHUNK_SIZE = 10
FINISH_POLL_SECONDS = 0.05
# MAIL FROM carries the job id (VERP), as in production.
DEMO_BOUNCE_ADDRESS = "bounces@massmailer.localhost"


class DemoFailed(Exception):
    """The demo could not finish: a worker crashed or the time ran out."""


DEMO_RETRY_TIERS_SECONDS = (1, 2, 5, 10)


@dataclass(frozen=True)
class DemoOptions:
    count: int = 2000
    flaky_share: float = 0.2
    high_share: float = 0.1
    db_path: Path | None = None
    workers: int = 3
    provider_ports: tuple[int, ...] = ()
    timeout_seconds: float = 300.0
    seed: int = 0


def demo_settings(database_url: str, providers: list[ProviderConfig]) -> Settings:
    """Settings from an empty environment, so no stray variable can point the demo elsewhere."""
    return replace(
        load_settings({}, require_services=False),
        database_url=database_url,
        providers=tuple(providers),
        bounce_address=DEMO_BOUNCE_ADDRESS,
        chunk_size=DEMO_CHUNK_SIZE,
        # The job table is the demo's queue, so retries need no RabbitMQ tier: short waits keep
        # the run brief while still showing backoff.
        retry_tiers_seconds=DEMO_RETRY_TIERS_SECONDS,
        backoff_base_seconds=1.0,
    )


def run_demo(options: DemoOptions, progress_stream: TextIO) -> Summary:
    """Send options.count messages through the API and the delivery code; return the summary."""
    with database.database_file(options.db_path) as path:
        if options.provider_ports:
            providers = external_providers(list(options.provider_ports))
        else:
            providers = start_local_providers(options.flaky_share, options.seed)
        try:
            return _run(options, path, providers, progress_stream)
        finally:
            stop_providers(providers)


def _run(
    options: DemoOptions, path: Path, providers: list[LocalProvider], progress_stream: TextIO
) -> Summary:
    settings = demo_settings(database.url_for(path), [p.config for p in providers])
    queue = TableQueue(settings.chunk_size)
    publisher = TablePublisher(queue)
    app = create_app(settings, publisher=publisher)
    database.prepare(app)
    with app.app_context():
        api_key = apikeys.create(db.session, "demo")
    services = build_services(settings, publisher)  # no REDIS_URL: in-process limits and breakers
    tally = Tally()
    workers = WorkerThreads(app, services, queue, options.workers, tally.add_report)
    progress = ProgressBar(options.count, tally, progress_stream)

    def accepted(count: int) -> None:
        tally.accepted_some(count)
        _stop_if_crashed(workers)  # rather than post thousands more that nobody will send

    started = time.monotonic()
    workers.start()
    progress.start()
    try:
        requests = plan(options.count, options.high_share, settings.max_batch_recipients)
        post_all(app, api_key, requests, accepted)
        _wait_until_finished(tally, options, workers, started)
        elapsed = time.monotonic() - started
    finally:
        workers.stop()
        progress.stop()
        services.pools.close_all()
    return _collect(app, providers, elapsed, path, kept=options.db_path is not None)


def _wait_until_finished(
    tally: Tally, options: DemoOptions, workers: WorkerThreads, started: float
) -> None:
    while not tally.finished(options.count):
        _stop_if_crashed(workers)
        if time.monotonic() - started > options.timeout_seconds:
            raise DemoFailed(f"not finished after {options.timeout_seconds:g}s")
        time.sleep(FINISH_POLL_SECONDS)


def _stop_if_crashed(workers: WorkerThreads) -> None:
    if workers.errors:
        raise DemoFailed(f"a worker thread crashed: {workers.errors[0]!r}")


def _collect(
    app: Flask, providers: list[LocalProvider], elapsed: float, path: Path, kept: bool
) -> Summary:
    with app.app_context():
        try:
            return collect(db.session, providers, elapsed, str(path), kept)
        finally:
            db.session.remove()
            db.engine.dispose()  # close the file before its directory is removed
