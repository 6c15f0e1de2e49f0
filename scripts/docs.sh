#!/usr/bin/env bash
# The documentation site (MkDocs, mkdocs.yml), served with live reload on http://127.0.0.1:8001/.
# `scripts/docs.sh build` builds it into build/site/ with --strict instead, as CI does: a broken
# link, a griffe warning or a public object of the API reference without a docstring fails.
# Uses .venv (VENV to choose another), created with the docs tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if [ ! -x "$venv/bin/mkdocs" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[docs]'
fi
if [ "${1:-serve}" = build ]; then
  exec "$venv/bin/mkdocs" build --strict
fi
exec "$venv/bin/mkdocs" serve --strict --dev-addr "${DOCS_ADDR:-127.0.0.1:8001}"
