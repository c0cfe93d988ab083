"""Bind Celery to the Flask app: tasks run in an app context; queues are declared at start-up."""

from __future__ import annotations

import logging
import os

from celery import Celery, Task
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutting_down,
)
from flask import Flask

from massmailer import logs
from massmailer.config import OpsSettings
from massmailer.delivery import shutdown
from massmailer.queues import declare_topology
from massmailer.resources import celery_config

logger = logging.getLogger(__name__)


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for this Flask app and store it in app.extensions["celery"]."""
    settings = app.extensions["massmailer.settings"]

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask, include=["massmailer.tasks"])
    celery_app.config_from_object(celery_config())  # the top-level celeryconfig.py
    celery_app.conf.broker_url = settings.broker_url
    celery_app.conf.beat_schedule["sweep"]["schedule"] = settings.sweep_interval_seconds
    celery_app.conf.beat_schedule["webhooks"]["schedule"] = settings.webhook_dispatch_seconds
    celery_app.conf.task_time_limit = settings.task_time_limit_seconds
    celery_app.conf.task_soft_time_limit = settings.soft_time_limit_seconds
    celery_app.set_default()
    app.extensions["celery"] = celery_app

    def declare_on_start(sender: object = None, **_: object) -> None:
        with celery_app.connection_for_write() as connection:
            declare_topology(connection)
        logger.info("event=topology_declared")

    worker_init.connect(declare_on_start, weak=False)
    _connect_shutdown_hooks()
    _connect_ops_hooks(settings.ops)
    return celery_app


def _connect_shutdown_hooks() -> None:
    """SIGTERM lets sends in flight finish, in every pool child, whoever received it."""
    pool_child = [False]

    def in_child(**_: object) -> None:
        pool_child[0] = True
        shutdown.mark_pool_child()

    def before_task(**_: object) -> None:
        shutdown.install_in_pool_child(pool_child[0])

    def forward(sender: object = None, **_: object) -> None:
        # The parent's warm shutdown waits for running tasks; tell them to hurry.
        import billiard.process

        shutdown.STOPPING.set()  # the threads and solo pools send in this very process
        shutdown.forward_to_children([c.pid for c in billiard.process.active_children()])

    worker_process_init.connect(in_child, weak=False, dispatch_uid="massmailer.pool_child")
    task_prerun.connect(before_task, weak=False, dispatch_uid="massmailer.sigterm_child")
    worker_shutting_down.connect(forward, weak=False, dispatch_uid="massmailer.sigterm_forward")


def exporter_allowed(ops: OpsSettings) -> bool:
    """Whether the worker host's /metrics may be served: with a token, or declared public."""
    return bool(ops.metrics_token) or ops.metrics_public


def _connect_ops_hooks(ops: OpsSettings) -> None:
    # One receiver each however many apps a process builds (tests build many).
    task_prerun.connect(logs.bind_task, weak=False, dispatch_uid="massmailer.bind_task")
    task_postrun.connect(logs.unbind_task, weak=False, dispatch_uid="massmailer.unbind_task")

    def start_metrics_exporter(sender: object = None, **_: object) -> None:
        if ops.metrics_multiproc_dir:
            # Before the pool forks: children write their counters there from the first send.
            os.makedirs(ops.metrics_multiproc_dir, exist_ok=True)
        if ops.worker_metrics_port and not exporter_allowed(ops):
            # Like the web's /metrics: closed until a token is set (or it is declared public).
            logger.warning(
                "event=worker_metrics_disabled reason=MASSMAILER_METRICS_TOKEN_unset port=%d",
                ops.worker_metrics_port,
            )
        elif ops.worker_metrics_port:
            from massmailer.metrics.exporter import start_exporter

            start_exporter(
                ops.worker_metrics_addr,
                ops.worker_metrics_port,
                ops.metrics_multiproc_dir,
                ops.metrics_token,
            )
            logger.info(
                "event=metrics_exporter_started addr=%s port=%d multiprocess=%s",
                ops.worker_metrics_addr,
                ops.worker_metrics_port,
                bool(ops.metrics_multiproc_dir),
            )

    def forget_dead_child(pid: int | None = None, **_: object) -> None:
        # Drop the child's live gauges; its counters stay in the merged totals.
        if ops.metrics_multiproc_dir and pid:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, ops.metrics_multiproc_dir)

    worker_init.connect(start_metrics_exporter, weak=False)
    worker_process_shutdown.connect(forget_dead_child, weak=False)
