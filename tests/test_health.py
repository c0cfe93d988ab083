"""/healthz says the process answers; /readyz names the dependency that does not."""

from __future__ import annotations

import socket
import time

import pytest

from massmailer import create_app
from massmailer.config import load_settings
from massmailer.extensions import db
from tests import infra

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readyz(env: dict, **overrides: str):
    app = create_app(load_settings({**env, **overrides}))
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    took = time.monotonic() - started
    with app.app_context():
        db.engine.dispose()  # many apps, many pools: give their connections back now
    return response, took


def test_healthz_answers_without_touching_dependencies(env):
    app = create_app(load_settings({**env, "REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}))

    response = app.test_client().get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_ready_when_every_dependency_answers(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json()["checked"] == ["postgresql", "rabbitmq", "redis"]


def test_readyz_names_redis_when_it_is_unreachable(env):
    response, took = readyz(env, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0")

    assert response.status_code == 503
    body = response.get_json()
    assert list(body["failing"]) == ["redis"]
    assert body["message"] == "not reachable: redis"
    assert took < 10


@pytest.mark.parametrize(
    "bad_broker_url",
    [
        "{broker}/no-such-vhost",  # the run's broker (tests/harness), a vhost it does not have
        "amqp://guest:guest@127.0.0.1:{closed}//",
    ],
    ids=["missing-vhost", "closed-port"],
)
def test_readyz_names_rabbitmq_when_it_is_unreachable(env, bad_broker_url):
    broker = infra.services().rabbitmq.url.rstrip("/")
    url = bad_broker_url.format(closed=closed_port(), broker=broker)
    response, took = readyz(env, BROKER_URL=url)

    assert response.status_code == 503
    body = response.get_json()
    assert list(body["failing"]) == ["rabbitmq"]
    assert "rabbitmq" in body["message"]
    assert "guest" not in response.get_data(as_text=True)  # no credentials in the answer
    assert took < 10


def test_readyz_names_postgresql_when_it_is_unreachable(env):
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/massmailer"
    response, _ = readyz(env, DATABASE_URL=url)

    assert response.status_code == 503
    assert list(response.get_json()["failing"]) == ["postgresql"]
