#!/usr/bin/env bash
# The test command: sets the machine up (deploy/setup.sh), then runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/python -m pytest -q "$@"
