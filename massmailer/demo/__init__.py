"""The embedded demo: `python -m massmailer demo` sends real mail with no services installed.

SQLite instead of PostgreSQL, the job table instead of RabbitMQ, in-process limits instead of
Redis, and two local SMTP servers; everything else is the production code (API, intake,
dispatch, DeliveryService).
"""
