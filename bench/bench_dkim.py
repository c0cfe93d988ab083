"""Print µs per message for DKIM-signing a typical message: rsa-2048, ed25519, both, and dkimpy.

Run: python bench/bench_dkim.py [count]. The keys are made for the run. dkimpy (the tests'
verifier, pure-Python RSA) is timed in the same run when it is installed, for the ratio.
"""

from __future__ import annotations

import sys
import time
from hashlib import sha256
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bench.bench_message import messages
from massmailer.delivery.dkim import DkimKey, DkimSigner, relaxed_body, split_message
from massmailer.delivery.message import build_message


def per_message_us(sign, batch: list[bytes]) -> float:
    """Return the mean µs per message of sign over batch (best of three rounds)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for data in batch:
            sign(data)
        best = min(best, time.perf_counter() - start)
    return best / len(batch) * 1e6


def signing(keys: list[DkimKey]):
    """Sign with MassMailer's signer, as JobSender does for each try."""
    signer = DkimSigner(keys)
    return lambda data: signer.sign(data, "shop@example.com")


def dkimpy_signer(key: rsa.RSAPrivateKey):
    """dkimpy's sign() with the same key and header list, or None without dkimpy."""
    try:
        import dkim
    except ImportError:
        return None
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    headers = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version"]
    return lambda data: dkim.sign(
        data,
        b"s1",
        b"example.com",
        pem,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=headers,
    )


def main() -> None:
    """Print µs per message for each way of signing the same batch."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    batch = [build_message(m) for m in messages(count, "Zoë Ångström", "Your order — Grüße")]
    rsa_key = DkimKey("example.com", "s1", rsa.generate_private_key(65537, 2048))
    ed_key = DkimKey("example.com", "e1", ed25519.Ed25519PrivateKey.generate())
    size = sum(map(len, batch)) // len(batch)
    print(f"{count} messages of about {size} bytes (text + html, non-ASCII headers)")
    cases = {
        "body canonicalised + hashed": lambda d: sha256(relaxed_body(split_message(d)[1])),
        "rsa-2048 (cryptography)": signing([rsa_key]),
        "ed25519 (cryptography)": signing([ed_key]),
        "rsa-2048 + ed25519": signing([rsa_key, ed_key]),
    }
    for label, sign in cases.items():
        print(f"{label:32} {per_message_us(sign, batch):8.1f} µs/message")
    slow = dkimpy_signer(rsa_key.private_key)
    if slow is not None:
        few = batch[: max(1, count // 10)]
        print(f"{'rsa-2048 (dkimpy, pure Python)':32} {per_message_us(slow, few):8.1f} µs/message")


if __name__ == "__main__":
    main()
