#!/usr/bin/env bash
# CI entry points for this service; stdlib only (python3 and, for build, docker).
#
# Usage: ./ci.sh lint|test|coverage|build|all
#   lint       py_compile + a tiny stdlib linter (tools/lint.py)
#   test       unit and integration tests (python3 -m unittest)
#   coverage   tests under the stdlib `trace` module; fails below COVERAGE_MIN (default 75)
#   build      docker build; IMAGE (default visiobook/<service>:dev), BASE_IMAGE, VCS_REF (revision label)
set -euo pipefail
cd "$(dirname "$0")"
SERVICE="$(basename "$PWD")"
PYTHON="${PYTHON:-python3}"

case "${1:-all}" in
  lint) "$PYTHON" tools/lint.py ;;
  test) "$PYTHON" -m unittest discover -s tests -t . -v ;;
  coverage) "$PYTHON" tools/coverage.py ${COVERAGE_XML:+--xml "$COVERAGE_XML"} ;;
  build)
    docker build \
      --build-arg "BASE_IMAGE=${BASE_IMAGE:-visiobook/python-base:bookworm}" \
      --label "org.opencontainers.image.revision=${VCS_REF:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" \
      -t "${IMAGE:-visiobook/$SERVICE:dev}" .
    ;;
  all) "$0" lint && "$0" test && "$0" coverage ;;
  *) echo "usage: $0 lint|test|coverage|build|all" >&2; exit 2 ;;
esac
