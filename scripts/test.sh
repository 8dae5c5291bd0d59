#!/usr/bin/env bash
# The test command: installs what is missing (Debian packages as root, then the venv), then `make test`:
# ruff, mypy and the whole suite, which starts the real services it needs.
#
# The suite leaves nothing running that it started: the Docker engine and the image registry are
# stopped at the end when they were not already running before (an engine or a registry you
# started yourself, e.g. with `scripts/run-local.sh start`, is left as it was). Airflow,
# PostgreSQL, Prometheus, Alertmanager and the stand-ins are stopped by the tests' own fixtures.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/install-deps.sh"

started_here=()
bash "$ROOT/scripts/local/registry.sh" status >/dev/null 2>&1 || started_here+=(registry)
bash "$ROOT/scripts/local/docker-engine.sh" status >/dev/null 2>&1 || started_here+=(docker-engine)

# The Docker engine, the registry and the base images (a debootstrap on a fresh machine, about
# 40 s) get ready in the background while the venv installs and the linters run. The tests ask for
# them through delivery.devenv.platform, which takes the same lock file: they wait for this, then
# find them ready. A step that fails here is tried again there, and the test that needs it says why.
state="${DELIVERY_STATE_DIR:-$ROOT/.local}"
mkdir -p "$state"
(
  exec 9>"$state/platform.lock"
  flock 9
  # 9>&-: the daemons these start (dockerd, the registry) must not inherit the lock, or hold it forever.
  bash "$ROOT/scripts/local/docker-engine.sh" start 9>&- && bash "$ROOT/scripts/local/registry.sh" start 9>&- \
    && bash "$ROOT/scripts/local/base-images.sh" all 9>&-
) >"$state/platform-prepare.log" 2>&1 &
preparing=$!

stop_what_the_suite_started() {
  local status=$? part
  wait "$preparing" 2>/dev/null || true  # never stop the engine under a base image's import
  for part in "${started_here[@]}"; do  # the registry first, then the engine
    bash "$ROOT/scripts/local/$part.sh" stop || echo "test.sh: could not stop the $part the suite started" >&2
  done
  exit "$status"
}
trap stop_what_the_suite_started EXIT

make -C "$ROOT" --no-print-directory test
