"""Bind Celery to the Flask app: tasks run in an app context; queues are declared at start-up."""

from __future__ import annotations

import logging

from celery import Celery, Task
from celery.signals import worker_init
from flask import Flask

from massmailer.queues import declare_topology

logger = logging.getLogger(__name__)


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for this Flask app and store it in app.extensions["celery"]."""
    settings = app.extensions["massmailer.settings"]

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask, include=["massmailer.tasks"])
    celery_app.config_from_object("celeryconfig")
    celery_app.conf.broker_url = settings.broker_url
    celery_app.conf.beat_schedule["sweep"]["schedule"] = settings.sweep_interval_seconds
    celery_app.conf.task_time_limit = settings.task_time_limit_seconds
    celery_app.conf.task_soft_time_limit = settings.soft_time_limit_seconds
    celery_app.set_default()
    app.extensions["celery"] = celery_app

    def declare_on_start(sender: object = None, **_: object) -> None:
        with celery_app.connection_for_write() as connection:
            declare_topology(connection)
        logger.info("event=topology_declared")

    worker_init.connect(declare_on_start, weak=False)
    return celery_app
