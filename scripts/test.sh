#!/usr/bin/env bash
# Run the whole test suite. Backend from the environment:
#   DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test  → PostgreSQL (each test gets its own database)
#   unset                                                  → SQLite
#   REDIS_URL=redis://127.0.0.1:6379/0                     → Redis-backed tests (defaults to that address)
# Extra arguments go to pytest, e.g. `make test ARGS="-k webchat"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest -p no:cacheprovider -q -ra --durations=15 "$@"
