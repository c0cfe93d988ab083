"""API key scopes, sender domains and quotas; the audit log of suppression and key changes.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade():
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        # Existing keys keep what they could do before scopes existed; admin is new.
        batch_op.add_column(sa.Column('scopes', sa.String(length=200), server_default='send read suppressions webhooks', nullable=False))
        batch_op.add_column(sa.Column('sender_domains', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('rate_per_second', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('burst', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('recipients_per_day', sa.Integer(), nullable=True))

    op.create_table('audit_log',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=120), nullable=False),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('target', sa.String(length=320), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_audit_log_api_key_id_api_keys'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_at', ['at'], unique=False)


def downgrade():
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_at')
    op.drop_table('audit_log')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('recipients_per_day')
        batch_op.drop_column('burst')
        batch_op.drop_column('rate_per_second')
        batch_op.drop_column('sender_domains')
        batch_op.drop_column('scopes')
