#!/usr/bin/env bash
# The whole test suite: lint, types, tests. Creates .venv on first use.
# Extra arguments go to pytest (e.g. scripts/test.sh -k routing).
# PYTHON, VENV and DJANGO choose another interpreter, virtualenv and Django, e.g.
#   PYTHON=python3.12 VENV=.venv-django6 DJANGO='django>=6,<7' scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' ${DJANGO:+"$DJANGO"}
# The Autobahn testsuite (RFC 6455 conformance) runs on Python 2.7 only; install it where that exists.
py2=${TETHER_PYTHON2:-/root/.pyenv/versions/2.7.18/bin/python}
if [ -x "$py2" ] && [ ! -d .autobahn/autobahntestsuite ]; then
  "$py2" -m pip install -q --disable-pip-version-check --target .autobahn autobahntestsuite 2>/dev/null \
    && touch .autobahn/zope/__init__.py || echo "!!! could not install the Autobahn testsuite !!!"
fi
echo "== ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "== mypy --strict (tether/)"
"$venv/bin/mypy"
echo "== lint-imports (the layers of DESIGN.md section 2)"
"$venv/bin/lint-imports"
echo "== pytest"
"$venv/bin/python" -m pytest "$@"
