"""The naive baseline: one Celery task per email, a new SMTP session each, one UPDATE each.

What a first design on the same stack does; the benchmarks measure MassMailer against it in the
same run. Keep this code as it is, so figures from different days stay comparable.

    celery -A bench.naive worker --pool prefork --concurrency 4 -Q naive
"""

from __future__ import annotations

import json
import os
import smtplib
from email.message import EmailMessage

import psycopg2
from celery import Celery

app = Celery("naive", broker=os.environ.get("BROKER_URL", "amqp://"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="naive",
)
_connection = None


def _db():
    global _connection
    if _connection is None:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg2://", "postgresql://")
        _connection = psycopg2.connect(url)
    return _connection


@app.task(name="naive.send")
def send(job_id: int) -> None:
    providers = json.loads(os.environ["MASSMAILER_PROVIDERS"])
    provider = providers[job_id % len(providers)]  # round robin
    conn = _db()
    with conn.cursor() as cur:
        cur.execute(
            "SELECT recipient, sender, subject, body, html FROM email_jobs WHERE job_id = %s",
            (job_id,),
        )
        recipient, sender, subject, body, html = cur.fetchone()
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, recipient, subject
    message.set_content(body)
    if html:
        message.add_alternative(html, subtype="html")
    with smtplib.SMTP(provider["host"], provider["port"]) as smtp:
        smtp.send_message(message)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE email_jobs SET status = 'SENT', attempts = attempts + 1, provider = %s,"
            " updated_at = now() WHERE job_id = %s",
            (provider["name"], job_id),
        )
    conn.commit()
