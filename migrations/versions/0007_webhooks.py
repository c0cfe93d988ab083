"""webhooks: endpoints, the outbox fed by a trigger on email_events, and the delivery log.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

An outbox row per (event, subscribed endpoint of the job's API key) comes from a statement-level
AFTER INSERT trigger on email_events, so it is written in the same transaction (the same
statement) as the event and the state change, with no extra round trip. The body is built once
here, as text, and signed anew on every try. PostgreSQL only: the embedded demo (SQLite) sends no
webhooks.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
STATES = ('pending', 'sending', 'delivered', 'failed')

PG_OUTBOX = """
CREATE FUNCTION webhook_outbox_from_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Most installations have few endpoints, often none: then an event statement pays one probe.
  IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled) THEN
    RETURN NULL;
  END IF;
  INSERT INTO webhook_outbox (endpoint_id, type, body, created_at, next_attempt_at)
  SELECT w.id, 'email.' || e.type,
         json_build_object(
           'type', 'email.' || e.type,
           'timestamp', to_char(e.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'data', json_build_object(
             'email_id', e.job_id, 'to', j.recipient, 'message_id', j.message_id,
             'batch_id', j.batch_id, 'provider', e.provider, 'smtp_code', e.smtp_code,
             'enhanced_code', e.enhanced_code, 'detail', e.detail))::text,
         statement_timestamp(), statement_timestamp()
  FROM new_events e
  JOIN email_jobs j ON j.job_id = e.job_id
  JOIN webhook_endpoints w ON w.api_key_id = j.api_key_id AND w.enabled
       AND position(' email.' || e.type || ' ' IN ' ' || w.events || ' ') > 0
  WHERE e.type IN ('sent', 'failed', 'bounced', 'complained', 'unsubscribed');
  RETURN NULL;
END $$;

CREATE TRIGGER webhook_outbox_from_events AFTER INSERT ON email_events
  REFERENCING NEW TABLE AS new_events
  FOR EACH STATEMENT EXECUTE FUNCTION webhook_outbox_from_events();
"""


def upgrade():
    states = ', '.join(f"'{s}'" for s in STATES)
    op.create_table('webhook_endpoints',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('api_key_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('events', sa.Text(), nullable=False),
    sa.Column('secret', sa.String(length=64), nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('disabled_reason', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_webhook_endpoints_api_key_id_api_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints'))
    )
    with op.batch_alter_table('webhook_endpoints', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_endpoints_api_key_id', ['api_key_id'], unique=False)
    op.create_table('webhook_outbox',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('endpoint_id', BIGINT_ID, nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint(f'state IN ({states})', name=op.f('ck_webhook_outbox_state_known')),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], name=op.f('fk_webhook_outbox_endpoint_id_webhook_endpoints'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_outbox'))
    )
    with op.batch_alter_table('webhook_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_outbox_endpoint_id', ['endpoint_id'], unique=False)
        batch_op.create_index('ix_webhook_outbox_due', ['next_attempt_at'], unique=False,
                              postgresql_where=sa.text("state IN ('pending', 'sending')"),
                              sqlite_where=sa.text("state IN ('pending', 'sending')"))
    op.create_table('webhook_deliveries',
    sa.Column('id', BIGINT_ID, autoincrement=True, nullable=False),
    sa.Column('outbox_id', BIGINT_ID, nullable=False),
    sa.Column('endpoint_id', BIGINT_ID, nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['outbox_id'], ['webhook_outbox.id'], name=op.f('fk_webhook_deliveries_outbox_id_webhook_outbox'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoints.id'], name=op.f('fk_webhook_deliveries_endpoint_id_webhook_endpoints'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_endpoint_id_at', ['endpoint_id', 'at'], unique=False)
    op.create_table('webhook_batches_notified',
    sa.Column('batch_id', BIGINT_ID, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_webhook_batches_notified_batch_id_batches'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_webhook_batches_notified'))
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_OUTBOX)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP TRIGGER webhook_outbox_from_events ON email_events")
        op.execute("DROP FUNCTION webhook_outbox_from_events()")
    op.drop_table('webhook_batches_notified')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_outbox')
    op.drop_table('webhook_endpoints')
