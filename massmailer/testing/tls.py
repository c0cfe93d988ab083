"""A self-signed certificate for local TLS tests, made with the openssl command line."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path


def make_self_signed_cert(directory: str | os.PathLike[str]) -> tuple[str, str]:
    """Write cert.pem and key.pem for 127.0.0.1 and localhost into directory; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    # An EC key is generated in milliseconds, where RSA 2048 can take a noticeable share of a test.
    command = [
        "openssl", "req", "-x509", "-nodes", "-days", "7",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-keyout", str(key_path), "-out", str(cert_path),
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return str(cert_path), str(key_path)


def server_tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """Build the server side TLS context for a certificate and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context
