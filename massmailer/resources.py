"""Find the project's top-level `migrations/` and `celeryconfig.py`, in a checkout or a wheel.

They stay at the top of the repository, where Flask-Migrate and Celery users expect them. A wheel
ships the same files as the package `massmailer._project` (pyproject.toml maps the repository
root onto it), so an installed MassMailer needs no checkout and no particular working directory.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

PACKAGED = "massmailer._project"
CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def migrations_dir() -> str:
    """The Alembic directory: the installed copy if there is one, else the checkout's."""
    packaged = _packaged_dir()
    if packaged is not None and (packaged / "migrations" / "env.py").is_file():
        return str(packaged / "migrations")
    return str(CHECKOUT_ROOT / "migrations")


def celery_config() -> ModuleType:
    """The celeryconfig module: the installed copy if there is one, else the checkout's file."""
    if _packaged_dir() is not None:
        return importlib.import_module(f"{PACKAGED}.celeryconfig")
    try:
        return importlib.import_module("celeryconfig")  # the checkout root is on sys.path
    except ModuleNotFoundError as exc:
        if exc.name != "celeryconfig":
            raise
    # Started from elsewhere (a worker's cwd is not the checkout): load the checkout's file.
    spec = importlib.util.spec_from_file_location("celeryconfig", CHECKOUT_ROOT / "celeryconfig.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _packaged_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGED)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
