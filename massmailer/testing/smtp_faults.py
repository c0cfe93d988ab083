"""What the fault-injecting SMTP server answers and what it records, apart from any socket.

`FaultState` is shared by the test thread and the server's event loop thread, so every read and
write of it holds one lock; what it does per message is a few counter updates and one append.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

COMMANDS = frozenset({"CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "AUTH", "RSET", "NOOP"})
HANG_UP = 0  # a Rule code meaning: close the TCP connection without replying
HANG_UP_REPLY = "000 hang up"  # never sent: the session closes the connection instead
# A DATA rule code meaning: store the message, then close the connection before the 250. The
# client cannot tell this from a lost message: the real window for a duplicate send.
STORE_THEN_HANG_UP = 1
STORE_THEN_HANG_UP_REPLY = "001 store then hang up"  # never sent either

DEFAULT_TEXT = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.1 Mailbox temporarily unavailable",
    451: "4.3.0 Temporary failure, try again later",
    452: "4.3.1 Insufficient system storage",
    530: "5.7.0 Authentication required",
    535: "5.7.8 Authentication credentials invalid",
    550: "5.1.1 User unknown",
    552: "5.3.4 Message size exceeds fixed limit",
    553: "5.1.3 Bad recipient address syntax",
    554: "5.7.1 Message rejected",
}


@dataclass(frozen=True)
class Rule:
    """Answer `command` with `code text` instead of the normal reply (code 0: hang up silently).

    `match` is a substring of the command's argument (an address, the EHLO name, the AUTH
    mechanism, the peer IP for CONNECT) or of the message for DATA, whose rule sets the reply
    after the message body. `probability` is drawn from the server's seeded generator;
    `times` caps how often the rule fires. An empty `text` takes the code's DEFAULT_TEXT.
    """

    command: str
    code: int
    text: str = ""
    probability: float = 1.0
    match: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(
                f"Rule.command must be one of {sorted(COMMANDS)}, not {self.command!r}"
            )
        if self.code == STORE_THEN_HANG_UP and self.command != "DATA":
            raise ValueError("Rule.code STORE_THEN_HANG_UP only applies to DATA")
        if self.code not in (HANG_UP, STORE_THEN_HANG_UP) and not 200 <= self.code <= 599:
            raise ValueError(f"Rule.code must be 0, 1 or an SMTP reply code, not {self.code}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Rule.probability must be within 0..1, not {self.probability}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"Rule.times must not be negative, not {self.times}")

    def matches(self, subject: str | bytes) -> bool:
        """Tell whether the rule applies to this argument or message."""
        if self.match is None:
            return True
        if isinstance(subject, bytes):
            return self.match.encode() in subject
        return self.match in subject

    def reply(self) -> str:
        """Return the reply line this rule sends."""
        if self.code == HANG_UP:
            return HANG_UP_REPLY
        if self.code == STORE_THEN_HANG_UP:
            return STORE_THEN_HANG_UP_REPLY
        return f"{self.code} {self.text or DEFAULT_TEXT.get(self.code, 'Rejected by rule')}"


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted message: the envelope, the raw data and the connection it came on."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection_id: int
    # When the message was accepted (time.monotonic()), so tests can measure a provider's rate.
    received_at: float = field(default_factory=time.monotonic, compare=False)

    def message(self) -> EmailMessage:
        """Parse the data, for assertions on headers and body."""
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


class FaultState:
    """The rules a server follows and what it has received; safe to use from any thread."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        seed: int | None = 0,
        hangup_after_data_probability: float = 0.0,
        keep_messages: bool = True,
    ) -> None:
        self.hangup_after_data_probability = hangup_after_data_probability
        self._keep_messages = keep_messages
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._rng = random.Random(seed)
        # Never reset, so ids stay unique across reset() within one server's life.
        self._connection_ids = itertools.count(1)
        self._queue_ids = itertools.count(1)
        self.set_rules(rules)
        self.reset()

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Replace the rules; the first rule that fires for a command decides its reply."""
        rules = tuple(rules)
        by_command: dict[str, list[tuple[int, Rule]]] = {}
        for index, rule in enumerate(rules):
            by_command.setdefault(rule.command, []).append((index, rule))
        with self._lock:
            self._rules = rules
            self._rules_by_command = by_command
            self._fired: Counter[int] = Counter()

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, in the order they are tried."""
        return self._rules

    def reset(self) -> None:
        """Forget stored messages, counters and how often each rule fired (the seed stays)."""
        with self._lock:
            self._messages: list[Received] = []
            self._accepted = 0
            self._stored_unacknowledged = 0
            self._connections = 0
            self._per_connection: Counter[int] = Counter()
            self._fired = Counter()

    @property
    def messages(self) -> list[Received]:
        """A copy of the accepted messages, oldest first."""
        with self._lock:
            return list(self._messages)

    @property
    def message_count(self) -> int:
        """How many messages were accepted (also when keep_messages is off)."""
        with self._lock:
            return self._accepted

    @property
    def stored_unacknowledged(self) -> int:
        """How many accepted messages the client never got a 250 for (STORE_THEN_HANG_UP)."""
        with self._lock:
            return self._stored_unacknowledged

    @property
    def connections(self) -> int:
        """How many TCP connections reached an SMTP session (implicit TLS: past the handshake)."""
        with self._lock:
            return self._connections

    @property
    def messages_per_connection(self) -> dict[int, int]:
        """Accepted messages by connection id (connections without messages are left out)."""
        with self._lock:
            return dict(self._per_connection)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least n messages were accepted; False if the timeout passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._accepted >= n, timeout)

    # -- called by the sessions, on the server's event loop thread ---------------------------

    def reply_for(self, command: str, subject: str | bytes) -> str | None:
        """Return the reply of the first rule that fires for this command, or None."""
        if not self._rules:
            return None
        with self._lock:
            for index, rule in self._rules_by_command.get(command, ()):
                if rule.times is not None and self._fired[index] >= rule.times:
                    continue
                if rule.matches(subject) and self._draw(rule.probability):
                    self._fired[index] += 1
                    return rule.reply()
        return None

    def hang_up_after_data(self) -> bool:
        """Draw whether to hang up instead of answering a received message."""
        if self.hangup_after_data_probability <= 0:
            return False
        with self._lock:
            return self._draw(self.hangup_after_data_probability)

    def open_connection(self) -> int:
        """Count a new TCP connection and return its id."""
        with self._lock:
            self._connections += 1
            return next(self._connection_ids)

    def accept(self, mail_from: str, rcpt_tos: list[str], data: bytes, connection_id: int) -> str:
        """Record an accepted message and return the 250 reply naming its queue id."""
        with self._changed:
            self._accepted += 1
            self._per_connection[connection_id] += 1
            if self._keep_messages:
                self._messages.append(Received(mail_from, rcpt_tos, data, connection_id))
            queue_id = next(self._queue_ids)
            self._changed.notify_all()
        return f"250 2.0.0 Ok: queued as {queue_id:010X}"

    def store_unacknowledged(
        self, mail_from: str, rcpt_tos: list[str], data: bytes, connection_id: int
    ) -> None:
        """Record a message as accepted whose 250 will never be sent."""
        self.accept(mail_from, rcpt_tos, data, connection_id)
        with self._lock:
            self._stored_unacknowledged += 1

    def _draw(self, probability: float) -> bool:
        # Draw only when it can matter, so a certain rule does not shift the later draws.
        return probability >= 1.0 or self._rng.random() < probability
