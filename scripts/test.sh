#!/usr/bin/env bash
# Run the whole test suite. Backend from the environment:
#   DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test  → PostgreSQL (each test gets its own database)
#   unset                                                  → SQLite
#   REDIS_URL=redis://127.0.0.1:6379/0                     → Redis-backed tests (defaults to that address)
# Two passes: everything in .venv, then the tests marked `semantic` (they train and load the real MiniLM with
# torch) in .venv-semantic, which setup.sh --semantic prepares (2.1 GB, about two minutes, once).
# Extra arguments go to pytest, e.g. `make test ARGS="-k webchat"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export PYTHONUNBUFFERED=1
.venv/bin/python -m pytest -p no:cacheprovider -q -ra --durations=15 -m "not semantic" "$@"
echo "== semantic tests (real MiniLM and torch, .venv-semantic)"
bash scripts/setup.sh --semantic
status=0
.venv-semantic/bin/python -m pytest -p no:cacheprovider -q -ra -m semantic "$@" || status=$?
# exit 5 = nothing selected (e.g. ARGS="-k webchat" names no semantic test): not a failure
[ "$status" = 5 ] && status=0
exit "$status"
