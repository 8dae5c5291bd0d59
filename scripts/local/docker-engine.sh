#!/usr/bin/env bash
# Start, stop or check the Docker engine used by the local profile.
#
# Usage: scripts/local/docker-engine.sh start|stop|status
#
# start   Uses an engine that already answers `docker info` (DOCKER_HOST or the
#         default socket) and starts nothing. Otherwise, on Debian as root, it
#         installs docker.io when missing and starts dockerd in its own session:
#           dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=DRIVER
#         (no bridge network: containers use network_mode host or none). DRIVER is
#         overlay2 when the kernel mounts an overlay on the data root's filesystem,
#         else vfs (which copies the whole image for every layer and container:
#         a demo image build takes ~10 s with vfs, ~0.3 s with overlay2).
#         Logs and pidfile live in $DELIVERY_STATE_DIR/docker (default .local/docker).
# stop    Stops only an engine this script started (its pidfile), with its
#         process group (containerd and shims started by it); never another engine.
# status  Exit 0 when an engine answers, 1 otherwise.
#
# Environment:
#   DELIVERY_STATE_DIR       state dir (default: <repo>/.local)
#   DOCKERD_DATA_ROOT        dockerd --data-root (default: /var/lib/docker)
#   DOCKERD_STORAGE_DRIVER   storage driver (default: overlay2 where it works, else vfs)
#   DOCKERD_EXTRA_ARGS       extra dockerd flags (word-split)
#   DOCKER_START_TIMEOUT     seconds to wait for readiness (default: 60)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENGINE_DIR="$STATE_DIR/docker"
PIDFILE="$ENGINE_DIR/dockerd.pid"
LOGFILE="$ENGINE_DIR/dockerd.log"
TIMEOUT="${DOCKER_START_TIMEOUT:-60}"

engine_up() { docker info >/dev/null 2>&1; }

# storage_driver: $DOCKERD_STORAGE_DRIVER, else overlay2 when an overlay mounts next to the
# data root (not inside a container without the privilege, not on a filesystem overlay
# cannot sit on), else vfs.
storage_driver() {
  if [ -n "${DOCKERD_STORAGE_DRIVER:-}" ]; then
    echo "$DOCKERD_STORAGE_DRIVER"
    return
  fi
  local root="${DOCKERD_DATA_ROOT:-/var/lib/docker}" probe driver=vfs
  mkdir -p "$root"
  probe="$(mktemp -d "$root/.overlay-probe.XXXXXX")"
  mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if mount -t overlay overlay \
    -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
    umount "$probe/merged"
    driver=overlay2
  fi
  rm -rf "$probe"
  echo "$driver"
}

cmd_status() {
  if engine_up; then
    local version
    version="$(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')"
    if pid_alive "$PIDFILE"; then
      log "engine running (server $version, started by this script, pid $(cat "$PIDFILE"))"
    else
      log "engine running (server $version, not started by this script)"
    fi
    return 0
  fi
  log "engine not running"
  return 1
}

cmd_start() {
  if engine_up; then
    log "using the running Docker engine ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    return 0
  fi
  if pid_alive "$PIDFILE"; then
    log "dockerd (pid $(cat "$PIDFILE")) is starting; waiting"
  else
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
      is_debian && is_root || die "no Docker engine answers and dockerd/docker are not installed; install Docker or start your engine"
      apt_install docker.io
    fi
    is_root || die "no Docker engine answers 'docker info' and dockerd needs root; start your engine (or run as root)"
    mkdir -p "$ENGINE_DIR"
    local args=(--iptables=false --ip6tables=false --bridge=none
      "--storage-driver=$(storage_driver)"
      "--pidfile=$ENGINE_DIR/dockerd.own.pid")
    [ -n "${DOCKERD_DATA_ROOT:-}" ] && args+=("--data-root=$DOCKERD_DATA_ROOT")
    # shellcheck disable=SC2206
    [ -n "${DOCKERD_EXTRA_ARGS:-}" ] && args+=(${DOCKERD_EXTRA_ARGS})
    log "starting dockerd ${args[*]} (log: $LOGFILE)"
    setsid dockerd "${args[@]}" >>"$LOGFILE" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
  fi
  local i
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    if engine_up; then
      log "engine ready after ~$((i / 5))s (pid $(cat "$PIDFILE"))"
      return 0
    fi
    if ! pid_alive "$PIDFILE"; then
      tail -n 20 "$LOGFILE" >&2 || true
      rm -f "$PIDFILE"
      die "dockerd exited during start-up; see $LOGFILE"
    fi
    sleep 0.2
  done
  tail -n 20 "$LOGFILE" >&2 || true
  die "dockerd did not answer within ${TIMEOUT}s; see $LOGFILE"
}

cmd_stop() {
  if ! pid_alive "$PIDFILE"; then
    rm -f "$PIDFILE"
    if engine_up; then
      log "the running engine was not started by this script; leaving it alone"
    else
      log "engine not running"
    fi
    return 0
  fi
  # dockerd stops its containers and its managed containerd (own session) on
  # TERM; give it time. Its direct children are remembered first so that none
  # is left behind if dockerd has to be killed.
  local children child
  children="$(pgrep -P "$(cat "$PIDFILE")" 2>/dev/null || true)"
  stop_pid "$PIDFILE" dockerd 45
  for child in $children; do
    if kill -0 "$child" 2>/dev/null; then
      log "stopping leftover child $child ($(ps -o comm= -p "$child" 2>/dev/null || echo '?'))"
      kill -TERM "$child" 2>/dev/null || true
      sleep 2
      kill -KILL "$child" 2>/dev/null || true
    fi
  done
  rm -f "$ENGINE_DIR/dockerd.own.pid"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
