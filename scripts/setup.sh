#!/usr/bin/env bash
# Prepare a machine for Loket: a virtualenv with the pinned dependencies, and (with --test) the Debian
# packages the test suite drives: Chromium for browser tests, Dovecot for the email tests.
# --semantic instead prepares .venv-semantic: the same plus loket[semantic] (MiniLM, sentence-transformers, a CPU
# build of torch; requirements-semantic.lock), where the tests that train and load the real model run.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV="${LOKET_VENV:-.venv}"
LOCKS=(requirements.lock)
if [ "${1:-}" = "--semantic" ]; then
  VENV="${LOKET_SEMANTIC_VENV:-.venv-semantic}"
  LOCKS+=(requirements-semantic.lock)
fi

need_apt=()
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  [ -x /usr/sbin/dovecot ] || need_apt+=(dovecot-imapd)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # the Debian dovecot service is not wanted: tests start their own instance on loopback
  if [ -x /usr/sbin/dovecot ]; then (service dovecot stop >/dev/null 2>&1 || true); fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.loket-installed"
want="$(cat "${LOCKS[@]}" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing pinned dependencies (${LOCKS[*]}) into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  for lock in "${LOCKS[@]}"; do "$VENV/bin/python" -m pip install -q -r "$lock"; done
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
