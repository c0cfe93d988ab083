"""The `massmailer` command's operator commands: the same ones as `flask --app wsgi …`.

`massmailer status`, `massmailer api-key create NAME`, `massmailer db upgrade`, … build the app
from the environment (DATABASE_URL, BROKER_URL, …) like every process. `massmailer demo` needs
none of it and is handled before this group is built (massmailer/__main__.py).
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import FlaskGroup, NoAppException


class _OperatorGroup(FlaskGroup):
    """A FlaskGroup whose commands are all known up front, so `--help` never builds the app."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self.commands.get(name)


def _load_app() -> Flask:
    from massmailer import create_app
    from massmailer.config import ConfigError
    from massmailer.logs import configure_logging

    configure_logging()
    try:
        return create_app()
    except ConfigError as exc:  # one line naming the setting, not a traceback
        raise NoAppException(f"configuration: {exc}") from None


@click.command("demo", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _demo_placeholder(args: tuple[str, ...]) -> None:
    """Send a few thousand messages end to end with no services installed (demo --help)."""
    from massmailer.__main__ import main

    raise SystemExit(main(["demo", *args]))


def operator_group() -> click.Group:
    """Build the `massmailer` command group."""
    from flask_migrate.cli import db as db_cli

    from massmailer.bounces.cli import bounces_cli
    from massmailer.cli import api_key_cli, jobs_cli, providers_command, status_command

    group = _OperatorGroup(
        name="massmailer",
        create_app=_load_app,
        load_dotenv=False,
        help="MassMailer's commands. All but `demo` read the same settings as the web and "
        "worker processes (DATABASE_URL, BROKER_URL, REDIS_URL, MASSMAILER_…).",
    )
    for command in (
        _demo_placeholder,
        api_key_cli,
        status_command,
        providers_command,
        jobs_cli,
        bounces_cli,
    ):
        group.add_command(command)
    group.add_command(db_cli, "db")
    return group
