"""MassMailer: bulk email through several SMTP providers (Flask, Celery on RabbitMQ, PostgreSQL)."""

from __future__ import annotations

from flask import Flask

from massmailer.config import Settings, settings_from_environment
from massmailer.extensions import db, migrate
from massmailer.resources import migrations_dir

MIGRATIONS_DIR = migrations_dir()  # the top-level migrations/, also when installed from a wheel


def create_app(settings: Settings | None = None, *, publisher: object | None = None) -> Flask:
    """Build the app: the one place where settings, database, queue and API are wired."""
    from massmailer import models  # noqa: F401  (registers the tables)
    from massmailer.api import register_api
    from massmailer.cli import register_cli

    settings = settings or settings_from_environment()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = settings.database_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = _engine_options(settings.database_url)
    app.config["MAX_CONTENT_LENGTH"] = 2 * settings.max_body_bytes + 65536
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["massmailer.settings"] = settings
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    if publisher is None and settings.broker_url:
        from massmailer.publisher import CeleryPublisher
        from massmailer.worker import celery_init_app

        publisher = CeleryPublisher(celery_init_app(app))
    app.extensions["massmailer.publisher"] = publisher
    register_api(app)
    register_cli(app)
    return app


def _engine_options(url: str) -> dict:
    if url.startswith("postgresql"):
        # Batch the per-row outcome UPDATEs of a chunk into few round trips. A threads-pool
        # worker runs dozens of chunks at once, each holding a connection only while it writes:
        # a pool of 10 plus 40 overflow keeps them from queueing on the pool.
        return {
            "pool_pre_ping": True,
            "executemany_mode": "values_plus_batch",
            "pool_size": 10,
            "max_overflow": 40,
        }
    if url.startswith("sqlite"):
        # The demo writes from several threads; SQLite has one writer at a time, so the others
        # wait for it (5 s by default, short on a busy 2-core machine) rather than fail.
        return {"connect_args": {"timeout": 30}}
    return {}
