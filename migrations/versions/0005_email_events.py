"""email_events: one row per state change or report of a job; `accepted` rows by trigger.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Every other event is written by the statement that makes the change (massmailer/jobstore/
events.py). An `accepted` event per new job comes from a trigger, so intake (COPY of 10,000
rows) makes no extra round trip: on PostgreSQL a statement-level trigger reading the transition
table, as job_counts does (0003); on SQLite (the embedded demo) a row-level one.
Jobs accepted before this migration have no history: nothing is backfilled.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
TYPES = ('accepted', 'sent', 'deferred', 'failed', 'bounced', 'complained', 'unsubscribed',
         'cancelled')

PG_ACCEPTED = """
CREATE FUNCTION email_events_accepted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO email_events (job_id, type, at)
  SELECT job_id, 'accepted', statement_timestamp() FROM new_jobs;
  RETURN NULL;
END $$;

CREATE TRIGGER email_events_accepted AFTER INSERT ON email_jobs
  REFERENCING NEW TABLE AS new_jobs
  FOR EACH STATEMENT EXECUTE FUNCTION email_events_accepted();
"""

# The format SQLAlchemy writes and reads for SQLite datetimes (UTC, as the demo stores them).
SQLITE_ACCEPTED = """
CREATE TRIGGER email_events_accepted AFTER INSERT ON email_jobs FOR EACH ROW
BEGIN
  INSERT INTO email_events (job_id, type, at)
  VALUES (NEW.job_id, 'accepted', strftime('%Y-%m-%d %H:%M:%f', 'now'));
END;
"""


def upgrade():
    types = ', '.join(f"'{t}'" for t in TYPES)
    op.create_table('email_events',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('job_id', BIGINT_ID, nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=False),
    sa.Column('provider', sa.String(length=50), nullable=True),
    sa.Column('smtp_code', sa.Integer(), nullable=True),
    sa.Column('enhanced_code', sa.String(length=16), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.CheckConstraint(f'type IN ({types})', name=op.f('ck_email_events_type_known')),
    sa.CheckConstraint('length(detail) <= 1000', name=op.f('ck_email_events_detail_bounded')),
    sa.ForeignKeyConstraint(['job_id'], ['email_jobs.job_id'], name=op.f('fk_email_events_job_id_email_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_events'))
    )
    with op.batch_alter_table('email_events', schema=None) as batch_op:
        batch_op.create_index('ix_email_events_job_id_at', ['job_id', 'at'], unique=False)
        batch_op.create_index('ix_email_events_at', ['at'], unique=False)
    dialect = op.get_bind().dialect.name
    if dialect == 'postgresql':
        op.execute(PG_ACCEPTED)
    elif dialect == 'sqlite':
        op.execute(SQLITE_ACCEPTED)


def downgrade():
    dialect = op.get_bind().dialect.name
    if dialect == 'postgresql':
        op.execute("DROP TRIGGER email_events_accepted ON email_jobs")
        op.execute("DROP FUNCTION email_events_accepted()")
    elif dialect == 'sqlite':
        op.execute("DROP TRIGGER email_events_accepted")
    with op.batch_alter_table('email_events', schema=None) as batch_op:
        batch_op.drop_index('ix_email_events_at')
        batch_op.drop_index('ix_email_events_job_id_at')
    op.drop_table('email_events')
