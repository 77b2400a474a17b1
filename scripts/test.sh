#!/usr/bin/env bash
# The README's second command: set up .venv if needed, then run the whole test suite.
#   bash scripts/test.sh [pytest args ...]     e.g. bash scripts/test.sh tests/unit -q
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
