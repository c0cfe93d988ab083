"""Operator commands: `flask --app wsgi api-key create NAME`, `... api-key revoke NAME`."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from massmailer import apikeys
from massmailer.extensions import db

api_key_cli = AppGroup("api-key", help="Create and revoke API keys.")


@api_key_cli.command("create")
@click.argument("name")
def create_key(name: str) -> None:
    """Create a key; the key alone is printed on the last line, and never shown again."""
    try:
        raw = apikeys.create(db.session, name)
    except apikeys.ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created API key {name!r}. Store it now; it cannot be shown again:", err=False)
    click.echo(raw)


@api_key_cli.command("revoke")
@click.argument("name")
def revoke_key(name: str) -> None:
    """Revoke a key by name."""
    try:
        apikeys.revoke(db.session, name)
    except apikeys.ApiKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Revoked API key {name!r}.")


def register_cli(app: Flask) -> None:
    """Attach the operator commands to the app's `flask` command."""
    app.cli.add_command(api_key_cli)
