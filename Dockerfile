# One image for every Procfile process; the command names the process:
#   docker run IMAGE web | worker | beat | flower | release   (anything else runs as given)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned runtime set first (requirements.txt above its tests-and-tooling part), so code
# changes do not reinstall the dependencies.
COPY requirements.txt ./
RUN sed '/^# Tests and tooling/,$d' requirements.txt > /tmp/runtime.txt \
    && pip install -r /tmp/runtime.txt \
    && rm /tmp/runtime.txt

COPY . .
# The package itself (the `massmailer` command), against the pins already installed.
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin massmailer

# Processes run unprivileged; beat keeps its schedule file in /tmp (BEAT_SCHEDULE_FILE).
USER massmailer
LABEL org.opencontainers.image.title="massmailer" \
      io.massmailer.processes="release web worker webhooks beat flower bounces"
EXPOSE 8000 5555 2525
ENTRYPOINT ["/app/deploy/docker-entrypoint.sh"]
CMD ["web"]
