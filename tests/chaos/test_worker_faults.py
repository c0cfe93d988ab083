"""Chaos: the worker process is killed, stopped for a deploy, or runs on a clock 5 s ahead."""

from __future__ import annotations

import pytest

from massmailer.testing.smtp_server import Rule
from tests import infra
from tests.chaos.harness import EMAILS, Fault, JobTable, judge, submit_batch
from tests.chaos.processes import BeatProcess, clock_ahead, procfile_concurrency

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

CONCURRENCY = procfile_concurrency()
# Heroku sends SIGTERM to a dyno's processes on a deploy and SIGKILL 30 s later.
DEPLOY_GRACE_SECONDS = 30


def test_sigkill_of_the_worker_loses_nothing(client, auth, migrated, chaos_env, smtp_server):
    job_ids = submit_batch(client, auth, "kill", EMAILS)
    table = JobTable(migrated, job_ids)
    # Lease 12 s + sweep 2 s + a worker start-up: ~20 s on a quiet machine, 45 s measured with
    # the machine's load average at 40.
    bound = 90.0

    with BeatProcess(chaos_env):
        first = infra.WorkerProcess(chaos_env, concurrency=CONCURRENCY).start()
        try:
            table.wait_sent(EMAILS // 4, timeout=120)
        finally:
            fault = Fault("SIGKILL of the worker", lookahead=1.0)
            first.kill_hard()
            fault.recorded = table.settled_ids()
        with infra.running_worker(chaos_env, concurrency=CONCURRENCY) as second:
            settle = table.wait_settled(fault.mono_start, bound)

    verdict = judge(
        table,
        [smtp_server],
        fault,
        bound=bound,
        settle_seconds=settle,
        log_paths=[first.log_path, second.log_path],
    )
    verdict.assert_holds()


def test_sigterm_of_the_worker_for_a_deploy_loses_nothing(
    client, auth, migrated, chaos_env, smtp_server
):
    job_ids = submit_batch(client, auth, "deploy", EMAILS)
    table = JobTable(migrated, job_ids)
    # The old worker's exit (its chunks stop starting sends within a 7 s budget), a lease of 12 s
    # for what it held, a start-up, with room for a loaded machine (as the SIGKILL case).
    bound = 90.0

    with BeatProcess(chaos_env):
        old = infra.WorkerProcess(chaos_env, concurrency=CONCURRENCY).start()
        try:
            table.wait_sent(EMAILS // 4, timeout=120)
        finally:
            fault = Fault("SIGTERM of the worker (deploy, SIGKILL 30 s later)", lookahead=1.0)
            old.stop(timeout=DEPLOY_GRACE_SECONDS)  # SIGTERM to the group, SIGKILL at 30 s
            fault.end()
            fault.recorded = table.settled_ids()
        with infra.running_worker(chaos_env, concurrency=CONCURRENCY) as new:
            settle = table.wait_settled(fault.mono_start, bound)

    verdict = judge(
        table,
        [smtp_server],
        fault,
        bound=bound,
        settle_seconds=settle,
        log_paths=[old.log_path, new.log_path],
    )
    print(f"old worker exited {fault.mono_end - fault.mono_start:.1f}s after SIGTERM")
    verdict.assert_holds()


def test_one_worker_clock_5s_ahead_loses_and_duplicates_nothing(
    client, auth, migrated, chaos_env, smtp_server
):
    # Providers answer 451 now and then: retries cross between the two workers, so due times set
    # on one clock are judged on the other.
    smtp_server.set_rules([Rule("DATA", 451, probability=0.1)])
    job_ids = submit_batch(client, auth, "clock", EMAILS)
    table = JobTable(migrated, job_ids)
    # The run and a few 10 s retry rounds: 45 s measured with the leases branch merged while the
    # machine's load average was 30.
    bound = 75.0

    fault = Fault("one worker's clock 5 s ahead")
    with (
        BeatProcess(chaos_env),
        infra.running_worker(chaos_env, concurrency=2) as normal,
        infra.running_worker(clock_ahead(chaos_env, 5), concurrency=2) as ahead,
    ):
        table.wait_sent(EMAILS // 2, timeout=120)
        smtp_server.set_rules([])
        settle = table.wait_settled(fault.mono_start, bound)
        fault.end()

    verdict = judge(
        table,
        [smtp_server],
        fault,
        bound=bound,
        settle_seconds=settle,
        log_paths=[normal.log_path, ahead.log_path],
    )
    # Nothing here stores a message without answering it: a skewed clock alone must not resend.
    verdict.assert_holds(max_duplicates=0)
