#!/usr/bin/env bash
# Start `loket run` the way ../shared/bench/harness.py starts a server under test: it passes PORT,
# TELEGRAM_API_BASE, TELEGRAM_WEBHOOK_SECRET and TELEGRAM_BOT_TOKEN; DATABASE_URL comes through --env.
set -euo pipefail
cd "$(dirname "$0")/.."
export LOKET_PORT="${PORT:-8081}" LOKET_HOST=127.0.0.1 LOKET_PUBLIC_URL="http://127.0.0.1:${PORT:-8081}"
export LOKET_DEMO="${LOKET_DEMO:-false}" LOKET_LOG_LEVEL=WARNING
export LOKET_DATA_DIR="${LOKET_DATA_DIR:-$(mktemp -d)}" LOKET_SECRET_KEY="${LOKET_SECRET_KEY:-bench-secret-key-0123456789abcdefghijkl}"
# The peers have no provider rate limits; switch Loket's Telegram limiter off so the same work is measured.
export TELEGRAM_MAX_PER_SECOND="${TELEGRAM_MAX_PER_SECOND:-1000000}" TELEGRAM_PER_CHAT_INTERVAL="${TELEGRAM_PER_CHAT_INTERVAL:-0}"
exec .venv/bin/loket run
