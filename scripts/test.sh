#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages as root, then the venv), then `make test`:
# ruff, mypy and the whole suite, which starts the real services it needs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/install-deps.sh"
exec make -C "$ROOT" --no-print-directory test
