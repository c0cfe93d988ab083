"""`flask --app wsgi bounces serve` (the Procfile's bounces process) and `bounces unmatched`."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import InboundReport, ReportState
from massmailer.models.types import utcnow

bounces_cli = AppGroup("bounces", help="The bounce and complaint inbox.")

KEPT_FOR_OPERATOR = (ReportState.UNMATCHED, ReportState.FORGED, ReportState.UNPARSABLE)


@bounces_cli.command("serve")
@click.option("--host", default=None, help="Listen address (BOUNCE_SMTP_HOST, 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Listen port (BOUNCE_SMTP_PORT, 2525).")
def serve_command(host: str | None, port: int | None) -> None:
    """Run the SMTP server that receives bounces, complaints and unsubscribe mail."""
    from massmailer.bounces.inbox import Inbox
    from massmailer.bounces.smtp import (
        BounceHandler,
        TokenBucket,
        make_controller,
        serve_forever,
    )

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings = app.extensions["massmailer.settings"]
    inbox = Inbox(settings)

    def store(raw: bytes, envelope_to: str):
        with app.app_context():
            return inbox.receive(db.session, raw, envelope_to, "smtp", utcnow())

    bucket = TokenBucket(settings.bounce_rate_per_second, settings.bounce_burst)
    handler = BounceHandler(inbox, store, bucket)
    controller = make_controller(
        handler,
        host or settings.bounce_smtp_host,
        port or settings.bounce_smtp_port,
        settings.bounce_max_bytes,
    )
    serve_forever(controller, handler)


@bounces_cli.command("unmatched")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--raw", "show_raw", is_flag=True, help="Print each stored message too.")
def unmatched_command(limit: int, show_raw: bool) -> None:
    """List the reports that were not acted on: unmatched, forged or unparsable, newest first."""
    rows = db.session.scalars(
        select(InboundReport)
        .where(InboundReport.state.in_(KEPT_FOR_OPERATOR))
        .order_by(InboundReport.id.desc())
        .limit(limit)
    ).all()
    for r in rows:
        click.echo(
            f"{r.id}\t{r.received_at.isoformat()}\t{r.state}\t{r.channel}\t"
            f"to={r.envelope_to or '-'}\tkind={r.kind or '-'}\tstatus={r.status_code or '-'}\t"
            f"recipient={r.recipient or '-'}\t{r.detail or ''}"
        )
        if show_raw and r.raw is not None:
            click.echo(r.raw.decode("utf-8", "replace"))
    if not rows:
        click.echo("No unmatched reports.")
