"""Prometheus metrics: per-process delivery counters and scrape-time state of the whole system.

instruments.py  counters and histograms, incremented after an outcome flush commits
state.py        read job counts (PostgreSQL), queue depths (RabbitMQ), provider health (Redis)
collector.py    a prometheus_client Collector that turns that state into gauges at scrape time
exposition.py   build the registry to expose (multiprocess or single-process) and render it
exporter.py     the worker host's small HTTP endpoint, started by the worker's main process
"""
