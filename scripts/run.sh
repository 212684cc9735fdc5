#!/usr/bin/env bash
# Run Loket on the embedded default: SQLite in ./loket.db, http://127.0.0.1:8080, demo content loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/loket run "$@"
