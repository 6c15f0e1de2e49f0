#!/usr/bin/env bash
# The chat example (examples/chat) on http://127.0.0.1:8000/: sign up, open a room, chat.
# Embedded defaults: SQLite and tether's in-memory backend, served by uvicorn (websockets-sansio).
# One environment variable each switches: TETHER_BACKEND=redis (Redis at 127.0.0.1:6379),
# DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat (create the database first), WORKERS=2 (two
# worker processes; needs TETHER_BACKEND=redis). HOST, PORT and VENV (default .venv) as named.
# Creates the virtualenv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(realpath -m "${VENV:-.venv}")
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
extras=server
[ "${TETHER_BACKEND:-}" = redis ] && extras="$extras,redis"
case "${DATABASE_URL:-}${TETHER_BACKEND:-}" in *postgres*) extras="$extras,postgres" ;; esac
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[$extras]"
cd examples/chat
"$venv/bin/python" manage.py migrate --noinput -v 0
echo "chat: http://${HOST:-127.0.0.1}:${PORT:-8000}/ (sign up, then open a room in two browsers)"
exec "$venv/bin/python" -m uvicorn chatsite.asgi:application \
  --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --ws websockets-sansio --workers "${WORKERS:-1}"
