"""The store-then-hang-up fault: the server keeps the message, the client never sees its 250."""

from __future__ import annotations

import smtplib

import pytest

from massmailer.testing.smtp_faults import STORE_THEN_HANG_UP
from massmailer.testing.smtp_server import FaultSMTPServer, Rule

pytestmark = pytest.mark.integration

MESSAGE = b"From: a@sender.test\r\nTo: b@rcpt.test\r\nSubject: hi\r\n\r\nbody\r\n"


def test_a_stored_message_whose_250_never_comes_looks_lost_to_the_client():
    rule = Rule("DATA", STORE_THEN_HANG_UP, times=1)
    with FaultSMTPServer(rules=[rule]) as server:
        client = smtplib.SMTP(server.host, server.port, timeout=5)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail("s@sender.test", ["first@rcpt.test"], MESSAGE)
        client.close()
        # The rule fired once: the next session is served normally.
        with smtplib.SMTP(server.host, server.port, timeout=5) as again:
            again.sendmail("s@sender.test", ["first@rcpt.test"], MESSAGE)

        assert [m.rcpt_tos for m in server.messages] == [["first@rcpt.test"]] * 2
        assert server.stored_unacknowledged == 1


def test_store_then_hang_up_is_a_data_rule_only():
    with pytest.raises(ValueError, match="only applies to DATA"):
        Rule("RCPT", STORE_THEN_HANG_UP)
