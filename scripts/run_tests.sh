#!/usr/bin/env bash
# Run the whole suite: the fast tests, then the tests that start the real vLLM engine.
# Fails when any test fails; never passes on "no tests collected".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
status=0
echo "== ruff"
.venv/bin/ruff check . || status=1
echo "== tests without the engine"
$PY -m pytest -m "not engine" -q -p no:cacheprovider "$@" || status=1
echo "== tests with the real vLLM engine (CPU, tiny checkpoint)"
$PY -m pytest -m engine -q -p no:cacheprovider "$@" || status=1
exit $status
