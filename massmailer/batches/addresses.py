"""Recipient addresses of a batch: a fast path for plain ASCII addresses, else validation's rules.

`validation.parse_address` costs ~10-20 µs an address (display names, quoting, IDNA); ten
thousand of them were a large share of a batch's intake. Nearly every batch address is a plain
`local@domain` in ASCII: one regular expression accepts exactly those that `parse_address` would
accept unchanged (tests/test_batch_variables.py compares the two), and anything else goes the
full way.
"""

from __future__ import annotations

import re

from massmailer.validation import MAX_ADDRESS, MAX_DOMAIN, MAX_LOCAL_PART, parse_address

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# Whole-string match: a dot-atom local part, and a domain of two or more labels whose last label
# is not all digits (so it is not an IP address).
_PLAIN = re.compile(
    rf"({_ATEXT}(?:\.{_ATEXT})*)@((?:{_LABEL}\.)+(?=[A-Za-z0-9-]*[A-Za-z-]){_LABEL})",
    re.ASCII,
)


def parse_recipient(value: object, field: str) -> tuple[str | None, str]:
    """Return (display name or None, address) exactly as validation.parse_address does."""
    if isinstance(value, str) and len(value) <= MAX_ADDRESS:
        match = _PLAIN.fullmatch(value)
        if match and len(match[1]) <= MAX_LOCAL_PART and len(match[2]) <= MAX_DOMAIN:
            domain = match[2]
            return None, value if domain.islower() else f"{match[1]}@{domain.lower()}"
    return parse_address(value, field)
