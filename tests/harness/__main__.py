"""`python -m tests.harness run -- COMMAND…`: run a command against a fresh database and vhost.

The services come from the same choice the tests make (the machine's, throwaway ones, or
compose); COMMAND gets DATABASE_URL, BROKER_URL, REDIS_URL and MASSMAILER_REDIS_PREFIX for a
database, vhost and key prefix of its own, all removed afterwards. CI runs the migrations this way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from tests import infra


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command; return its exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run COMMAND with a fresh database, vhost and prefix")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    args = parser.parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        parser.error("run needs a command after --")
    return _run(command)


def _run(command: list[str]) -> int:
    chosen = infra.services()
    print(f"harness: {chosen.describe()}", file=sys.stderr)
    with infra.throwaway_services("mmrun") as own:
        env = {
            **os.environ,
            "DATABASE_URL": own.database_url,
            "BROKER_URL": own.broker_url,
            "REDIS_URL": chosen.redis.url,
            "MASSMAILER_REDIS_PREFIX": own.redis_prefix,
        }
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
