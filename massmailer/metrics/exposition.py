"""Build the registry a host exposes and check the optional scrape token."""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


class _ProcessCollector(Collector):
    """This process's own registry, for hosts that run without PROMETHEUS_MULTIPROC_DIR."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def host_registry(multiproc_dir: str | None, *extra: Collector) -> CollectorRegistry:
    """The host's counters (merged over its processes when multiproc_dir is set), plus extra."""
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        os.makedirs(multiproc_dir, exist_ok=True)  # no process has counted anything yet
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry.register(_ProcessCollector())
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of registry."""
    return generate_latest(registry)


def token_accepted(authorization: str | None, token: str | None) -> bool:
    """Tell whether an Authorization header carries the scrape token (Bearer, or Basic password).

    No token configured means the endpoint is open.
    """
    if not token:
        return True
    scheme, _, value = (authorization or "").partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))
