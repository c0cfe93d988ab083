"""Pure webhook policy: the SSRF guard's table, Standard Webhooks signatures, the backoff.

The guard is tested with IP literals and a resolver that answers from a table: no test here
opens a connection or sends a DNS query, and a refused URL is refused before any socket exists.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook

from massmailer.testing.tls import make_self_signed_cert, server_tls_context
from massmailer.webhooks import client, policy, signing
from massmailer.webhooks.guard import RefusedTarget, Target, check_address, resolve_target

NAMES = {
    "public.example": ["93.184.215.14"],
    "rebind.example": ["93.184.215.14", "127.0.0.1"],  # one bad answer refuses the name
    "metadata.example": ["169.254.169.254"],
    "private6.example": ["fd00:ec2::254"],
}


def table_resolver(host: str, port: int) -> list[str]:
    if host in NAMES:
        return NAMES[host]
    return [host.strip("[]")]  # an IP literal


@pytest.fixture(autouse=True)
def no_connections(monkeypatch):
    """Any socket opened by the guard fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the guard opened a connection")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/hook", "non-public"),
        ("https://10.0.0.8/hook", "non-public"),
        ("https://172.16.5.4/", "non-public"),
        ("https://192.168.1.1/", "non-public"),
        ("https://100.64.0.1/", "CGNAT"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://169.254.1.1/", "non-public"),
        ("https://0.0.0.0/", "non-public"),
        ("https://224.0.0.1/", "non-public"),
        ("https://255.255.255.255/", "non-public"),
        ("https://[::1]/", "non-public"),
        ("https://[::]/", "non-public"),
        ("https://[fe80::1]/", "non-public"),
        ("https://[fc00::1]/", "non-public"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://[ff02::1]/", "non-public"),
        ("https://[::ffff:127.0.0.1]/", "non-public"),
        ("https://[::ffff:169.254.169.254]/", "metadata"),
        ("https://[64:ff9b::a00:1]/", "non-public"),
        ("https://[2002:7f00:1::]/", "non-public"),
        ("https://2130706433/", "decimal, octal or hex"),
        ("https://0x7f000001/", "decimal, octal or hex"),
        ("https://0177.0.0.1/", "decimal, octal or hex"),
        ("https://0x7f.1/", "decimal, octal or hex"),
        ("https://127.1/", "decimal, octal or hex"),
        ("https://rebind.example/", "non-public"),
        ("https://metadata.example/", "metadata"),
        ("https://private6.example/", "metadata"),
        ("http://public.example/", "https://"),
        ("ftp://public.example/", "https://"),
        ("https://user:pw@public.example/", "credentials"),
        ("https:///nohost", "host"),
        ("https://public.example:99999/", "port"),
    ],
)
def test_the_guard_refuses_before_any_connection(url, why):
    with pytest.raises(RefusedTarget, match=why):
        resolve_target(url, allow_private=False, resolver=table_resolver)


@pytest.mark.parametrize(
    "url",
    ["https://public.example/hooks?x=1", "https://93.184.215.14:8443/", "https://[2606:4700::1]/"],
)
def test_the_guard_admits_public_https_and_pins_the_checked_address(url):
    target = resolve_target(url, allow_private=False, resolver=table_resolver)

    check_address(target.address)
    assert target.scheme == "https"


def test_allow_private_admits_http_and_loopback_but_not_numeric_forms():
    target = resolve_target("http://127.0.0.1:8080/x", allow_private=True, resolver=table_resolver)

    assert (target.address, target.port, target.path) == ("127.0.0.1", 8080, "/x")
    with pytest.raises(RefusedTarget):
        resolve_target("http://2130706433/", allow_private=True, resolver=table_resolver)


def test_a_name_is_connected_by_the_checked_address_with_its_name_as_host(monkeypatch):
    """DNS rebinding: the socket goes to the address the guard checked, not a new lookup."""
    target = resolve_target(
        "https://public.example/h", allow_private=False, resolver=table_resolver
    )
    dialled = []

    def record(address, timeout=None, *args):
        dialled.append(address)
        raise ConnectionRefusedError("not really connecting")

    monkeypatch.setattr(socket, "create_connection", record)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [(0, 0, 0, "", ("10.0.0.1", 443))])

    result = client.post(target, b"{}", {})

    assert dialled == [("93.184.215.14", 443)]
    assert result.status is None and "ConnectionRefusedError" in result.error


def test_signatures_verify_with_the_standardwebhooks_package():
    secret = signing.new_secret()
    body = json.dumps({"type": "email.sent", "timestamp": "2026-12-01T00:00:00Z", "data": {}})
    now = int(time.time())
    headers = signing.headers(secret, "msg_1", now, body.encode())

    assert Webhook(secret).verify(body, headers) == json.loads(body)
    assert secret.startswith("whsec_") and headers["webhook-signature"].startswith("v1,")


def test_a_signature_made_with_another_secret_does_not_verify():
    body = b'{"type":"email.sent"}'
    headers = signing.headers(signing.new_secret(), "msg_1", int(time.time()), body)

    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook(signing.new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    ("attempts", "retry_after", "expected"),
    [
        (1, None, 5.0),
        (2, None, 15.0),
        (3, None, 45.0),
        (20, None, 12 * 3600.0),
        (1, 120.0, 120.0),  # Retry-After asks for longer: honoured
        (3, 1.0, 45.0),  # asks for shorter: the backoff stands
        (1, 10 * 86400.0, 86400.0),  # bounded to a day
    ],
)
def test_backoff_starts_near_5_s_grows_and_honours_retry_after(attempts, retry_after, expected):
    assert policy.backoff_delay(attempts, retry_after) == expected


def test_retries_span_about_three_days_then_give_up():
    age, attempts = 0.0, 0
    while True:
        attempts += 1
        delay = policy.backoff_delay(attempts)
        if policy.gives_up(age, delay):
            break
        age += delay

    assert 2 * 86400 < age <= 3 * 86400
    assert 10 <= attempts <= 20


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "delivered"), (204, "delivered"), (410, "disabled"), (503, "retry"), (301, "retry"),
     (None, "retry")],
)  # fmt: skip
def test_outcome_of_a_status(status, outcome):
    assert policy.outcome_of(status) == outcome


def test_retry_after_accepts_seconds_only():
    assert policy.parse_retry_after(" 30 ") == 30.0
    assert policy.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert policy.parse_retry_after(None) is None


@pytest.fixture
def tls_receiver(tmp_path, monkeypatch):
    """A local HTTPS server (certificate for `localhost`) that records SNI and Host."""
    monkeypatch.undo()  # lift no_connections: these tests connect, to 127.0.0.1 only
    cert, key = make_self_signed_cert(tmp_path)
    server_context = server_tls_context(cert, key)
    seen: dict[str, object] = {}
    server_context.sni_callback = lambda sock, name, ctx: seen.__setitem__("sni", name)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen["host"] = self.headers["Host"]
            seen["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], ssl.create_default_context(cafile=cert), seen
    server.shutdown()
    server.server_close()


def test_https_goes_to_the_pinned_address_with_the_name_as_host_and_sni(tls_receiver):
    port, context, seen = tls_receiver
    target = Target("https", "localhost", port, "/hooks", "127.0.0.1")

    result = client.post(target, b"{}", {"webhook-id": "msg_1"}, context=context)

    assert result.status == 204, result.error
    assert seen == {"sni": "localhost", "host": f"localhost:{port}", "body": b"{}"}


def test_a_certificate_for_another_name_fails_the_try(tls_receiver):
    port, context, _ = tls_receiver
    target = Target("https", "hooks.example", port, "/hooks", "127.0.0.1")

    result = client.post(target, b"{}", {}, context=context)

    assert result.status is None
    assert result.error.startswith("SSLCertVerificationError")
