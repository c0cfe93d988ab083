"""Create email_jobs (the original columns and what delivery needs), email_attempts, api_keys, suppressions.

Revision ID: 0001
Revises: 
Create Date: 2026-11-28

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name'))
    )
    op.create_table('suppressions',
    sa.Column('email', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.String(length=20), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('email', name=op.f('pk_suppressions'))
    )
    op.create_table('email_jobs',
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('recipient', sa.String(length=255), nullable=False),
    sa.Column('subject', sa.String(length=998), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('provider', sa.String(length=50), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recipient_name', sa.String(length=255), nullable=True),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('sender_name', sa.String(length=255), nullable=True),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('headers', sa.JSON(), nullable=True),
    sa.Column('category', sa.String(length=20), server_default='transactional', nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=True),
    sa.Column('send_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatch_seq', sa.Integer(), server_default='0', nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_provider', sa.String(length=50), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('provider_queue_id', sa.String(length=255), nullable=True),
    sa.Column('provider_reply', sa.String(length=512), nullable=True),
    sa.CheckConstraint("status IN ('PENDING', 'SENT', 'FAILED', 'CANCELLED')", name=op.f('ck_email_jobs_status_known')),
    sa.CheckConstraint('priority BETWEEN 0 AND 9', name=op.f('ck_email_jobs_priority_range')),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_email_jobs_api_key_id_api_keys')),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_email_jobs')),
    sa.UniqueConstraint('message_id', name=op.f('uq_email_jobs_message_id'))
    )
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_email_jobs_api_key_id_created_at', ['api_key_id', 'created_at'], unique=False)
        batch_op.create_index('ix_email_jobs_status_updated_at', ['status', 'updated_at'], unique=False)

    op.create_table('email_attempts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('attempt_no', sa.Integer(), nullable=False),
    sa.Column('provider', sa.String(length=50), nullable=True),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('smtp_code', sa.Integer(), nullable=True),
    sa.Column('enhanced_code', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['email_jobs.job_id'], name=op.f('fk_email_attempts_job_id_email_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_email_attempts'))
    )
    with op.batch_alter_table('email_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_email_attempts_job_id'), ['job_id'], unique=False)



def downgrade():
    with op.batch_alter_table('email_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_email_attempts_job_id'))

    op.drop_table('email_attempts')
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_email_jobs_status_updated_at')
        batch_op.drop_index('ix_email_jobs_api_key_id_created_at')

    op.drop_table('email_jobs')
    op.drop_table('suppressions')
    op.drop_table('api_keys')
