"""Chaos: the provider answers 421 for 30 s, hangs up mid-DATA, or stores and hangs up."""

from __future__ import annotations

import time

import pytest

from massmailer.testing.smtp_faults import HANG_UP, STORE_THEN_HANG_UP
from massmailer.testing.smtp_server import Rule
from tests import infra
from tests.chaos.harness import EMAILS, Fault, JobTable, judge, submit_batch
from tests.chaos.processes import BeatProcess, procfile_concurrency

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

CONCURRENCY = procfile_concurrency()


def run_with_provider_fault(
    client, auth, migrated, chaos_env, smtp_server, *, tag, fault_name, rules, lasts, bound
):
    """Send EMAILS; a quarter in, make the provider follow `rules` for `lasts` seconds."""
    job_ids = submit_batch(client, auth, tag, EMAILS)
    table = JobTable(migrated, job_ids)
    with BeatProcess(chaos_env), infra.running_worker(chaos_env, concurrency=CONCURRENCY) as w:
        table.wait_sent(EMAILS // 4, timeout=120)
        fault = Fault(fault_name)
        smtp_server.set_rules(rules)
        time.sleep(lasts)
        smtp_server.set_rules([])
        fault.end()
        settle = table.wait_settled(fault.mono_start, bound)
    verdict = judge(
        table, [smtp_server], fault, bound=bound, settle_seconds=settle, log_paths=[w.log_path]
    )
    return verdict


def test_provider_answering_421_for_30s_delays_but_loses_nothing(
    client, auth, migrated, chaos_env, smtp_server
):
    verdict = run_with_provider_fault(
        client,
        auth,
        migrated,
        chaos_env,
        smtp_server,
        tag="busy",
        fault_name="provider answers 421 for 30 s",
        rules=[Rule("MAIL", 421)],  # the server closes the connection after a 421 (RFC 5321)
        lasts=30,
        # The 30 s outage, then retries from the 10 s and 60 s delay tiers.
        bound=120.0,
    )
    # A 421 means nothing was stored: nothing may be sent twice.
    verdict.assert_holds(max_duplicates=0)
    assert verdict.statuses == {"SENT": EMAILS}, "a 30 s outage must not fail anything"


def test_provider_hanging_up_mid_data_loses_nothing(client, auth, migrated, chaos_env, smtp_server):
    verdict = run_with_provider_fault(
        client,
        auth,
        migrated,
        chaos_env,
        smtp_server,
        tag="hangup",
        fault_name="provider hangs up mid-DATA (30 % for 10 s)",
        # The message body is read, then the connection closes without a reply or a copy kept.
        rules=[Rule("DATA", HANG_UP, probability=0.3)],
        lasts=10,
        bound=60.0,
    )
    verdict.assert_holds(max_duplicates=0)
    assert verdict.statuses == {"SENT": EMAILS}


def test_provider_storing_then_hanging_up_resends_only_what_it_stored_unanswered(
    client, auth, migrated, chaos_env, smtp_server
):
    verdict = run_with_provider_fault(
        client,
        auth,
        migrated,
        chaos_env,
        smtp_server,
        tag="stored",
        fault_name="provider stores the message, hangs up before its 250 (20 % for 10 s)",
        rules=[Rule("DATA", STORE_THEN_HANG_UP, probability=0.2)],
        lasts=10,
        bound=60.0,
    )
    # The client cannot tell a stored-but-unanswered message from a lost one: each may be sent
    # again, and nothing else may.
    unanswered = smtp_server.stored_unacknowledged
    print(f"stored without a 250: {unanswered}")
    assert unanswered > 0, "the fault must have fired"
    verdict.assert_holds(max_duplicates=unanswered)
    assert verdict.statuses == {"SENT": EMAILS}
