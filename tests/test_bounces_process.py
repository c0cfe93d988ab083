"""The real `bounces` process, fed over SMTP the reports of mail a real worker sent.

Mail goes from the API through a Celery worker to the test SMTP server; the VERP senders and
Message-IDs it received are then quoted in real-shaped DSNs and ARF reports sent with smtplib to
`flask --app wsgi bounces serve`: a hard bounce, a delay, a complaint, an unmatched bounce, a
forged VERP address and a relay attempt.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from email import message_from_bytes

import pytest
from sqlalchemy import select

from massmailer.extensions import db
from massmailer.models import EmailEvent
from tests import infra
from tests.bounce_fixtures import fixture
from tests.processes import bounces_process, send_report, state
from tests.test_end_to_end import post, wait_for_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RECIPIENTS = ("gone@example.org", "slow@example.org", "angry@example.org", "victim@example.org")


@pytest.fixture
def env(env):
    return {
        **env,
        "MASSMAILER_FEEDBACK_ADDRESS": "fbl@massmailer.test",
        "MASSMAILER_BOUNCE_MAX_BYTES": "200000",
    }


def events(job_id: int) -> list[str]:
    rows = db.session.scalars(
        select(EmailEvent.type).where(EmailEvent.job_id == job_id).order_by(EmailEvent.id)
    )
    return list(rows)


def test_reports_fed_to_the_bounces_process_fail_suppress_or_change_nothing(
    client, auth, env, smtp_server
):
    job_ids = [post(client, auth, to=r, subject="December offers") for r in RECIPIENTS]
    with infra.running_worker(env):
        wait_for_status(job_ids)
    sent = {m.rcpt_tos[0]: m for m in smtp_server.messages}
    verp = {r: sent[r].mail_from for r in RECIPIENTS}
    message_id = {r: message_from_bytes(sent[r].data)["Message-ID"] for r in RECIPIENTS}
    forged = f"bounces+{job_ids[3]}-aaaaaaaaaa@massmailer.test"

    def report(name: str, rcpt: str, **values) -> bytes:
        values = {"verp": verp[rcpt], "message_id": message_id[rcpt], **values}
        return fixture(name, rcpt=rcpt, **values)

    with bounces_process(env) as port:
        hard = report("postfix_hard_5.1.1.eml", "gone@example.org")
        assert send_report(port, verp["gone@example.org"], hard).endswith("applied")
        assert send_report(port, verp["gone@example.org"], hard).endswith("duplicate")
        delay = report("postfix_delayed_4.4.1.eml", "slow@example.org")
        assert send_report(port, verp["slow@example.org"], delay).endswith("applied")
        complaint = report("arf_abuse.eml", "angry@example.org")
        assert send_report(port, "fbl@massmailer.test", complaint).endswith("applied")
        unknown = fixture("gmail_hard_5.1.1.eml", verp="bounces@massmailer.test")
        assert send_report(port, "bounces@massmailer.test", unknown).endswith("unmatched")
        fake = report("postfix_hard_5.1.1.eml", "victim@example.org", verp=forged)
        assert send_report(port, forged, fake).endswith("forged")
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
            smtp.ehlo("mx.example.net")
            smtp.mail("")
            assert smtp.rcpt("someone@example.com")[0] == 550  # not a relay
            assert smtp.rcpt("postmaster@massmailer.test")[0] == 550
            smtp.rset()
            smtp.mail("")
            smtp.rcpt("bounces@massmailer.test")
            assert smtp.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 3000)[0] == 552

    after = state()
    assert after["gone@example.org"][::2] == ("FAILED", "hard_bounce")
    assert after["gone@example.org"][1].startswith("bounced: 5.1.1")
    assert after["slow@example.org"] == ("SENT", None, None)
    assert after["angry@example.org"] == ("SENT", None, "complaint")
    assert after["victim@example.org"] == ("SENT", None, None)
    assert [events(j) for j in job_ids] == [
        ["accepted", "sent", "bounced"],
        ["accepted", "sent", "deferred"],
        ["accepted", "sent", "complained"],
        ["accepted", "sent"],
    ]
    listed = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "bounces", "unmatched"],
        cwd=infra.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "\tunmatched\tsmtp\tto=bounces@massmailer.test" in listed
    assert f"\tforged\tsmtp\tto={forged}" in listed
