#!/usr/bin/env bash
# Upgrades on purpose: re-resolves requirements/ to the newest releases pyproject.toml allows, then
# runs everything CI runs on it — the set-up from the new lock, the whole test suite and the
# installers' build and self-test. Commit the new lock only when this passes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh  # the locked uv
.venv/bin/python scripts/lock.py --upgrade
git --no-pager diff --stat -- requirements/
bash .ci/run
