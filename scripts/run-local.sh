#!/usr/bin/env bash
# `make run` / `make stop`: the whole pipeline on one machine (the local profile).
#   start [--distributed] [--sqlite]: venv, Docker engine, registry, base images, demo git repos, GitOps repo,
#          monitoring (Prometheus, Alertmanager, Pushgateway, demo traffic), Airflow standalone on PostgreSQL; --distributed: the docker-compose.yaml topology natively (Redis,
#          api-server, two schedulers, dag-processor, triggerer, Celery workers); --sqlite (or
#          DELIVERY_AIRFLOW_DB=sqlite): SQLite instead of PostgreSQL, only when asked for
#   stop:  Airflow, monitoring, demo containers, registry, and the Docker engine if this script started it
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${DELIVERY_STATE_DIR:-$ROOT/.local}"
PORT="${AIRFLOW_PORT:-8080}"
PY="$ROOT/.venv/bin/python"
export DELIVERY_STATE_DIR="$STATE" PYTHONPATH="$ROOT/plugins"

step() { printf '\n==> %s\n' "$*"; }

install_debian_packages() {
  bash "$ROOT/scripts/install-deps.sh"
}

start() {
  local airflow_args=()
  for arg in "$@"; do
    case "$arg" in
      --distributed) airflow_args+=(--distributed) ;;
      --sqlite) airflow_args+=(--database sqlite) ;;
      *) echo "usage: $0 start [--distributed] [--sqlite]" >&2; exit 2 ;;
    esac
  done
  install_debian_packages
  step "Python environment (.venv)"
  make -C "$ROOT" --no-print-directory install
  step "Docker engine"
  bash "$ROOT/scripts/local/docker-engine.sh" start
  step "Image registry on 127.0.0.1:5000"
  bash "$ROOT/scripts/local/registry.sh" start
  step "Base images (built locally, nothing is pulled)"
  bash "$ROOT/scripts/local/base-images.sh" all
  step "Demo service repos and the GitOps repo"
  "$PY" -m delivery.devenv.demo setup --state "$STATE"
  step "Monitoring: Prometheus, Alertmanager, Pushgateway, demo traffic (127.0.0.1)"
  "$PY" -m delivery.devenv.monitoring start --state "$STATE" --catalog "$ROOT/include/catalog-local" \
    --airflow-url "http://127.0.0.1:$PORT" >/dev/null
  step "Airflow on 127.0.0.1:$PORT ${airflow_args[*]}"
  info="$("$PY" -m delivery.devenv.airflow_server start --home "$STATE/airflow" --port "$PORT" \
    --catalog "$ROOT/include/catalog-local" "${airflow_args[@]}")"
  "$PY" - "$info" "$STATE" <<'PYEOF'
import json, sys
info, state = json.loads(sys.argv[1]), sys.argv[2]
users = info["users"]
print(f"""
Airflow is up: {info['url']}
  admin        password {users['admin']}
  alice, bob   approvers of visiobook-demo-web   ({users['alice']} / {users['bob']})
  erin, frank  approvers of visiobook-inference  ({users['erin']} / {users['frank']})
  oncall       break-glass approver of both     ({users['oncall']})
  mallory      a user who is not an approver    ({users['mallory']})
  (all passwords: {state}/airflow/passwords.json)

Topology: {info['topology']}; logs: {info['logs']}
  pids: {', '.join(f'{name} {pid}' for name, pid in info['pids'].items())}

What to click:
  1. Open {info['url']} and log in as admin.
  2. Dags -> deliver_visiobook_demo_web -> Trigger (ref: main) -> watch validate, build, image, staging.
  3. At approval.approve_production, log in as alice (or bob) and answer under "Required actions".
  4. Production serves the new version at http://127.0.0.1:18091/ (staging: http://127.0.0.1:18081/).

Make a change and ship it:
  cd {state}/src/visiobook-demo-web && edit VERSION && git commit -am "bump" && git push
  then trigger the DAG again (or with sha = the new commit).
  More to try (a slow release, one that degrades later, walking around the gate): README, "What you can try".

Stop everything: make stop
""")
PYEOF
  "$PY" -m delivery.devenv.monitoring urls --state "$STATE"
}

stop() {
  step "Airflow"
  if [ -x "$PY" ]; then "$PY" -m delivery.devenv.airflow_server stop --home "$STATE/airflow" || true; fi
  step "Monitoring (Prometheus, Alertmanager, Pushgateway, demo traffic)"
  if [ -x "$PY" ]; then "$PY" -m delivery.devenv.monitoring stop --state "$STATE" || true; fi
  step "Demo containers"
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ids="$(docker ps -aq --filter label=io.visiobook.managed-by=delivery)"
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
  fi
  step "Registry"
  bash "$ROOT/scripts/local/registry.sh" stop || true
  step "Docker engine (only if started by make run)"
  bash "$ROOT/scripts/local/docker-engine.sh" stop || true
}

case "${1:-start}" in
  start) shift || true; start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start [--distributed] [--sqlite] | stop" >&2; exit 2 ;;
esac
