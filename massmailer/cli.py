"""Operator commands: `flask --app wsgi api-key create NAME`, `... api-key revoke NAME`,
`status`, `providers`, `jobs requeue`, `jobs purge`, `bounces serve`, `bounces unmatched`."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from massmailer import apikeys, dispatch, jobstore
from massmailer.bounces.cli import bounces_cli
from massmailer.delivery.warmup import describe, utc_date
from massmailer.extensions import db
from massmailer.metrics.state import OpsState, make_limits, read_state
from massmailer.models.types import utcnow

api_key_cli = AppGroup("api-key", help="Create and revoke API keys.")


@api_key_cli.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(apikeys.SCOPES),
    help=f"Repeat for each scope (default: {' '.join(apikeys.DEFAULT_SCOPES)}).",
)
@click.option(
    "--sender-domain",
    "sender_domains",
    multiple=True,
    help="A domain the key may send from; repeat for several (default: any).",
)
@click.option("--rate", type=click.FloatRange(min=0.001), help="Requests per second.")
@click.option("--burst", type=click.IntRange(min=1), help="Requests allowed at once.")
@click.option("--recipients-per-day", type=click.IntRange(min=1), help="Recipients per UTC day.")
def create_key(
    name: str,
    scopes: tuple[str, ...],
    sender_domains: tuple[str, ...],
    rate: float | None,
    burst: int | None,
    recipients_per_day: int | None,
) -> None:
    """Create a key; the key alone is printed on the last line, and never shown again."""
    options = apikeys.KeyOptions(
        scopes=scopes or apikeys.DEFAULT_SCOPES,
        sender_domains=sender_domains or None,
        rate_per_second=rate,
        burst=burst,
        recipients_per_day=recipients_per_day,
    )
    try:
        raw = apikeys.create(db.session, name, options)
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


def _state() -> OpsState:
    settings = current_app.extensions["massmailer.settings"]
    return read_state(db.session, settings, make_limits(settings))


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@with_appcontext
def status_command(as_json: bool) -> None:
    """Show jobs by status, queue depths and providers' health; exit 1 if a source is down."""
    state = _state()
    if as_json:
        queues = None if state.queues is None else [asdict(q) for q in state.queues]
        click.echo(json.dumps({**asdict(state), "queues": queues}, indent=2))
    else:
        jobs = state.jobs or {}
        click.echo("jobs      " + "  ".join(f"{k} {v}" for k, v in jobs.items()))
        for queue in state.queues or ():
            click.echo(
                f"queue     {queue.name:<22} {queue.messages:>9} ready "
                f"{queue.consumers:>4} consumers"
            )
        for name, health in (state.providers or {}).items():
            click.echo(f"provider  {name:<22} {_health_line(health)}")
        for source, error in state.errors.items():
            click.echo(f"error     {source} not reachable ({error})", err=True)
    if state.errors:
        raise SystemExit(1)


@click.command("providers")
@with_appcontext
def providers_command() -> None:
    """List the configured providers with breaker state, rate headroom and sessions in use."""
    settings = current_app.extensions["massmailer.settings"]
    state = _state()
    for provider in settings.providers:
        health = (state.providers or {}).get(provider.name)
        rate = f"{provider.rate_per_second:g}/s" if provider.rate_per_second else "no rate limit"
        daily = ""
        if provider.daily_cap() is not None or provider.warmup is not None:
            # The cap in force today: the warm-up's (delivery/warmup.py), else rate_per_day.
            today = utc_date(time.time())
            daily = f" daily cap {describe(provider.warmup, provider.daily_cap(), today)}"
        click.echo(
            f"{provider.name:<16} {provider.host}:{provider.port} tls={provider.tls} "
            f"weight={provider.weight} {rate}{daily}"
        )
        click.echo(f"{'':<16} {_health_line(health) if health else 'health unknown'}")
    _echo_destinations(settings, "redis" not in state.errors)
    if "redis" in state.errors:
        raise click.ClickException(f"limits store not reachable ({state.errors['redis']})")


def _echo_destinations(settings, readable: bool) -> None:
    """One line per limited destination group: its rate, and the rate in force after throttles."""
    limits = list(settings.destinations.limits.values())
    if not limits:
        return
    subjects = [limit.rate_subject for limit in limits]
    snapshot = make_limits(settings).snapshot(subjects) if readable else {}
    for limit in limits:
        health = snapshot.get(limit.rate_subject.name)
        effective = "effective unknown"
        if health is not None:
            throttled = " (throttled)" if health["rate_factor"] < 1.0 else ""
            effective = f"effective {health['effective_rate']:.3g}/s{throttled}"
        click.echo(f"{'destination ' + limit.group:<28} {limit.rate_per_second:g}/s  {effective}")


def _health_line(health: dict) -> str:
    headroom = health.get("rate_headroom")
    daily = health.get("daily_remaining")
    effective = health.get("effective_rate")
    throttled = health.get("rate_factor", 1.0) < 1.0
    return (
        f"breaker {health['state']} (faults {health['failures']})  "
        f"rate {'unlimited' if effective is None else f'{effective:.3g}/s'}"
        f"{' (throttled)' if throttled else ''}  "
        f"headroom {'unlimited' if headroom is None else f'{headroom:.1f}'}  "
        f"sessions {health['connections_in_use']}/{health['max_connections']}"
        + ("" if daily is None else f"  left today {daily}")
    )


jobs_cli = AppGroup("jobs", help="Requeue failed jobs; purge old ones.")
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Parse an ISO 8601 time (UTC when it has no offset) or an age like 30m, 2h, 7d."""
    if value is None:
        return None
    relative = _RELATIVE.match(value)
    if relative:
        return utcnow() - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use an ISO 8601 time or an age like 30m, 2h, 7d") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@jobs_cli.command("requeue")
@click.option("--batch", "batch_id", type=int, help="Only this batch's FAILED jobs.")
@click.option("--since", callback=_moment, help="Failed at or after (ISO time or age: 2h).")
@click.option("--until", callback=_moment, help="Failed before (default: now).")
def requeue_command(batch_id: int | None, since: datetime | None, until: datetime | None) -> None:
    """Move FAILED jobs back to PENDING with attempts reset, and queue them again."""
    if batch_id is None and since is None and until is None:
        raise click.UsageError("choose the jobs: --batch ID and/or --since/--until")
    settings = current_app.extensions["massmailer.settings"]
    publisher = current_app.extensions["massmailer.publisher"]
    # Fixed at the start, so a job requeued now and failing again is not picked twice.
    until = until or utcnow()
    moved = published = 0
    while True:
        try:
            batch = jobstore.requeue_failed(
                db.session, utcnow(), since=since, until=until, batch_id=batch_id
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        moved += len(batch)
        published += dispatch.dispatch(db.session, publisher, batch, chunk_size=settings.chunk_size)
        if not batch:
            break
    click.echo(f"Requeued {moved} FAILED job(s); {published} queued now, the rest by the sweeper.")


@jobs_cli.command("purge")
@click.option("--older-than-days", type=click.IntRange(min=1), required=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(older_than_days: int, batch_size: int, yes: bool) -> None:
    """Delete SENT, FAILED and CANCELLED jobs (and their attempts) older than N days."""
    before = utcnow() - timedelta(days=older_than_days)
    if not yes:
        click.confirm(
            f"Delete final jobs last changed before {before:%Y-%m-%d %H:%M} UTC?", abort=True
        )
    deleted = 0
    while True:
        n = jobstore.purge_final(db.session, before, batch_size)
        deleted += n
        if n < batch_size:
            break
    click.echo(f"Deleted {deleted} job(s) last changed before {before.isoformat()}.")


def register_cli(app: Flask) -> None:
    """Attach the operator commands to the app's `flask` command."""
    app.cli.add_command(api_key_cli)
    app.cli.add_command(status_command)
    app.cli.add_command(providers_command)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(bounces_cli)
