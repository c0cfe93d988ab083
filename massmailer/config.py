"""Settings from the environment, parsed strictly once; nothing else reads os.environ."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from massmailer.bounces.hooks.sendgrid import load_public_key
from massmailer.delivery.destinations import (
    SUBJECT_PREFIX,
    DestinationLimits,
    build_groups,
    builtin_groups,
    default_destinations,
    parse_groups,
    parse_limits,
)
from massmailer.delivery.dkim import SIGNED_HEADERS, DkimKey, load_private_key
from massmailer.delivery.limits.aimd import AimdSettings
from massmailer.delivery.providers.base import PROVIDER_NAME_MAX, ProviderConfig, TlsMode
from massmailer.delivery.retry import DELAY_TIERS_SECONDS
from massmailer.delivery.throttle import (
    ThrottlePattern,
    ThrottleRules,
    builtin_patterns,
    parse_patterns,
)
from massmailer.delivery.warmup import Warmup
from massmailer.validation import ValidationError, parse_address


class ConfigError(Exception):
    """A missing or malformed setting; the message names it."""


@dataclass(frozen=True)
class OpsSettings:
    """Operations: the admin dashboard's credentials and the metrics endpoints."""

    admin_user: str = "admin"
    admin_password: str | None = field(default=None, repr=False)  # unset: dashboard refused
    metrics_token: str | None = field(default=None, repr=False)  # unset: /metrics is refused
    # Serve /metrics without a token (a scrape network nobody else reaches; the demo).
    metrics_public: bool = False
    metrics_multiproc_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR, read by prometheus_client
    worker_metrics_port: int | None = None  # unset: workers start no metrics exporter
    worker_metrics_addr: str = "0.0.0.0"


@dataclass(frozen=True)
class Settings:
    database_url: str
    broker_url: str | None
    redis_url: str | None
    providers: tuple[ProviderConfig, ...]
    default_from: str | None
    bounce_address: str | None
    message_id_domain: str
    public_url: str
    secret_key: str = field(repr=False)
    # Keys that signed earlier unsubscribe links: still accepted, never used to sign.
    previous_secret_keys: tuple[str, ...] = field(default=(), repr=False)
    max_attempts: int = 6
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 7200.0
    # A chunk's 50 runs go at once (delivery/sending.run_length), so against a distant provider a
    # chunk lasts about one run's round trips whatever its size, and bigger chunks mean longer
    # runs, cheaper against a fast one: 800 (runs of 16) measured best (bench/README.md).
    chunk_size: int = 800
    lease_seconds: int = 45  # renewed while the chunk progresses (massmailer.delivery.leases)
    task_time_limit_seconds: int = 360
    publish_grace_seconds: int = 60
    sweep_interval_seconds: float = 30.0
    webhook_dispatch_seconds: float = 5.0  # how often due webhook messages are claimed
    webhook_max_in_flight: int = 8  # requests at once to one endpoint
    # Let webhooks go to private addresses and plain http:// (tests, internal deployments).
    webhook_allow_private: bool = False
    max_body_bytes: int = 1_000_000
    redis_key_prefix: str = "mm:"
    # The delay tiers retries wait in. Production's are fixed (RabbitMQ declares a queue for each,
    # massmailer.queues); only the embedded demo, whose job table is its queue, shortens them.
    retry_tiers_seconds: tuple[int, ...] = DELAY_TIERS_SECONDS
    breaker_failure_threshold: int = 5
    breaker_window_seconds: float = 30.0
    breaker_cooldown_seconds: float = 15.0
    ops: OpsSettings = field(default_factory=OpsSettings)
    unsubscribe_mailto: str | None = None  # a List-Unsubscribe mailto: address, if any
    idempotency_ttl_seconds: int = 86_400
    max_batch_recipients: int = 10_000
    max_batch_bytes: int = 20_000_000  # the largest POST /v1/batches body
    # Delivery concurrency: sender threads per worker process (each holds at most one SMTP
    # session), at most and at least while replies come fast (delivery/thread_limit.py), the
    # wall-clock bound of one SMTP transaction (it must fit well inside the lease), and how long
    # a send may wait in the process for a provider's rate slot.
    sender_threads: int = 64
    sender_threads_min: int = 16
    send_deadline_seconds: float = 20.0
    rate_wait_seconds: float = 30.0
    max_age_seconds: int = 259_200  # a job not sent 3 days after it was due ends FAILED expired
    event_retention_days: int = 30  # email_events older than this are deleted by the sweep
    # Per-key quotas unless the key has its own: requests per second (with a burst) and
    # recipients per UTC day.
    key_rate_per_second: float = 100.0
    key_burst: int = 1000
    key_recipients_per_day: int = 1_000_000
    # DKIM keys by From domain (MASSMAILER_DKIM_KEYS); none: the providers sign, if they do.
    dkim_keys: tuple[DkimKey, ...] = field(default=(), repr=False)
    # Throttle replies: which ones (the shipped patterns, then the operator's file) and how the
    # effective rate answers them (limits/aimd.py).
    throttle_patterns: tuple[ThrottlePattern, ...] = field(default_factory=builtin_patterns)
    throttle: AimdSettings = field(default_factory=AimdSettings)
    # Inbound reports (massmailer/bounces/): the `bounces` SMTP process and POST /v1/inbound/raw.
    bounce_smtp_host: str = "0.0.0.0"
    bounce_smtp_port: int = 2525
    bounce_max_bytes: int = 2_000_000  # a DSN with the whole returned message fits
    bounce_rate_per_second: float = 20.0  # accepted messages per second, per bounces process
    bounce_burst: int = 200
    feedback_address: str | None = None  # the feedback-loop (ARF) address, if not the bounce one
    inbound_token: str | None = field(default=None, repr=False)  # unset: the endpoint refuses all
    inbound_retention_days: int = 30  # raw reports are kept this long; parsed fields stay
    # Provider webhooks (massmailer/bounces/hooks/): each refuses every post until configured.
    sns_topic_arns: tuple[str, ...] = ()
    sendgrid_webhook_public_key: str | None = None  # base64 DER P-256 key, as SendGrid shows it
    mailgun_signing_key: str | None = field(default=None, repr=False)
    provider_webhook_max_age: int = 300  # seconds a signed timestamp is accepted either way
    # Recipient domain groups and the rate of each limited one, across all providers.
    destinations: DestinationLimits = field(default_factory=default_destinations)

    def __repr__(self) -> str:
        return f"Settings(providers={[p.name for p in self.providers]})"

    @property
    def throttle_rules(self) -> ThrottleRules:
        """The throttle patterns in force, for the SMTP sessions."""
        return ThrottleRules(self.throttle_patterns)

    @property
    def soft_time_limit_seconds(self) -> float:
        """Celery's soft limit: a minute (at the default) before the hard one."""
        return self.task_time_limit_seconds * 5 / 6

    @property
    def send_budget_seconds(self) -> float:
        """How long a chunk may start sends: the rest of the soft limit fits a last SMTP timeout."""
        return self.soft_time_limit_seconds * 0.8


def load_settings(environ: Mapping[str, str], *, require_services: bool = True) -> Settings:
    """Build Settings from an environment mapping; raise ConfigError naming the bad variable."""
    database_url = _database_url(environ, require_services)
    broker_url = environ.get("BROKER_URL") or environ.get("CLOUDAMQP_URL")
    if require_services and not broker_url:
        raise ConfigError(
            "BROKER_URL is not set (nor CLOUDAMQP_URL): the send queue needs RabbitMQ"
        )
    default_from = _address(environ, "MASSMAILER_DEFAULT_FROM")
    bounce = _address(environ, "MASSMAILER_BOUNCE_ADDRESS", bare=True) or _bare(default_from)
    domain = _domain_of(bounce) or "massmailer.localhost"
    time_limit = _int(environ, "MASSMAILER_TASK_TIME_LIMIT_SECONDS", 360, minimum=5)
    providers = load_providers(environ)
    lease_seconds = _lease_seconds(environ, providers)
    # Unset, it is 20 s, or half a short lease.
    default_deadline = min(20.0, lease_seconds / 2)
    send_deadline = _float(environ, "MASSMAILER_SEND_DEADLINE_SECONDS", default_deadline)
    if not 0 < send_deadline < lease_seconds * 0.8:
        # A send starts only while the lease outlasts its deadline, with renewals every fifth
        # of the lease: a deadline near the lease would stop every send from starting.
        raise ConfigError(
            f"MASSMAILER_SEND_DEADLINE_SECONDS ({send_deadline:g}) must be above 0 and below "
            f"80 % of MASSMAILER_LEASE_SECONDS ({lease_seconds})"
        )
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        redis_url=environ.get("REDIS_URL") or None,
        providers=providers,
        default_from=default_from,
        bounce_address=bounce,
        message_id_domain=environ.get("MASSMAILER_MESSAGE_ID_DOMAIN") or domain,
        public_url=(environ.get("MASSMAILER_PUBLIC_URL") or "http://localhost:8000").rstrip("/"),
        secret_key=_secret_key(environ, require_services),
        previous_secret_keys=_previous_secret_keys(environ),
        max_attempts=_int(environ, "MASSMAILER_MAX_ATTEMPTS", 6, minimum=1),
        backoff_base_seconds=_float(environ, "MASSMAILER_BACKOFF_BASE_SECONDS", 10.0),
        backoff_cap_seconds=_float(environ, "MASSMAILER_BACKOFF_CAP_SECONDS", 7200.0),
        chunk_size=_int(environ, "MASSMAILER_CHUNK_SIZE", 800, minimum=1),
        lease_seconds=lease_seconds,
        task_time_limit_seconds=time_limit,
        publish_grace_seconds=_int(environ, "MASSMAILER_PUBLISH_GRACE_SECONDS", 60, minimum=1),
        sweep_interval_seconds=_float(environ, "MASSMAILER_SWEEP_INTERVAL_SECONDS", 30.0),
        webhook_dispatch_seconds=_float(environ, "MASSMAILER_WEBHOOK_DISPATCH_SECONDS", 5.0),
        webhook_max_in_flight=_int(environ, "MASSMAILER_WEBHOOK_MAX_IN_FLIGHT", 8, minimum=1),
        webhook_allow_private=_flag(environ, "MASSMAILER_WEBHOOK_ALLOW_PRIVATE"),
        max_body_bytes=_int(environ, "MASSMAILER_MAX_BODY_BYTES", 1_000_000, minimum=1),
        redis_key_prefix=environ.get("MASSMAILER_REDIS_PREFIX", "mm:"),
        breaker_failure_threshold=_int(environ, "MASSMAILER_BREAKER_FAILURES", 5, minimum=1),
        breaker_window_seconds=_float(environ, "MASSMAILER_BREAKER_WINDOW_SECONDS", 30.0),
        breaker_cooldown_seconds=_float(environ, "MASSMAILER_BREAKER_COOLDOWN_SECONDS", 15.0),
        ops=load_ops_settings(environ, production=require_services),
        unsubscribe_mailto=_address(environ, "MASSMAILER_UNSUBSCRIBE_MAILTO", bare=True),
        idempotency_ttl_seconds=_int(
            environ, "MASSMAILER_IDEMPOTENCY_TTL_SECONDS", 86_400, minimum=60
        ),
        max_batch_recipients=_int(environ, "MASSMAILER_MAX_BATCH_RECIPIENTS", 10_000, minimum=1),
        max_batch_bytes=_int(environ, "MASSMAILER_MAX_BATCH_BYTES", 20_000_000, minimum=1024),
        sender_threads=_int(environ, "MASSMAILER_SENDER_THREADS", 64, minimum=1),
        sender_threads_min=_int(environ, "MASSMAILER_SENDER_THREADS_MIN", 16, minimum=1),
        send_deadline_seconds=send_deadline,
        rate_wait_seconds=_float(environ, "MASSMAILER_RATE_WAIT_SECONDS", 30.0),
        max_age_seconds=_int(environ, "MASSMAILER_MAX_AGE_SECONDS", 259_200, minimum=60),
        event_retention_days=_int(environ, "MASSMAILER_EVENT_RETENTION_DAYS", 30, minimum=1),
        # The demo posts its whole plan as fast as it can through one key: no throttle there.
        key_rate_per_second=_positive_float(
            environ, "MASSMAILER_KEY_RATE_PER_SECOND", 100.0 if require_services else 1e6
        ),
        key_burst=_int(environ, "MASSMAILER_KEY_BURST", 1000, minimum=1),
        key_recipients_per_day=_int(
            environ, "MASSMAILER_KEY_RECIPIENTS_PER_DAY", 1_000_000, minimum=1
        ),
        dkim_keys=load_dkim_keys(environ),
        throttle_patterns=builtin_patterns() + _throttle_patterns_file(environ),
        throttle=_throttle_settings(environ),
        destinations=load_destinations(environ),
        **_inbound_settings(environ),
    )


def _inbound_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The bounces process and the inbound endpoint (massmailer/bounces/)."""
    port = _int(environ, "BOUNCE_SMTP_PORT", 2525, minimum=1)
    if port > 65535:
        raise ConfigError(f"BOUNCE_SMTP_PORT must be a port number, got {port}")
    token = environ.get("MASSMAILER_INBOUND_TOKEN") or None
    if token is not None:
        _check_key_strength(token, "MASSMAILER_INBOUND_TOKEN")
    return {
        "bounce_smtp_host": environ.get("BOUNCE_SMTP_HOST") or "0.0.0.0",
        "bounce_smtp_port": port,
        "bounce_max_bytes": _int(environ, "MASSMAILER_BOUNCE_MAX_BYTES", 2_000_000, minimum=1024),
        "bounce_rate_per_second": _positive_float(
            environ, "MASSMAILER_BOUNCE_RATE_PER_SECOND", 20.0
        ),
        "bounce_burst": _int(environ, "MASSMAILER_BOUNCE_BURST", 200, minimum=1),
        "feedback_address": _address(environ, "MASSMAILER_FEEDBACK_ADDRESS", bare=True),
        "inbound_token": token,
        "inbound_retention_days": _int(environ, "MASSMAILER_INBOUND_RETENTION_DAYS", 30, minimum=1),
        **_provider_webhook_settings(environ),
    }


def _provider_webhook_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """POST /v1/inbound/ses, /sendgrid and /mailgun: what each provider signs with."""
    arns = tuple(a.strip() for a in environ.get("MASSMAILER_SNS_TOPIC_ARNS", "").split(","))
    for arn in filter(None, arns):
        if not re.fullmatch(r"arn:aws(-[a-z]+)*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]+", arn):
            raise ConfigError(f"MASSMAILER_SNS_TOPIC_ARNS: {arn!r} is not an SNS topic ARN")
    public_key = environ.get("MASSMAILER_SENDGRID_WEBHOOK_PUBLIC_KEY", "").strip() or None
    if public_key is not None:
        try:
            load_public_key(public_key)
        except ValueError as exc:
            raise ConfigError(f"MASSMAILER_SENDGRID_WEBHOOK_PUBLIC_KEY: {exc}") from None
    return {
        "sns_topic_arns": tuple(filter(None, arns)),
        "sendgrid_webhook_public_key": public_key,
        "mailgun_signing_key": environ.get("MASSMAILER_MAILGUN_SIGNING_KEY") or None,
        "provider_webhook_max_age": _int(
            environ, "MASSMAILER_PROVIDER_WEBHOOK_MAX_AGE_SECONDS", 300, minimum=30
        ),
    }


def load_destinations(environ: Mapping[str, str]) -> DestinationLimits:
    """The groups (shipped, then the operator's file) and MASSMAILER_DESTINATION_LIMITS."""
    name = "MASSMAILER_DESTINATION_GROUPS_FILE"
    tables = [builtin_groups()]
    path = environ.get(name)
    try:
        if path:
            tables.append(parse_groups(_parse_document(_read(path, name), name), name))
        groups = build_groups(*tables)
    except ValueError as exc:
        # parse_groups names the file's variable; build_groups's overlap only the file can cause.
        raise ConfigError(str(exc) if name in str(exc) else f"{name}: {exc}") from None
    name = "MASSMAILER_DESTINATION_LIMITS"
    raw = environ.get(name)
    if not raw:
        return DestinationLimits(groups, {})
    try:
        return DestinationLimits(groups, parse_limits(_parse_document(raw, name), name, groups))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _read(path: str, name: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None


def _throttle_patterns_file(environ: Mapping[str, str]) -> tuple[ThrottlePattern, ...]:
    """The operator's extra throttle patterns (JSON or YAML), tried after the shipped ones."""
    name = "MASSMAILER_THROTTLE_PATTERNS_FILE"
    path = environ.get(name)
    if not path:
        return ()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    try:
        return parse_patterns(_parse_document(text, name), name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _throttle_settings(environ: Mapping[str, str]) -> AimdSettings:
    """How a throttle reply cuts a provider's rate and how successes restore it."""
    defaults = AimdSettings()
    try:
        return AimdSettings(
            decrease=_float(environ, "MASSMAILER_THROTTLE_DECREASE", defaults.decrease),
            min_factor=_float(environ, "MASSMAILER_THROTTLE_MIN_FRACTION", defaults.min_factor),
            cooldown_seconds=_float(
                environ, "MASSMAILER_THROTTLE_COOLDOWN_SECONDS", defaults.cooldown_seconds
            ),
            increase_per_second=_float(
                environ, "MASSMAILER_THROTTLE_INCREASE_PER_SECOND", defaults.increase_per_second
            ),
            floor_per_second=_float(
                environ, "MASSMAILER_THROTTLE_FLOOR_PER_SECOND", defaults.floor_per_second
            ),
        )
    except ValueError as exc:
        raise ConfigError(f"MASSMAILER_THROTTLE_*: {exc}") from None


# A claim's lease is short so a crashed process's jobs move again within about a minute; the
# holder renews it while it works, so it need not outlast the task.
LEASE_LIMITS_SECONDS = (5, 300)


def _lease_seconds(environ: Mapping[str, str], providers: tuple[ProviderConfig, ...]) -> int:
    low, high = LEASE_LIMITS_SECONDS
    lease = _int(environ, "MASSMAILER_LEASE_SECONDS", 45, minimum=low)
    if lease > high:
        raise ConfigError(f"MASSMAILER_LEASE_SECONDS must be at most {high}, got {lease}")
    slowest = max((p.timeout_seconds for p in providers), default=0.0)
    if lease < 1.5 * slowest:
        # A send starts only while more lease remains than it may block for; renewal keeps at
        # least 4/5 of the lease, so a lease shorter than this would leave too little room.
        raise ConfigError(
            f"MASSMAILER_LEASE_SECONDS ({lease}) must be at least 1.5 x the longest provider "
            f"timeout_seconds ({slowest:g})"
        )
    return lease


def settings_from_environment(*, require_services: bool = True) -> Settings:
    """Read this process's environment (the only place that does)."""
    return load_settings(os.environ, require_services=require_services)


def load_ops_settings(environ: Mapping[str, str], *, production: bool = True) -> OpsSettings:
    """Read the dashboard credentials and the metrics settings."""
    port = _int(environ, "MASSMAILER_WORKER_METRICS_PORT", 0, minimum=0)
    if port > 65535:
        raise ConfigError(f"MASSMAILER_WORKER_METRICS_PORT must be a port number, got {port}")
    return OpsSettings(
        admin_user=environ.get("MASSMAILER_ADMIN_USER") or "admin",
        admin_password=environ.get("MASSMAILER_ADMIN_PASSWORD") or None,
        metrics_token=environ.get("MASSMAILER_METRICS_TOKEN") or None,
        metrics_public=_flag(environ, "MASSMAILER_METRICS_PUBLIC") or not production,
        metrics_multiproc_dir=environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
        worker_metrics_port=port or None,
        worker_metrics_addr=environ.get("MASSMAILER_WORKER_METRICS_ADDR") or "0.0.0.0",
    )


def flower_settings() -> tuple[int, str]:
    """Return Flower's port and broker URL; refuse to run Flower without basic auth."""
    auth = os.environ.get("FLOWER_BASIC_AUTH", "")
    if ":" not in auth:
        raise ConfigError("FLOWER_BASIC_AUTH is not set (user:password); Flower never runs open")
    broker_url = os.environ.get("BROKER_URL") or os.environ.get("CLOUDAMQP_URL")
    if not broker_url:
        raise ConfigError("BROKER_URL is not set (nor CLOUDAMQP_URL)")
    return _int(os.environ, "PORT", 5555, minimum=1), broker_url


def normalize_database_url(url: str) -> str:
    """Point postgres URLs at psycopg2: SQLAlchemy 2.1 maps postgresql:// to psycopg 3."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url[len(scheme) :]
    return url


def _database_url(environ: Mapping[str, str], require_services: bool) -> str:
    url = environ.get("DATABASE_URL")
    if not url:
        if require_services:
            raise ConfigError("DATABASE_URL is not set: web and worker processes need PostgreSQL")
        return "sqlite:///massmailer-demo.sqlite3"
    return normalize_database_url(url)


MIN_SECRET_KEY_CHARS = 32


def _secret_key(environ: Mapping[str, str], require_services: bool) -> str:
    key = environ.get("MASSMAILER_SECRET_KEY", "")
    if not key:
        if require_services:
            # A shared default would let anyone sign an unsubscribe token for any address.
            raise ConfigError(
                "MASSMAILER_SECRET_KEY is not set: it signs unsubscribe links; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        # The embedded demo: links live as long as its database, so a random key is enough.
        return secrets.token_urlsafe(32)
    _check_key_strength(key, "MASSMAILER_SECRET_KEY")
    return key


def _previous_secret_keys(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Comma-separated keys that signed earlier links (rotation); whitespace is ignored."""
    raw = environ.get("MASSMAILER_SECRET_KEY_PREVIOUS", "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for key in keys:
        _check_key_strength(key, "MASSMAILER_SECRET_KEY_PREVIOUS")
    return keys


def _check_key_strength(key: str, name: str) -> None:
    if len(key) < MIN_SECRET_KEY_CHARS:
        # The value itself is a secret: never repeat it in the message.
        raise ConfigError(f"{name} must be at least {MIN_SECRET_KEY_CHARS} characters long")


def load_providers(environ: Mapping[str, str]) -> tuple[ProviderConfig, ...]:
    """Read MASSMAILER_PROVIDERS (JSON) or MASSMAILER_PROVIDERS_FILE (JSON or YAML)."""
    raw = environ.get("MASSMAILER_PROVIDERS")
    path = environ.get("MASSMAILER_PROVIDERS_FILE")
    if raw and path:
        raise ConfigError("set MASSMAILER_PROVIDERS or MASSMAILER_PROVIDERS_FILE, not both")
    if path:
        source = "MASSMAILER_PROVIDERS_FILE"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read {path}: {exc.strerror}") from None
        entries = _parse_document(text, source)
    elif raw:
        source = "MASSMAILER_PROVIDERS"
        entries = _parse_document(raw, source)
    else:
        return ()
    if not isinstance(entries, list):
        raise ConfigError(f"{source} must be a list of provider objects")
    providers = tuple(
        parse_provider(entry, f"{source}[{i}]", environ) for i, entry in enumerate(entries)
    )
    names = [p.name for p in providers]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"{source}: provider names must be unique, repeated: {duplicated}")
    return providers


def _parse_document(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is neither JSON nor YAML: {exc}") from None


# Entry-only fields: where the password comes from, and the opt-in to AUTH without TLS.
_CREDENTIAL_FIELDS = {"password_file", "password_env", "allow_plaintext_auth"}
_PROVIDER_FIELDS = {f.name for f in fields(ProviderConfig)} | _CREDENTIAL_FIELDS


def parse_provider(
    entry: object, where: str, environ: Mapping[str, str] | None = None
) -> ProviderConfig:
    """Validate one provider entry; errors name the entry and the field."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    name = entry.get("name")
    label = f"{where} ({name})" if isinstance(name, str) else where
    unknown = set(entry) - _PROVIDER_FIELDS
    if unknown:
        raise ConfigError(f"{label}: unknown field(s) {sorted(unknown)}")
    for required in ("name", "host", "port"):
        if entry.get(required) in (None, ""):
            raise ConfigError(f"{label}: '{required}' is required")
    if isinstance(name, str) and name.startswith(SUBJECT_PREFIX):
        # Destination groups' rate schedules are keyed by such names in the limits store.
        raise ConfigError(f"{label}: 'name' must not start with {SUBJECT_PREFIX!r}")
    if isinstance(name, str) and len(name) > PROVIDER_NAME_MAX:
        # The name is stored with every outcome (a 50-character column): a longer one would
        # make every outcome flush fail, so refuse it here, at start-up.
        raise ConfigError(f"{label}: 'name' must be at most {PROVIDER_NAME_MAX} characters")
    try:
        tls = TlsMode(entry.get("tls", "none"))
    except ValueError:
        raise ConfigError(f"{label}: 'tls' must be none, starttls or ssl") from None
    username = _optional_text(entry, "username", label)
    _check_plaintext_auth(entry, label, tls, username)
    return ProviderConfig(
        name=_text(entry, "name", label),
        host=_text(entry, "host", label),
        port=_number(entry, "port", label, int, minimum=1, maximum=65535),
        tls=tls,
        username=username,
        password=_password(entry, label, environ if environ is not None else {}),
        weight=_number(entry, "weight", label, int, minimum=0, default=1),
        rate_per_second=_optional_number(entry, "rate_per_second", label, float),
        rate_per_day=_optional_number(entry, "rate_per_day", label, int),
        max_connections=_number(entry, "max_connections", label, int, minimum=1, default=10),
        timeout_seconds=_number(entry, "timeout_seconds", label, float, minimum=0.1, default=30.0),
        ca_file=_optional_text(entry, "ca_file", label),
        dkim_exclude_headers=_dkim_exclude_headers(entry, label),
        warmup=_warmup(entry, label),
    )


def _warmup(entry: dict, label: str) -> Warmup | None:
    """A warm-up schedule: {"start": "YYYY-MM-DD", "daily_caps": [500, 1000, ...]}."""
    raw = entry.get("warmup")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: 'warmup' must be an object with 'start' and 'daily_caps'")
    unknown = set(raw) - {"start", "daily_caps"}
    if unknown:
        raise ConfigError(f"{label}: 'warmup' has unknown field(s) {sorted(unknown)}")
    start = raw.get("start")
    try:
        # YAML reads an unquoted 2026-11-20 as a date already.
        start = start if isinstance(start, date) else date.fromisoformat(str(start))
    except ValueError:
        raise ConfigError(f"{label}: 'warmup.start' must be a date like 2026-11-20") from None
    caps = raw.get("daily_caps")
    if not isinstance(caps, list):
        raise ConfigError(f"{label}: 'warmup.daily_caps' must be a list of daily caps")
    try:
        return Warmup(start, tuple(caps))
    except ValueError as exc:
        raise ConfigError(f"{label}: 'warmup.daily_caps' {exc}") from None


def _dkim_exclude_headers(entry: dict, label: str) -> tuple[str, ...]:
    """Headers this provider rewrites, left out of h= (SES: message-id, date); never From."""
    names = entry.get("dkim_exclude_headers", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{label}: 'dkim_exclude_headers' must be a list of header names")
    lowered = tuple(n.strip().lower() for n in names)
    if "from" in lowered:
        raise ConfigError(f"{label}: 'dkim_exclude_headers' cannot hold From: DKIM must sign it")
    unknown = sorted(set(lowered) - set(SIGNED_HEADERS))
    if unknown:
        # A typo would otherwise leave a rewritten header signed and every signature broken.
        raise ConfigError(
            f"{label}: 'dkim_exclude_headers' {unknown} are not signed anyway; the signed "
            f"headers are {', '.join(SIGNED_HEADERS)}"
        )
    return lowered


def _check_plaintext_auth(entry: dict, label: str, tls: TlsMode, username: str | None) -> None:
    allowed = entry.get("allow_plaintext_auth", False)
    if not isinstance(allowed, bool):
        raise ConfigError(f"{label}: 'allow_plaintext_auth' must be true or false")
    if username and tls is TlsMode.NONE and not allowed:
        # AUTH PLAIN/LOGIN over a clear connection hands the password to anyone on the path.
        raise ConfigError(
            f"{label}: 'tls' is none but 'username' is set: credentials would cross the network "
            'in clear; use tls starttls or ssl (or set "allow_plaintext_auth": true for a '
            "relay on loopback)"
        )


def _password(entry: dict, label: str, environ: Mapping[str, str]) -> str | None:
    """The password inline, from a file (first line), or from a named environment variable."""
    given = [k for k in ("password", "password_file", "password_env") if entry.get(k) is not None]
    if len(given) > 1:
        raise ConfigError(f"{label}: set only one of {', '.join(repr(k) for k in given)}")
    if not given:
        return None
    source = given[0]
    name = _text(entry, source, label)
    if source == "password":
        return name
    if source == "password_env":
        value = environ.get(name)
        if not value:
            raise ConfigError(f"{label}: 'password_env' names {name}, which is not set")
        return value
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{label}: 'password_file' cannot be read: {exc.strerror}") from None
    value = text.splitlines()[0] if text else ""
    if not value:
        raise ConfigError(f"{label}: 'password_file' {name} is empty")
    return value


_DKIM_FIELDS = {"domain", "selector", "private_key_file", "private_key_env"}
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def load_dkim_keys(environ: Mapping[str, str]) -> tuple[DkimKey, ...]:
    """Read MASSMAILER_DKIM_KEYS (a JSON or YAML list); every key is parsed here, at start-up."""
    source = "MASSMAILER_DKIM_KEYS"
    raw = environ.get(source)
    if not raw:
        return ()
    entries = _parse_document(raw, source)
    if not isinstance(entries, list):
        raise ConfigError(f"{source} must be a list of key objects")
    keys = tuple(_dkim_key(entry, f"{source}[{i}]", environ) for i, entry in enumerate(entries))
    _check_dkim_domains(keys, source)
    return keys


def _dkim_key(entry: object, where: str, environ: Mapping[str, str]) -> DkimKey:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    unknown = set(entry) - _DKIM_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    for name in ("domain", "selector"):
        if not isinstance(entry.get(name), str) or not _DNS_NAME.fullmatch(entry[name]):
            raise ConfigError(f"{where}: '{name}' must be an ASCII DNS name")
    domain = entry["domain"].lower()
    label = f"{where} ({domain})"
    pem, origin = _dkim_pem(entry, label, environ)
    try:
        key = load_private_key(pem)
    except ValueError as exc:
        raise ConfigError(f"{label}: {origin} {exc}") from None
    return DkimKey(domain, entry["selector"].lower(), key)


def _dkim_pem(entry: dict, label: str, environ: Mapping[str, str]) -> tuple[bytes, str]:
    """The PEM from a file or a named environment variable, and words naming where it was."""
    given = [k for k in ("private_key_file", "private_key_env") if entry.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{label}: set one of 'private_key_file' and 'private_key_env'")
    source = given[0]
    name = _text(entry, source, label)
    if source == "private_key_env":
        value = environ.get(name)
        if not value:
            raise ConfigError(f"{label}: 'private_key_env' names {name}, which is not set")
        # Some platforms keep a config value on one line: a PEM never holds a backslash.
        return value.replace("\\n", "\n").encode(), f"'private_key_env' {name}"
    try:
        return Path(name).read_bytes(), f"'private_key_file' {name}"
    except OSError as exc:
        raise ConfigError(f"{label}: 'private_key_file' {name}: {exc.strerror}") from None


def _check_dkim_domains(keys: tuple[DkimKey, ...], source: str) -> None:
    """At most one RSA and one Ed25519 key a domain, and Ed25519 only beside RSA."""
    seen: dict[tuple[str, str], str] = {}
    for key in keys:
        if (key.domain, key.algorithm) in seen:
            raise ConfigError(f"{source}: two {key.algorithm} keys for {key.domain}")
        seen[key.domain, key.algorithm] = key.selector
    for domain, algorithm in seen:
        if (domain, "rsa-sha256") not in seen:
            # RFC 8463 4: many receivers do not verify ed25519 yet; alone it is no signature.
            raise ConfigError(f"{source}: the {algorithm} key for {domain} needs an RSA key too")
        if algorithm != "rsa-sha256" and seen[domain, algorithm] == seen[domain, "rsa-sha256"]:
            raise ConfigError(f"{source}: {domain}'s two keys need two selectors (one TXT each)")


def _text(entry: dict, key: str, label: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label}: '{key}' must be a non-empty string")
    return value


def _optional_text(entry: dict, key: str, label: str) -> str | None:
    return None if entry.get(key) in (None, "") else _text(entry, key, label)


def _number(entry, key, label, kind, *, minimum=None, maximum=None, default=None):
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{label}: '{key}' must be a number")
    if kind is int and value != int(value):
        raise ConfigError(f"{label}: '{key}' must be a whole number")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{label}: '{key}' must be between {minimum} and {maximum}")
    return kind(value)


def _optional_number(entry, key, label, kind):
    if entry.get(key) is None:
        return None
    return _number(entry, key, label, kind, minimum=0)


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {value}")
    return value


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    value = _float(environ, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be above 0, got {value}")
    return value


def _flag(environ: Mapping[str, str], name: str) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _address(environ: Mapping[str, str], name: str, *, bare: bool = False) -> str | None:
    raw = environ.get(name)
    if not raw:
        return None
    try:
        display, addr = parse_address(raw, name)
    except ValidationError as exc:
        raise ConfigError(f"{name}: {exc.message}") from None
    if bare and display:
        raise ConfigError(f"{name} must be a bare address (it is the SMTP envelope sender)")
    return addr if bare else raw


def _bare(address: str | None) -> str | None:
    return parse_address(address, "address")[1] if address else None


def _domain_of(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rsplit("@", 1)[1].strip(" >")
