"""SSRF guard: a webhook goes only to a public address, over https, checked after DNS.

`resolve_target` parses the URL, refuses what is not ours to reach, resolves the name once and
checks every address it got; the client then connects to the checked address itself (with the
name as Host and TLS SNI), so a DNS answer that changes between check and connect (rebinding)
changes nothing. No connection is opened here.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_CHARS = 2000
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# A host whose last label is a number is an IPv4 address to a URL parser (WHATWG "ends in a
# number"): 2130706433, 0x7f.1, 0177.0.0.1, 127.1 all mean 127.0.0.1 to someone.
_NUMERIC_LAST_LABEL = re.compile(r"(^|\.)(0x[0-9a-f]*|[0-9]+)\.?$")


class RefusedTarget(Exception):
    """The URL or an address it resolves to may not receive webhooks; the message says why."""


@dataclass(frozen=True)
class Target:
    """Where one try goes: the checked address, and the name for Host and SNI."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def check_url(url: object, *, allow_private: bool) -> tuple[str, str, int, str]:
    """Parse and check the URL itself; return (scheme, host, port, path-and-query)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise RefusedTarget(f"must be a URL of at most {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise RefusedTarget("must be an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise RefusedTarget("must not carry credentials")
    if parts.fragment:
        raise RefusedTarget("must not have a fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise RefusedTarget("has an invalid port") from exc
    host = (parts.hostname or "").rstrip(".")
    if not host or any(ord(c) < 33 or c in "\\%" for c in host):
        raise RefusedTarget("must name a host")
    if ":" not in host and _NUMERIC_LAST_LABEL.search(host):
        _canonical_ipv4(host)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path


def _canonical_ipv4(host: str) -> None:
    try:
        ipaddress.IPv4Address(host)  # dotted quad, no leading zeros
    except ValueError as exc:
        raise RefusedTarget("uses a decimal, octal or hex IP address form") from exc


def check_address(raw: str) -> Address:
    """Refuse an address that is not public unicast; return it parsed."""
    address = ipaddress.ip_address(raw.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            check_address(str(embedded))
    if address in _METADATA:
        raise RefusedTarget("is a cloud metadata address")
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        raise RefusedTarget("is a shared (CGNAT) address")
    if (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or not address.is_global
    ):
        raise RefusedTarget(f"resolves to a non-public address ({address})")
    return address


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (one lookup)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedTarget(f"host {host!r} does not resolve") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def resolve_target(
    url: str, *, allow_private: bool, resolver: Resolver = system_resolver
) -> Target:
    """Check the URL, resolve its host once, check every address; pick the first."""
    scheme, host, port, path = check_url(url, allow_private=allow_private)
    addresses = resolver(host, port)
    if not addresses:
        raise RefusedTarget(f"host {host!r} does not resolve")
    if not allow_private:
        for raw in addresses:  # one bad answer refuses all: a mixed answer is an attack
            check_address(raw)
    return Target(scheme, host, port, path, addresses[0])
