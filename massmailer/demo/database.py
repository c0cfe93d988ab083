"""The demo's SQLite file: where it lives, how it is tuned, and its schema from the migrations."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import event

from massmailer import MIGRATIONS_DIR
from massmailer.extensions import db


class DatabaseExists(Exception):
    """--db names a file that already exists; the demo never mixes its jobs into old ones."""


@contextmanager
def database_file(keep_at: Path | None) -> Iterator[Path]:
    """Yield the SQLite path: keep_at (which must not exist yet) or a file in a temporary dir."""
    if keep_at is not None:
        if keep_at.exists():
            raise DatabaseExists(f"{keep_at} already exists: name a new file or delete it")
        yield keep_at.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="massmailer-demo-") as directory:
        yield Path(directory) / "demo.sqlite3"


def url_for(path: Path) -> str:
    """Return the SQLAlchemy URL of an absolute SQLite path."""
    return f"sqlite:///{path}"


def prepare(app: Flask) -> None:
    """Tune SQLite for a few writer threads, then build the schema from the same migrations."""
    with app.app_context():
        event.listen(db.engine, "connect", _tune)
        # Alembic's env.py turns on INFO lines for each migration; the demo's output says enough.
        logging.disable(logging.INFO)
        try:
            upgrade(directory=MIGRATIONS_DIR)
        finally:
            logging.disable(logging.NOTSET)


def _tune(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; NORMAL syncs at checkpoints rather than at every
    # commit, which is durable across a crash of the process (not of the machine): fine for a demo.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
