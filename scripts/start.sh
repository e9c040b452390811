#!/usr/bin/env bash
# Set up (idempotent) and start the Omnivox desktop app. Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python main.py "$@"
