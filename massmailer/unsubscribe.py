"""One-click unsubscribe (RFC 8058): signed links and the List-Unsubscribe headers.

A token names the address and the job it was sent for, signed with the secret key. It does not
expire: an unsubscribe link must keep working for as long as the message sits in a mailbox, so
after a key rotation the previous keys (MASSMAILER_SECRET_KEY_PREVIOUS) still verify old links.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "massmailer.unsubscribe"
PATH = "/unsubscribe/"
ONE_CLICK = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")


class BadToken(Exception):
    """A token that was not signed with our key or does not hold an address."""


@dataclass(frozen=True)
class Unsubscribe:
    """Who unsubscribes, and from which job's message."""

    address: str
    job_id: int | None


class UnsubscribeLinks:
    """Make and check unsubscribe tokens; build the headers of a marketing message."""

    def __init__(
        self,
        secret_key: str,
        public_url: str,
        mailto: str | None = None,
        previous_keys: Sequence[str] = (),
    ) -> None:
        # itsdangerous signs with the last key of the list and verifies with any of them.
        self._serializer = URLSafeSerializer(
            [*previous_keys, secret_key],
            salt=SALT,
            signer_kwargs={"digest_method": hashlib.sha256},
        )
        self._base = public_url.rstrip("/") + PATH
        self._mailto = mailto

    def token(self, address: str, job_id: int | None) -> str:
        """Return the signed token for this address and job."""
        return self._serializer.dumps([address.lower(), job_id])

    def url(self, address: str, job_id: int | None) -> str:
        """Return the https link (under MASSMAILER_PUBLIC_URL) that unsubscribes the address."""
        return self._base + self.token(address, job_id)

    def read(self, token: str) -> Unsubscribe:
        """Return what a token names; raise BadToken if it is forged or malformed."""
        try:
            value = self._serializer.loads(token)
        except BadSignature:
            raise BadToken("the link is not valid") from None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not (value[1] is None or type(value[1]) is int)
        ):
            raise BadToken("the link is not valid")
        return Unsubscribe(value[0], value[1])

    def headers(self, url: str) -> tuple[tuple[str, str], ...]:
        """List-Unsubscribe (the link, and mailto when configured) and List-Unsubscribe-Post."""
        targets = [f"<{url}>"]
        if self._mailto:
            token = url.rsplit("/", 1)[1]
            targets.append(
                f"<mailto:{quote(self._mailto, safe='@')}?subject=unsubscribe%20{token}>"
            )
        return (("List-Unsubscribe", ", ".join(targets)), ONE_CLICK)
