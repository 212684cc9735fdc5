# Loket production image: `loket web`, `loket worker`, `loket db upgrade` (see docs/production.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOKET_HOST=0.0.0.0 \
    LOKET_PORT=8080 \
    LOKET_WORKER_METRICS_PORT=9108 \
    LOKET_DATA_DIR=/var/lib/loket \
    LOKET_LOG_FORMAT=json

WORKDIR /app

# Dependencies first (cached layer), exactly as pinned.
COPY requirements.lock ./
RUN pip install -r requirements.lock

# Then the application itself, installed so the `loket` command exists.
COPY pyproject.toml README.md LICENSE ./
COPY bot ./bot
COPY storage ./storage
COPY knowledge_base ./knowledge_base
COPY agent_console ./agent_console
RUN pip install --no-deps . \
    && groupadd --system --gid 10001 loket \
    && useradd --system --uid 10001 --gid loket --home-dir /var/lib/loket --create-home loket \
    && mkdir -p /var/lib/loket && chown -R loket:loket /var/lib/loket

USER loket
# 8080: web (LOKET_PORT); 9108: a worker's /metrics, /healthz, /readyz (LOKET_WORKER_METRICS_PORT)
EXPOSE 8080 9108
# healthy when the web port or, for a worker, its metrics port answers /healthz
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LOKET_PORT','8080'), timeout=2)" \
     || python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LOKET_WORKER_METRICS_PORT','9108'), timeout=2)" \
     || exit 1

# SIGTERM → graceful stop (stop taking work, finish what is in hand, exit).
STOPSIGNAL SIGTERM
ENTRYPOINT ["loket"]
CMD ["web"]
