"""One HTTP POST of a webhook to the address the guard checked; no redirects, no proxies.

http.client follows no redirects and reads no proxy variables. The socket goes to
`target.address`; the Host header and TLS SNI (and certificate check) use `target.host`.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass

from massmailer.webhooks.guard import Target

TIMEOUT_SECONDS = 15.0
MAX_ERROR_CHARS = 500
USER_AGENT = "MassMailer-Webhooks/1"


@dataclass(frozen=True)
class TryResult:
    """What one try got: an HTTP status (None when no answer), Retry-After, error, duration."""

    status: int | None
    retry_after: str | None
    error: str | None
    duration_ms: int


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout: float = TIMEOUT_SECONDS,
    context: ssl.SSLContext | None = None,
) -> TryResult:
    """POST body to the target once; every failure is a result, never an exception.

    `context`: the TLS context (tests pass one trusting their own CA); certificates are verified.
    """
    if target.scheme == "https":
        connection: http.client.HTTPConnection = _PinnedHTTPSConnection(
            target, timeout, context or ssl.create_default_context()
        )
    else:
        connection = _PinnedHTTPConnection(target, timeout)
    started = time.monotonic()
    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    try:
        connection.request("POST", target.path, body=body, headers=all_headers)
        response = connection.getresponse()
        response.read(64 * 1024)  # drain a little; the body is not kept
        return TryResult(response.status, response.getheader("Retry-After"), None, _ms(started))
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        return TryResult(None, None, error, _ms(started))
    finally:
        connection.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
