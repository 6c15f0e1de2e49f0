#!/usr/bin/env bash
# The benchmark suite in one command: builds bench/.venv (tether editable, Django Channels,
# channels-redis, daphne, uvicorn[standard], matplotlib) and the Node load generator on first use,
# raises the open-file limit, then runs bench/run.py with the given arguments.
#   bench/run.sh            full run: docs/benchmarks.md and docs/img/bench-*.png
#   bench/run.sh --quick    one small size of each scenario, one run (under two minutes)
#   bench/run.sh --help     every option
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "bench/run.sh needs Node.js (>= 18) and npm" >&2; exit 1; }
if [ ! -x bench/.venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv bench/.venv
fi
stamp=bench/.venv/.installed
if [ ! -f "$stamp" ] || [ bench/requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  bench/.venv/bin/python -m pip install -q --disable-pip-version-check -e . -r bench/requirements.txt
  touch "$stamp"
fi
if [ ! -d bench/client/node_modules/ws ] || [ bench/client/package-lock.json -nt bench/client/node_modules/.package-lock.json ]; then
  (cd bench/client && npm ci --no-audit --no-fund --loglevel=error)
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # 10000 idle sockets need as many descriptors
exec bench/.venv/bin/python -m bench.run "$@"
