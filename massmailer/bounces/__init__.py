"""Inbound reports: bounces (RFC 3464 DSNs and the common non-standard texts), complaints
(RFC 5965 ARF) and mailto unsubscribes, received over SMTP (the `bounces` process) or HTTP
(POST /v1/inbound/raw), matched to their jobs and applied.

  verp.py      the signed VERP address and what an inbound recipient names (pure)
  report.py    the parsed Report and how it classifies (pure)
  dsn.py       RFC 3464 delivery-status reports (pure)
  arf.py       RFC 5965 feedback reports (pure)
  freeform.py  non-standard bounce texts, through flufl.bounce (pure)
  parse.py     raw bytes -> Report (pure)
  matching.py  which job a report is about (database reads)
  inbox.py     store a report once, match it, apply its effects (database writes)
  smtp.py      the aiosmtpd server of the `bounces` process
  hooks/       provider webhooks (SES through SNS, SendGrid, Mailgun): verify, read, store
"""
