"""Add batches (one template, many recipients), idempotency_keys, email_jobs.batch_id and template_vars.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    op.create_table('batches',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=True),
    sa.Column('subject_template', sa.Text(), nullable=False),
    sa.Column('text_template', sa.Text(), nullable=True),
    sa.Column('html_template', sa.Text(), nullable=True),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('sender_name', sa.String(length=255), nullable=True),
    sa.Column('priority', sa.Integer(), server_default='0', nullable=False),
    sa.Column('category', sa.String(length=20), server_default='transactional', nullable=False),
    sa.Column('send_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('accepted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('rejected', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('priority BETWEEN 0 AND 9', name=op.f('ck_batches_priority_range')),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_batches_api_key_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches'))
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_api_key_id_created_at', ['api_key_id', 'created_at'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response_status', sa.Integer(), nullable=True),
    sa.Column('response_body', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_idempotency_keys_api_key_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys')),
    sa.UniqueConstraint('api_key_id', 'key', name='uq_idempotency_keys_api_key_id_key')
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_created_at'), ['created_at'], unique=False)

    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', BIGINT_ID, nullable=True))
        batch_op.add_column(sa.Column('template_vars', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_email_jobs_batch_id'), ['batch_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_email_jobs_batch_id_batches'), 'batches', ['batch_id'], ['id'])


def downgrade():
    with op.batch_alter_table('email_jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_email_jobs_batch_id_batches'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_email_jobs_batch_id'))
        batch_op.drop_column('template_vars')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_created_at'))

    op.drop_table('idempotency_keys')
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_api_key_id_created_at')

    op.drop_table('batches')
