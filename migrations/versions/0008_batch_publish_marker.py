"""batches.unconfirmed_since: one marker per batch instead of a stamp on each of its jobs;
cheaper per-row writes at intake; an index of the webhook requests in flight.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

A batch's jobs are copied already stamped as enqueued, and the batch row carries
`unconfirmed_since` until every chunk's publish is confirmed. Stamping 10,000 jobs after the
confirms was an UPDATE as costly as their COPY (a new tuple and an entry in each index per row);
clearing one batch row is not. If the request dies before clearing it, the sweep finds the batch
(the partial index) after the publish grace and unstamps its jobs still waiting, which it then
publishes as any unconfirmed job. The provider_queue_id index keeps only the jobs that have one,
so a COPY of new jobs adds nothing to it.

The foreign keys from email_jobs to api_keys and batches, and from email_events to email_jobs,
are dropped: PostgreSQL checks each row on its own, which cost a 10,000-job batch 35 % of its
database time at intake (measured in bench/README.md). No parent is ever deleted (keys are
revoked, batches kept, a job's events go before it), and each row is written by code that holds
its parent: the authenticated key, the batch inserted in the same transaction, the job whose
statement logs the event.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

UNCONFIRMED = "unconfirmed_since IS NOT NULL"
SENDING = "state = 'sending'"
HAS_QUEUE_ID = "provider_queue_id IS NOT NULL"


FOREIGN_KEYS = [
    ('email_jobs', 'fk_email_jobs_api_key_id_api_keys', 'api_keys', ['api_key_id'], ['id']),
    ('email_jobs', 'fk_email_jobs_batch_id_batches', 'batches', ['batch_id'], ['id']),
    ('email_events', 'fk_email_events_job_id_email_jobs', 'email_jobs', ['job_id'], ['job_id']),
]


def upgrade():
    # The webhook claim counted each endpoint's requests in flight by reading every waiting row:
    # 60 claims/s with 50,000 waiting, against 200/s with a few hundred.
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.create_index(
            'ix_webhook_outbox_sending', ['endpoint_id'], unique=False,
            postgresql_where=sa.text(SENDING), sqlite_where=sa.text(SENDING),
        )
    # PostgreSQL only: SQLite (the embedded demo) would rebuild the tables, losing its trigger,
    # and the demo's intake is not where the checks cost.
    if op.get_bind().dialect.name == 'postgresql':
        for table, name, *_ in FOREIGN_KEYS:
            op.drop_constraint(name, table, type_='foreignkey')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unconfirmed_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            'ix_batches_unconfirmed_since', ['unconfirmed_since'], unique=False,
            postgresql_where=sa.text(UNCONFIRMED), sqlite_where=sa.text(UNCONFIRMED),
        )
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_email_jobs_provider_queue_id')
        batch_op.create_index(
            'ix_email_jobs_provider_queue_id', ['provider_queue_id'], unique=False,
            postgresql_where=sa.text(HAS_QUEUE_ID), sqlite_where=sa.text(HAS_QUEUE_ID),
        )


def downgrade():
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_outbox_sending')
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_email_jobs_provider_queue_id')
        batch_op.create_index('ix_email_jobs_provider_queue_id', ['provider_queue_id'], unique=False)
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_unconfirmed_since')
        batch_op.drop_column('unconfirmed_since')
    if op.get_bind().dialect.name == 'postgresql':
        for table, name, parent, columns, parent_columns in FOREIGN_KEYS:
            op.create_foreign_key(name, table, parent, columns, parent_columns)
