"""The demo's SMTP providers: two local fault-injecting servers, or servers the caller runs."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from massmailer.delivery.providers.base import ProviderConfig
from massmailer.testing.smtp_server import FaultSMTPServer, Rule

LOOPBACK = "127.0.0.1"
# Recipients whose local part holds this are unknown to every local provider: hard bounces.
UNKNOWN_USER_MARK = "nobody"
# Real providers answer each command in tens of milliseconds; a few here make the workers wait
# on the network as they do in production, so intake can outrun them and a backlog builds.
REPLY_LATENCY_SECONDS = 0.004


@dataclass
class LocalProvider:
    """A provider the demo sends to, and the server behind it when the demo started it."""

    config: ProviderConfig
    server: FaultSMTPServer | None = None

    def accepted(self) -> int | None:
        """Messages the server itself counted as accepted (None for a server run elsewhere)."""
        return None if self.server is None else self.server.message_count


def start_local_providers(flaky_share: float, seed: int = 0) -> list[LocalProvider]:
    """Start a steady and a flaky SMTP server on loopback; the flaky one answers 451 to a share."""
    # aiosmtpd logs a warning per session about its own deprecated attributes.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    bounce = Rule("RCPT", 550, match=UNKNOWN_USER_MARK)
    shaky = Rule("DATA", 451, probability=flaky_share)
    options = {"seed": seed, "latency_seconds": REPLY_LATENCY_SECONDS, "keep_messages": False}
    steady = FaultSMTPServer(LOOPBACK, rules=[bounce], **options)
    flaky = FaultSMTPServer(LOOPBACK, rules=[bounce, shaky], **options)
    started: list[LocalProvider] = []
    try:
        for name, server in (("steady", steady), ("flaky", flaky)):
            server.start()
            started.append(LocalProvider(_config(name, server.port), server))
    except BaseException:
        stop_providers(started)
        raise
    return started


def external_providers(ports: list[int]) -> list[LocalProvider]:
    """Providers for SMTP servers somebody else runs on loopback ports (tests, benchmarks)."""
    return [LocalProvider(_config(f"port{port}", port)) for port in ports]


def stop_providers(providers: list[LocalProvider]) -> None:
    """Stop the servers the demo started."""
    for provider in providers:
        if provider.server is not None:
            provider.server.stop()


def _config(name: str, port: int) -> ProviderConfig:
    return ProviderConfig(
        name=name, host=LOOPBACK, port=port, max_connections=4, timeout_seconds=10
    )
