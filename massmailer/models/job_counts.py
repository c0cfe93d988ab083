"""job_counts: jobs per status, kept up to date by triggers on email_jobs (PostgreSQL only).

Counting a million rows by status takes ~0.4 s; a scrape or a dashboard refresh must take
milliseconds. Every statement that inserts, deletes or changes the status of jobs appends its
net change here in the same transaction (statement triggers, migration 0003): rows with a NULL
batch_id count every job, rows with a batch_id count that batch's jobs. Appending never
conflicts, so concurrent writers do not wait on a counter row; the sweep folds the rows of each
(batch_id, status) into one (`jobstore.maintenance.compact_job_counts`).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from massmailer.extensions import db
from massmailer.models.types import BigIntId


class JobCount(db.Model):
    __tablename__ = "job_counts"
    __table_args__ = (Index("ix_job_counts_batch_id", "batch_id"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int | None] = mapped_column(BigIntId)  # NULL: the count over all jobs
    status: Mapped[str] = mapped_column(String(20))
    n: Mapped[int] = mapped_column(BigInteger)
