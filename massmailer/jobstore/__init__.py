"""Every state change of email_jobs, each one guarded statement (compare-and-set)."""

from massmailer.jobstore.batch_jobs import (
    BatchStats,
    batch_stats,
    cancel_batch,
    cancel_if_batch_cancelled,
)
from massmailer.jobstore.batch_marks import confirm_batch, unmark_lapsed
from massmailer.jobstore.bounced import fail_bounced, log_report
from massmailer.jobstore.core import (
    CLOCK_TOLERANCE,
    LEASE_GRACE_SECONDS,
    ClaimedJob,
    Dispatch,
    attempts_table,
    cancel,
    claim,
    claimable,
    count_by_status,
    jobs,
    release,
    renew,
    stamp_enqueued,
    take_lost,
)
from massmailer.jobstore.events import event, log_unsubscribed, update_logging
from massmailer.jobstore.maintenance import (
    EXPIRED,
    FINAL_STATUSES,
    compact_job_counts,
    expire_overdue,
    housekeep,
    purge_events,
    purge_final,
    requeue_failed,
)
from massmailer.jobstore.outcome_writes import OutcomeRow, record_attempts, write_outcomes

__all__ = [
    "CLOCK_TOLERANCE",
    "EXPIRED",
    "FINAL_STATUSES",
    "LEASE_GRACE_SECONDS",
    "BatchStats",
    "ClaimedJob",
    "Dispatch",
    "OutcomeRow",
    "attempts_table",
    "batch_stats",
    "cancel",
    "cancel_batch",
    "cancel_if_batch_cancelled",
    "claim",
    "claimable",
    "compact_job_counts",
    "confirm_batch",
    "count_by_status",
    "event",
    "expire_overdue",
    "fail_bounced",
    "housekeep",
    "jobs",
    "log_report",
    "log_unsubscribed",
    "purge_events",
    "purge_final",
    "record_attempts",
    "release",
    "renew",
    "requeue_failed",
    "stamp_enqueued",
    "take_lost",
    "unmark_lapsed",
    "update_logging",
    "write_outcomes",
]
