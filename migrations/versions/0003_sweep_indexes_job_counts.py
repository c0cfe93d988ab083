"""Partial indexes for the sweep's conditions; job_counts kept by statement triggers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

At a million jobs the sweep's pick was a sequential scan (~0.4 s) and so was every count by
status for /metrics and the dashboard. The three partial indexes hold only the rows the sweep
looks for; the claim keeps using the primary key (tests/test_million_rows.py checks both plans).
job_counts is filled by triggers on PostgreSQL only: the embedded demo (SQLite) counts directly.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')

PARTIAL_INDEXES = [
    ('ix_email_jobs_claimed_lease_until', ['lease_until'],
     "status = 'PENDING' AND claim_token IS NOT NULL"),
    ('ix_email_jobs_unstamped', ['send_at', 'updated_at'],
     "status = 'PENDING' AND enqueued_at IS NULL"),
    ('ix_email_jobs_pending_created_at', ['created_at'], "status = 'PENDING'"),
]

# Each statement appends its net change per status, overall (batch_id NULL) and per batch.
# Appending never waits on another writer; the sweep folds the rows together.
COUNT_FUNCTIONS = """
CREATE FUNCTION job_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_counts (batch_id, status, n)
  SELECT NULL, status, count(*) FROM new_rows GROUP BY status
  UNION ALL
  SELECT batch_id, status, count(*) FROM new_rows WHERE batch_id IS NOT NULL
  GROUP BY batch_id, status;
  RETURN NULL;
END $$;

CREATE FUNCTION job_counts_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- An UPDATE maps each old row to one new row, so the net change per (batch, status) is the new
  -- rows' count minus the old rows': no join needed, and a claim (no status change) adds nothing.
  WITH delta AS (
    SELECT batch_id, status, 1 AS n FROM new_rows
    UNION ALL
    SELECT batch_id, status, -1 FROM old_rows
  )
  INSERT INTO job_counts (batch_id, status, n)
  SELECT NULL, status, sum(n) FROM delta GROUP BY status HAVING sum(n) <> 0
  UNION ALL
  SELECT batch_id, status, sum(n) FROM delta WHERE batch_id IS NOT NULL
  GROUP BY batch_id, status HAVING sum(n) <> 0;
  RETURN NULL;
END $$;

CREATE FUNCTION job_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO job_counts (batch_id, status, n)
  SELECT NULL, status, -count(*) FROM old_rows GROUP BY status
  UNION ALL
  SELECT batch_id, status, -count(*) FROM old_rows WHERE batch_id IS NOT NULL
  GROUP BY batch_id, status;
  RETURN NULL;
END $$;

CREATE FUNCTION job_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM job_counts;
  RETURN NULL;
END $$;
"""

COUNT_TRIGGERS = """
CREATE TRIGGER job_counts_insert AFTER INSERT ON email_jobs
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_insert();
CREATE TRIGGER job_counts_update AFTER UPDATE ON email_jobs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_update();
CREATE TRIGGER job_counts_delete AFTER DELETE ON email_jobs
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_delete();
CREATE TRIGGER job_counts_truncate AFTER TRUNCATE ON email_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION job_counts_truncate();
"""

BACKFILL = """
INSERT INTO job_counts (batch_id, status, n)
SELECT NULL, status, count(*) FROM email_jobs GROUP BY status
UNION ALL
SELECT batch_id, status, count(*) FROM email_jobs WHERE batch_id IS NOT NULL
GROUP BY batch_id, status;
"""


def upgrade():
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        for name, columns, where in PARTIAL_INDEXES:
            batch_op.create_index(
                name, columns, unique=False,
                postgresql_where=sa.text(where), sqlite_where=sa.text(where),
            )
    op.create_table('job_counts',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('batch_id', BIGINT_ID, nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('n', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_counts'))
    )
    with op.batch_alter_table('job_counts', schema=None) as batch_op:
        batch_op.create_index('ix_job_counts_batch_id', ['batch_id'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        # No job may change between the backfill and the triggers taking over.
        op.execute("LOCK TABLE email_jobs IN SHARE ROW EXCLUSIVE MODE")
        op.execute(COUNT_FUNCTIONS)
        op.execute(COUNT_TRIGGERS)
        op.execute(BACKFILL)
        op.execute("ANALYZE email_jobs")


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        for event in ('insert', 'update', 'delete', 'truncate'):
            op.execute(f"DROP TRIGGER job_counts_{event} ON email_jobs")
            op.execute(f"DROP FUNCTION job_counts_{event}()")
    with op.batch_alter_table('job_counts', schema=None) as batch_op:
        batch_op.drop_index('ix_job_counts_batch_id')
    op.drop_table('job_counts')
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        for name, _, _ in reversed(PARTIAL_INDEXES):
            batch_op.drop_index(name)
