"""Start Flower for the worker fleet, only behind basic authentication.

`python -m massmailer.flower`: Flower reads FLOWER_BASIC_AUTH (user:password[,user:password])
from the environment itself, so the secret never appears on a command line where `ps` shows it.
"""

from __future__ import annotations

import sys

from massmailer.config import ConfigError, flower_settings


def main() -> int:
    """Exec `celery flower` with events on, or refuse when no credentials are configured."""
    try:
        port, broker_url = flower_settings()
    except ConfigError as exc:
        print(f"flower: {exc}", file=sys.stderr)
        return 2
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "-A", "wsgi:celery", "--broker", broker_url, "flower", f"--port={port}"]
    return celery_main()


if __name__ == "__main__":
    sys.exit(main())
