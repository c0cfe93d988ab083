#!/usr/bin/env bash
# Install (Debian, as root) the programs CI needs and does not find: the PostgreSQL, RabbitMQ and
# Redis servers (the tests start throwaway instances of them: tests/harness/), psql, chromium for
# the dashboard page test, and promtool (package prometheus) for the alert rules' tests. No daemon
# is started or configured here. Idempotent.
set -euo pipefail
need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v faketime >/dev/null || need+=(faketime)  # tests/test_clock_skew.py
command -v python3.11 >/dev/null || need+=(python3.11 python3.11-venv)
lean=()  # installed without their recommends (prometheus would pull node-exporter and more)
command -v promtool >/dev/null || lean+=(prometheus)
[ ${#need[@]} -eq 0 ] && [ ${#lean[@]} -eq 0 ] && exit 0

# Keep the packages' init scripts from starting the system-wide services: the tests start their
# own, and a machine that already runs them keeps them as they are.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  made_policy=1
fi
trap 'if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
if [ ${#lean[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}"
fi
