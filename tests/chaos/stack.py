"""An API client for an environment of the test's choosing: a chaos case that restarts a service
runs the whole stack (API, workers, beat) against a throwaway instance of it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from flask.testing import FlaskClient
from flask_migrate import upgrade

from massmailer import create_app, services
from massmailer.apikeys import create as create_api_key
from massmailer.config import load_settings
from massmailer.extensions import db


@contextmanager
def api_client(
    env: Mapping[str, str], *, migrate: bool = False
) -> Iterator[tuple[FlaskClient, dict[str, str]]]:
    """Yield a test client of an app built from env, and the auth header of a new API key."""
    app = create_app(load_settings(env))
    with app.app_context():
        if migrate:
            upgrade()
        key = create_api_key(db.session, "chaos")
        try:
            yield app.test_client(), {"Authorization": f"Bearer {key}"}
        finally:
            db.session.remove()
            db.engine.dispose()
            services.forget_all()
