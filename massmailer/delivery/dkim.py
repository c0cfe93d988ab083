"""DKIM signatures (RFC 6376; ed25519-sha256 from RFC 8463), relaxed/relaxed, signed by OpenSSL.

dkimpy signs RSA in pure Python (~8 ms a 2048-bit signature); `cryptography` hands it to OpenSSL
(~0.4 ms), and the canonicalisation here is a few regular expressions over bytes. The message is
signed just before it goes to a provider (`JobSender._try`): the provider decides which headers
stay out of h= (SES rewrites Message-ID and Date), and t= is the time of sending.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

PrivateKey = RSAPrivateKey | Ed25519PrivateKey

# What build_message writes that a receiver shows or acts on, in h= order. RFC 8058 wants the
# List-Unsubscribe pair signed for one-click unsubscribe. Only the headers present are listed.
SIGNED_HEADERS = (
    "from",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
# Listed once more than present, so a From added on the way breaks the signature (RFC 6376 8.15).
OVERSIGNED = frozenset({"from"})
MIN_RSA_BITS = 1024  # RFC 8301 3.2: signers MUST use at least 1024 bits (2048 recommended)
_FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters

_BARE_EOL = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# A WSP run that is not already one SP: single spaces, the common case, are left alone (faster).
_WSP_RUN = re.compile(rb"(?: [ \t]|\t)[ \t]*")
_WSP_BEFORE_EOL = re.compile(rb" \r\n")
_EOL = re.compile(rb"\r\n")


@dataclass(frozen=True)
class DkimKey:
    """One configured signing key: the d= domain, the s= selector and the parsed private key."""

    domain: str
    selector: str
    private_key: PrivateKey = field(repr=False)

    @property
    def algorithm(self) -> str:
        """The a= tag: rsa-sha256 or ed25519-sha256."""
        return "ed25519-sha256" if isinstance(self.private_key, Ed25519PrivateKey) else "rsa-sha256"


def load_private_key(pem: bytes) -> PrivateKey:
    """Parse an unencrypted PEM RSA or Ed25519 key; ValueError says why not (never the key)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError("is encrypted; give the key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("is not a PEM private key") from None
    if isinstance(key, RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"is a {key.key_size}-bit RSA key; DKIM needs {MIN_RSA_BITS}+")
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key
    raise ValueError("is neither an RSA nor an Ed25519 key")


def txt_record(key: PrivateKey) -> str:
    """The selector's TXT record: "v=DKIM1; k=rsa; p=<public key>" (RFC 6376 3.6.1, RFC 8463)."""
    public = key.public_key()
    if isinstance(key, Ed25519PrivateKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


# --- canonicalisation (RFC 6376 3.4) ---------------------------------------------------------


def crlf(data: bytes) -> bytes:
    """Return data with every line ending CRLF (what is signed is what is sent)."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs == data.count(b"\r"):
        return data  # the common case (build_message writes CRLF), found without a regex scan
    return _BARE_EOL.sub(b"\r\n", data)


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP runs to one SP, none at line ends, no empty lines at the end."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    body = _WSP_BEFORE_EOL.sub(b"\r\n", _WSP_RUN.sub(b" ", body))
    body = body.rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def relaxed_header(field_: bytes) -> bytes:
    """RFC 6376 3.4.2: lowercase name, unfolded, WSP runs to one SP, trimmed, ending CRLF."""
    name, _, value = field_.partition(b":")
    value = _WSP_RUN.sub(b" ", _EOL.sub(b"", value)).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """Split CRLF message bytes into header fields (folds kept) and the body."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields, body


def field_name(field_: bytes) -> str:
    """The lowercase name of a header field."""
    return field_.partition(b":")[0].rstrip(b" \t").decode("ascii", "replace").lower()


def signed_names(present: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """The h= list: the fixed headers present (each as often as it occurs), From over-signed."""
    counts: dict[str, int] = {}
    for name in present:
        counts[name] = counts.get(name, 0) + 1
    if "from" not in counts:
        raise ValueError("a message without From cannot be DKIM-signed")
    skipped = set(exclude) - OVERSIGNED  # From is never left out (RFC 6376 5.4)
    names: list[str] = []
    for name in SIGNED_HEADERS:
        if name in counts and name not in skipped:
            names += [name] * (counts[name] + (name in OVERSIGNED))
    return names


def hashed_headers(fields: list[bytes], names: list[str]) -> bytes:
    """The canonical fields h= names, in h= order, each from the bottom up (RFC 6376 5.4.2)."""
    by_name: dict[str, list[bytes]] = {}
    for field_ in fields:
        by_name.setdefault(field_name(field_), []).append(field_)
    # A name listed more often than it occurs (over-signing) adds nothing the extra times.
    return b"".join(relaxed_header(by_name[n].pop()) for n in names if by_name.get(n))


# --- signing ---------------------------------------------------------------------------------


class DkimSigner:
    """Prepend DKIM-Signature headers for the From domain's keys (parsed once, by config.py)."""

    def __init__(self, keys: Iterable[DkimKey], clock: Callable[[], float] = time.time) -> None:
        self._keys: dict[str, list[DkimKey]] = {}
        # RSA on top: the signature every verifier understands comes first.
        for key in sorted(keys, key=lambda k: k.algorithm != "rsa-sha256"):
            self._keys.setdefault(key.domain.lower(), []).append(key)
        self._clock = clock

    def __bool__(self) -> bool:
        return bool(self._keys)

    def keys_for(self, from_addr: str) -> list[DkimKey]:
        """The keys that sign mail from this address: those of its exact domain."""
        return self._keys.get(from_addr.rpartition("@")[2].lower(), [])

    def sign(self, data: bytes, from_addr: str, exclude: Iterable[str] = ()) -> bytes:
        """Return data (CRLF line ends) with a DKIM-Signature per key of from_addr's domain.

        Unchanged when the domain has no key. `exclude` names headers to leave out of h=
        (a provider that rewrites them); From is always signed.
        """
        keys = self.keys_for(from_addr)
        if not keys:
            return data
        data = crlf(data)
        fields, body = split_message(data)
        names = signed_names(map(field_name, fields), exclude)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        hashed = hashed_headers(fields, names)
        now = int(self._clock())
        return b"".join(_signature(key, names, body_hash, hashed, now) for key in keys) + data


def _signature(key: DkimKey, names: list[str], body_hash: str, hashed: bytes, now: int) -> bytes:
    """One DKIM-Signature field (CRLF-terminated) signing the hashed headers and itself."""
    # h= may fold before a colon (RFC 6376 3.5: [FWS] ":" [FWS]), so each ":name" is a token.
    h_list = [f"h={names[0]}", *(f":{name}" for name in names[1:])]
    h_list[-1] += ";"
    tokens = [
        ("", "DKIM-Signature: v=1;"),
        (" ", f"a={key.algorithm};"),
        (" ", "c=relaxed/relaxed;"),
        (" ", f"d={key.domain};"),
        (" ", f"s={key.selector};"),
        (" ", f"t={now};"),
        (" ", h_list[0]),
        *(("", piece) for piece in h_list[1:]),
        (" ", f"bh={body_hash};"),
        (" ", "b="),
    ]
    unsigned = _fold(tokens)
    # The signature covers this very field with b= empty, canonical and without its CRLF.
    signed_data = hashed + relaxed_header(unsigned.encode("ascii"))[:-2]
    signature = base64.b64encode(_sign(key.private_key, signed_data)).decode()
    # Verifiers drop b= with its whitespace before hashing: its value folds anywhere.
    pieces = [("", signature[i : i + 64]) for i in range(0, len(signature), 64)]
    column = len(unsigned.rpartition("\n")[2])
    return (unsigned + _fold(pieces, column) + "\r\n").encode("ascii")


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        # RFC 8463 3: Ed25519 signs the SHA-256 hash of the data, not the data.
        return key.sign(hashlib.sha256(data).digest())
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _fold(tokens: list[tuple[str, str]], column: int = 0) -> str:
    """Join (separator, text) tokens, starting a new line (CRLF SP) where one would pass 78."""
    out: list[str] = []
    for sep, text in tokens:
        if (out or column) and column + len(sep) + len(text) > _FOLD_AT:
            out.append("\r\n ")
            column, sep = 1, ""
        out.append(sep + text)
        column += len(sep) + len(text)
    return "".join(out)
