"""Every state change of email_jobs, each one guarded statement (compare-and-set)."""

from massmailer.jobstore.batch_jobs import (
    BatchStats,
    batch_stats,
    cancel_batch,
    cancel_if_batch_cancelled,
)
from massmailer.jobstore.core import (
    CLOCK_TOLERANCE,
    ClaimedJob,
    Dispatch,
    attempts_table,
    cancel,
    claim,
    claimable,
    count_by_status,
    jobs,
    mark_failed,
    mark_retry,
    mark_sent,
    record_attempts,
    release,
    stamp_enqueued,
    take_lost,
)
from massmailer.jobstore.maintenance import FINAL_STATUSES, purge_final, requeue_failed

__all__ = [
    "CLOCK_TOLERANCE",
    "FINAL_STATUSES",
    "BatchStats",
    "ClaimedJob",
    "Dispatch",
    "attempts_table",
    "batch_stats",
    "cancel",
    "cancel_batch",
    "cancel_if_batch_cancelled",
    "claim",
    "claimable",
    "count_by_status",
    "jobs",
    "mark_failed",
    "mark_retry",
    "mark_sent",
    "purge_final",
    "record_attempts",
    "release",
    "requeue_failed",
    "stamp_enqueued",
    "take_lost",
]
