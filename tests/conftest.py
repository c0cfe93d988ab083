"""Shared fixtures: real PostgreSQL, RabbitMQ, Redis and SMTP servers, isolated per test run."""

from __future__ import annotations

import uuid

import pytest
from flask_migrate import upgrade
from sqlalchemy import text

from massmailer import create_app, services
from massmailer.apikeys import create as create_api_key
from massmailer.config import load_settings
from massmailer.extensions import db
from massmailer.queues import ALL_QUEUES
from massmailer.testing.smtp_server import FaultSMTPServer
from tests import infra

# Where PostgreSQL, RabbitMQ and Redis come from (the machine's, throwaway ones, or compose).
pytest_plugins = ["tests.harness.plugin"]


@pytest.fixture(scope="session")
def run_id() -> str:
    return infra.run_id()


@pytest.fixture(scope="session")
def database_url(run_id):
    name = f"mmtest_{run_id}"
    url = infra.create_database(name)
    yield url
    infra.drop_database(name)


@pytest.fixture(scope="session")
def broker_url(run_id):
    vhost = f"mmtest_{run_id}"
    url = infra.create_vhost(vhost)
    yield url
    infra.delete_vhost(vhost)


@pytest.fixture(scope="session")
def redis_prefix(run_id):
    prefix = f"mmtest:{run_id}:"
    yield prefix
    infra.delete_redis_prefix(prefix)


@pytest.fixture
def prefix():
    """Redis keys of this test alone: limits, slots and breakers built on it share nothing."""
    prefix = f"mmtest:{uuid.uuid4().hex}:"
    yield prefix
    infra.delete_redis_prefix(prefix)


@pytest.fixture(scope="session")
def migrated(database_url, broker_url, redis_prefix):
    """Build the schema from the migrations (never from create_all), once per run."""
    env = infra.service_env(
        database_url=database_url, broker_url=broker_url, redis_prefix=redis_prefix, providers=[]
    )
    app = create_app(load_settings(env))
    with app.app_context():
        upgrade()
    return database_url


@pytest.fixture
def smtp_server():
    with FaultSMTPServer() as server:
        yield server


@pytest.fixture
def second_smtp_server():
    with FaultSMTPServer() as server:
        yield server


def provider_entry(name: str, server: FaultSMTPServer, **extra) -> dict:
    return {"name": name, "host": "127.0.0.1", "port": server.port, "timeout_seconds": 5, **extra}


@pytest.fixture
def providers(smtp_server) -> list[dict]:
    """The providers the app and workers use; tests override this fixture to add more."""
    return [provider_entry("primary", smtp_server)]


@pytest.fixture
def env(migrated, broker_url, redis_prefix, providers) -> dict[str, str]:
    return infra.service_env(
        database_url=migrated,
        broker_url=broker_url,
        redis_prefix=redis_prefix,
        providers=providers,
        MASSMAILER_BACKOFF_BASE_SECONDS="1",
    )


@pytest.fixture
def settings(env):
    return load_settings(env)


@pytest.fixture
def app(settings, broker_url, redis_prefix):
    app = create_app(settings)
    with app.app_context():
        _clean(broker_url, redis_prefix)
        yield app
        db.session.remove()
        # Each test's app has its own engine; close its pool now rather than whenever the app
        # is garbage-collected, or a long run exhausts PostgreSQL's max_connections.
        db.engine.dispose()
    services.forget_all()


def _clean(broker_url: str, redis_prefix: str) -> None:
    db.session.execute(
        text(
            "TRUNCATE email_attempts, email_events, email_jobs, batches, idempotency_keys,"
            " api_keys, suppressions RESTART IDENTITY CASCADE"
        )
    )
    db.session.commit()
    infra.purge_queues(broker_url, [q.name for q in ALL_QUEUES])
    infra.delete_redis_prefix(redis_prefix)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def api_key(app) -> str:
    return create_api_key(db.session, "tests")


@pytest.fixture
def auth(api_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def receiver_script() -> list[int]:
    """The HTTP statuses the webhook receiver answers first (then 200); modules override it."""
    return []


@pytest.fixture
def receiver(receiver_script):
    """A local HTTP server that records every webhook request (tests.processes.Receiver)."""
    from tests.processes import Receiver

    server = Receiver(script=receiver_script)
    yield server
    server.close()
