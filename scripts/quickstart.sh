#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run the quickstart job.
#   bash scripts/quickstart.sh [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/epiq train configs/quickstart.yaml "$@"
