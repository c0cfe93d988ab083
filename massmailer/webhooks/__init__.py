"""Signed webhooks (Standard Webhooks) to product services, from an outbox in PostgreSQL.

signing.py and policy.py are pure; guard.py refuses non-public targets (SSRF); client.py makes
one HTTP try to the very address the guard checked; store.py claims due rows, records each try
and schedules retries in PostgreSQL.
"""

EVENT_TYPES = (
    "email.sent",
    "email.failed",
    "email.bounced",
    "email.complained",
    "email.unsubscribed",
    "batch.completed",
)
TEST_TYPE = "webhook.test"
