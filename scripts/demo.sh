#!/usr/bin/env bash
# The demo project on the embedded defaults (SQLite, in-memory backend), served by uvicorn
# on http://127.0.0.1:8000/. Creates .venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[server]'
cd examples/demo
../../.venv/bin/python manage.py migrate --noinput -v 0
exec ../../.venv/bin/python -m uvicorn demo.asgi:application \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --ws websockets-sansio
