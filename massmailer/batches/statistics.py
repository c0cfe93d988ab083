"""Keep the planner's view of email_jobs fresh, off the request path (the sweep calls this).

A batch of thousands of PENDING jobs landing in a table whose statistics say none are PENDING
(a fresh table, or one analysed while everything was SENT) makes PostgreSQL claim a chunk
(`job_id IN (...) AND status = 'PENDING'`) through the status index, scanning every PENDING
row for each claim, instead of the primary key: a sweeper once halved throughput that way.
Autovacuum does not help in time: it analyses after 10 % of the table changed (100,000 rows of
a million). So the sweep, which runs every MASSMAILER_SWEEP_INTERVAL_SECONDS on its own queue,
analyses email_jobs when enough rows changed since the last ANALYZE.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

ANALYZE_AFTER_CHANGES = 1000  # rows inserted, updated or deleted since the last ANALYZE
ANALYZE_LOCK_KEY = 0x6D6D_616E_616C_7A  # "mm analz": one ANALYZE at a time; others skip theirs
_CHANGES = text(
    "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relid = to_regclass('email_jobs')"
)


def refresh_if_stale(session: Session, threshold: int = ANALYZE_AFTER_CHANGES) -> bool:
    """ANALYZE email_jobs if threshold rows changed since it was last analysed; commit."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    changed = session.scalar(_CHANGES) or 0
    analysed = False
    if changed >= threshold:
        got = session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": ANALYZE_LOCK_KEY})
        if got:
            session.execute(text("ANALYZE email_jobs"))
            analysed = True
            logger.info("event=analyzed table=email_jobs changed_rows=%d", changed)
    session.commit()
    return analysed
