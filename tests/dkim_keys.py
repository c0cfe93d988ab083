"""DKIM test keys made in the test run (no key file is committed) and a stub DNS for dkimpy."""

from __future__ import annotations

from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from massmailer.delivery.dkim import DkimKey, PrivateKey, txt_record


@dataclass(frozen=True)
class DomainKeys:
    """An RSA and an Ed25519 key for one domain, and the TXT records that publish them."""

    domain: str
    rsa: DkimKey
    ed25519: DkimKey

    def records(self) -> dict[bytes, bytes]:
        return {
            f"{k.selector}._domainkey.{k.domain}.".encode(): txt_record(k.private_key).encode()
            for k in (self.rsa, self.ed25519)
        }


def make_keys(domain: str, rsa_bits: int = 2048) -> DomainKeys:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return DomainKeys(
        domain,
        DkimKey(domain, "s1", rsa_key),
        DkimKey(domain, "e1", ed25519.Ed25519PrivateKey.generate()),
    )


def pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def stub_dns(*key_sets: DomainKeys):
    """A dnsfunc for dkimpy answering the selectors' TXT records, and nothing else."""
    records: dict[bytes, bytes] = {}
    for keys in key_sets:
        records.update(keys.records())

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    return lookup


def signatures(message: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature, topmost first."""
    d = dkim.DKIM(message)
    found = [value for name, value in d.headers if name.lower() == b"dkim-signature"]
    return [dkim.util.parse_tag_value(value) for value in found]


def verify_each(message: bytes, dnsfunc) -> list[bool]:
    """dkimpy's verdict on each DKIM-Signature of message, topmost first."""
    return [_verify(message, i, dnsfunc) for i in range(len(signatures(message)))]


def _verify(message: bytes, idx: int, dnsfunc) -> bool:
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException:  # a body hash mismatch is raised, not returned
        return False
