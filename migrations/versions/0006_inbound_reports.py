"""inbound_reports (bounces, complaints, mailto unsubscribes); email_jobs.provider_queue_id index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('inbound_reports',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=10), nullable=False),
    sa.Column('envelope_to', sa.String(length=320), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=True),
    sa.Column('format', sa.String(length=20), nullable=True),
    sa.Column('job_id', BIGINT_ID, nullable=True),
    sa.Column('recipient', sa.String(length=320), nullable=True),
    sa.Column('status_code', sa.String(length=16), nullable=True),
    sa.Column('diagnostic', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('raw', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['email_jobs.job_id'], name=op.f('fk_inbound_reports_job_id_email_jobs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_reports')),
    sa.UniqueConstraint('digest', name=op.f('uq_inbound_reports_digest'))
    )
    with op.batch_alter_table('inbound_reports', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_reports_job_id', ['job_id'], unique=False)
        batch_op.create_index('ix_inbound_reports_state_received_at', ['state', 'received_at'], unique=False)
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_email_jobs_provider_queue_id', ['provider_queue_id'], unique=False)


def downgrade():
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_email_jobs_provider_queue_id')
    with op.batch_alter_table('inbound_reports', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_reports_state_received_at')
        batch_op.drop_index('ix_inbound_reports_job_id')
    op.drop_table('inbound_reports')
