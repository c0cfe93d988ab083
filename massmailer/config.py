"""Settings from the environment, parsed strictly once; nothing else reads os.environ."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from massmailer.providers.base import ProviderConfig, TlsMode
from massmailer.retry import DELAY_TIERS_SECONDS
from massmailer.validation import ValidationError, parse_address


class ConfigError(Exception):
    """A missing or malformed setting; the message names it."""


@dataclass(frozen=True)
class OpsSettings:
    """Operations: the admin dashboard's credentials and the metrics endpoints."""

    admin_user: str = "admin"
    admin_password: str | None = field(default=None, repr=False)  # unset: dashboard refused
    metrics_token: str | None = field(default=None, repr=False)  # unset: /metrics is open
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
    max_attempts: int = 6
    backoff_base_seconds: float = 10.0
    backoff_cap_seconds: float = 7200.0
    chunk_size: int = 200
    lease_seconds: int = 900
    task_time_limit_seconds: int = 360
    publish_grace_seconds: int = 60
    sweep_interval_seconds: float = 30.0
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

    def __repr__(self) -> str:
        return f"Settings(providers={[p.name for p in self.providers]})"

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
    lease_seconds = _int(environ, "MASSMAILER_LEASE_SECONDS", 900, minimum=10)
    time_limit = _int(environ, "MASSMAILER_TASK_TIME_LIMIT_SECONDS", 360, minimum=5)
    if lease_seconds <= time_limit:
        # A claim must outlive the task that holds it, or a second worker could claim and send
        # a job the first one is still sending.
        raise ConfigError(
            f"MASSMAILER_LEASE_SECONDS ({lease_seconds}) must exceed "
            f"MASSMAILER_TASK_TIME_LIMIT_SECONDS ({time_limit})"
        )
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        redis_url=environ.get("REDIS_URL") or None,
        providers=load_providers(environ),
        default_from=default_from,
        bounce_address=bounce,
        message_id_domain=environ.get("MASSMAILER_MESSAGE_ID_DOMAIN") or domain,
        public_url=(environ.get("MASSMAILER_PUBLIC_URL") or "http://localhost:8000").rstrip("/"),
        secret_key=_secret_key(environ, require_services),
        max_attempts=_int(environ, "MASSMAILER_MAX_ATTEMPTS", 6, minimum=1),
        backoff_base_seconds=_float(environ, "MASSMAILER_BACKOFF_BASE_SECONDS", 10.0),
        backoff_cap_seconds=_float(environ, "MASSMAILER_BACKOFF_CAP_SECONDS", 7200.0),
        chunk_size=_int(environ, "MASSMAILER_CHUNK_SIZE", 200, minimum=1),
        lease_seconds=lease_seconds,
        task_time_limit_seconds=time_limit,
        publish_grace_seconds=_int(environ, "MASSMAILER_PUBLISH_GRACE_SECONDS", 60, minimum=1),
        sweep_interval_seconds=_float(environ, "MASSMAILER_SWEEP_INTERVAL_SECONDS", 30.0),
        max_body_bytes=_int(environ, "MASSMAILER_MAX_BODY_BYTES", 1_000_000, minimum=1),
        redis_key_prefix=environ.get("MASSMAILER_REDIS_PREFIX", "mm:"),
        breaker_failure_threshold=_int(environ, "MASSMAILER_BREAKER_FAILURES", 5, minimum=1),
        breaker_window_seconds=_float(environ, "MASSMAILER_BREAKER_WINDOW_SECONDS", 30.0),
        breaker_cooldown_seconds=_float(environ, "MASSMAILER_BREAKER_COOLDOWN_SECONDS", 15.0),
        ops=load_ops_settings(environ),
        unsubscribe_mailto=_address(environ, "MASSMAILER_UNSUBSCRIBE_MAILTO", bare=True),
        idempotency_ttl_seconds=_int(
            environ, "MASSMAILER_IDEMPOTENCY_TTL_SECONDS", 86_400, minimum=60
        ),
        max_batch_recipients=_int(environ, "MASSMAILER_MAX_BATCH_RECIPIENTS", 10_000, minimum=1),
        max_batch_bytes=_int(environ, "MASSMAILER_MAX_BATCH_BYTES", 20_000_000, minimum=1024),
    )


def settings_from_environment(*, require_services: bool = True) -> Settings:
    """Read this process's environment (the only place that does)."""
    return load_settings(os.environ, require_services=require_services)


def load_ops_settings(environ: Mapping[str, str]) -> OpsSettings:
    """Read the dashboard credentials and the metrics settings."""
    port = _int(environ, "MASSMAILER_WORKER_METRICS_PORT", 0, minimum=0)
    if port > 65535:
        raise ConfigError(f"MASSMAILER_WORKER_METRICS_PORT must be a port number, got {port}")
    return OpsSettings(
        admin_user=environ.get("MASSMAILER_ADMIN_USER") or "admin",
        admin_password=environ.get("MASSMAILER_ADMIN_PASSWORD") or None,
        metrics_token=environ.get("MASSMAILER_METRICS_TOKEN") or None,
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


def _secret_key(environ: Mapping[str, str], require_services: bool) -> str:
    key = environ.get("MASSMAILER_SECRET_KEY") or environ.get("SECRET_KEY")
    if key:
        return key
    if require_services:
        # Only unsubscribe links are signed with it; a per-process random key would break them.
        return "insecure-development-key-set-MASSMAILER_SECRET_KEY"
    return "demo-secret"


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
    providers = tuple(parse_provider(entry, f"{source}[{i}]") for i, entry in enumerate(entries))
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


_PROVIDER_FIELDS = {f.name for f in fields(ProviderConfig)}


def parse_provider(entry: object, where: str) -> ProviderConfig:
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
    try:
        tls = TlsMode(entry.get("tls", "none"))
    except ValueError:
        raise ConfigError(f"{label}: 'tls' must be none, starttls or ssl") from None
    return ProviderConfig(
        name=_text(entry, "name", label),
        host=_text(entry, "host", label),
        port=_number(entry, "port", label, int, minimum=1, maximum=65535),
        tls=tls,
        username=_optional_text(entry, "username", label),
        password=_optional_text(entry, "password", label),
        weight=_number(entry, "weight", label, int, minimum=0, default=1),
        rate_per_second=_optional_number(entry, "rate_per_second", label, float),
        rate_per_day=_optional_number(entry, "rate_per_day", label, int),
        max_connections=_number(entry, "max_connections", label, int, minimum=1, default=10),
        timeout_seconds=_number(entry, "timeout_seconds", label, float, minimum=0.1, default=30.0),
        ca_file=_optional_text(entry, "ca_file", label),
    )


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
