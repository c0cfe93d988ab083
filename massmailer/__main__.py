"""`massmailer COMMAND` (or `python -m massmailer COMMAND`).

`demo` needs no running services and is parsed here; every other command is an operator command
of massmailer/console.py (`status`, `api-key`, `providers`, `jobs`, `db`, …).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEMO_DESCRIPTION = """\
Send mail end to end on this machine with no servers installed: the real API (with an API key),
the same migrations on a SQLite file, the job table as the queue, the production delivery code
in a few worker threads, and two local SMTP providers on 127.0.0.1, one of which answers
451 to a share of messages. Low-priority newsletters are posted first as a backlog, then
high-priority sign-in codes arrive among the rest; the summary compares their latency.
A message refused with 451 is retried on the other provider after a short backoff (the demo's
delay tiers are 1, 2, 5 and 10 s; production waits in RabbitMQ tiers of 10 s to 2 h)."""


def main(argv: list[str] | None = None) -> int:
    """Run `demo` here, any other command through the operator command group."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return _demo_main(argv)
    from massmailer.console import operator_group

    return operator_group().main(args=argv, prog_name="massmailer", standalone_mode=True)


def _demo_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="massmailer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="send a few thousand messages end to end with no services installed",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_demo_arguments(demo)
    demo.set_defaults(run=_run_demo)
    args = parser.parse_args(argv)
    return args.run(args)


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--count", type=_positive_int, default=2000, help="messages to send (default 2000)"
    )
    parser.add_argument(
        "--flaky-share",
        type=_share,
        default=0.2,
        metavar="SHARE",
        help="share of messages the flaky local provider answers with 451, 0 to 1 (default 0.2)",
    )
    parser.add_argument(
        "--high-share",
        type=_share,
        default=0.1,
        metavar="SHARE",
        help="share of high-priority messages (default 0.1)",
    )
    parser.add_argument(
        "--db",
        "--keep",
        dest="db",
        type=Path,
        metavar="PATH",
        help="write the SQLite database to PATH (a new file) and keep it to inspect afterwards; "
        "by default it lives in a temporary directory removed at exit",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=3, help="worker threads (default 3)"
    )
    parser.add_argument(
        "--provider-port",
        type=_port,
        action="append",
        default=[],
        metavar="PORT",
        help="send to an SMTP server already listening on 127.0.0.1:PORT instead of starting "
        "two; repeat for several (tests use this to count what their own servers received)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up if not finished after this long (default 300)",
    )


def _run_demo(args: argparse.Namespace) -> int:
    # Imported here so that `--help` answers without loading Flask and SQLAlchemy.
    from massmailer.demo.database import DatabaseExists
    from massmailer.demo.report import render_text
    from massmailer.demo.runner import DemoFailed, DemoOptions, run_demo
    from massmailer.demo.traffic import DemoClientError
    from massmailer.logs import configure_logging

    configure_logging(level=30)  # warnings only: one INFO line per message would drown the bar
    options = DemoOptions(
        count=args.count,
        flaky_share=args.flaky_share,
        high_share=args.high_share,
        db_path=args.db,
        workers=args.workers,
        provider_ports=tuple(args.provider_port),
        timeout_seconds=args.timeout,
    )
    try:
        summary = run_demo(options, progress_stream=sys.stderr)
    except (DatabaseExists, DemoFailed, DemoClientError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    text = render_text(summary)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(summary.to_json()))
    else:
        print(text)
    return 0


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _share(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number, got {value}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
