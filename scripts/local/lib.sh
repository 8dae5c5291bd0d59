# shellcheck shell=bash
# Shared helpers for the local-profile platform scripts. Source it; do not run it.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${DELIVERY_STATE_DIR:-$REPO_ROOT/.local}"
export REPO_ROOT STATE_DIR

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "required command '$1' not found${2:+ ($2)}"
}

is_root() { [ "$(id -u)" -eq 0 ]; }

is_debian() { [ -r /etc/debian_version ] && command -v apt-get >/dev/null 2>&1; }

# apt_install PKG...: install Debian packages when missing (root on Debian only).
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  is_debian || die "packages missing (${missing[*]}) and this is not a Debian system; install them yourself"
  is_root || die "packages missing (${missing[*]}); run as root or install them: apt-get install ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    log "apt-get install failed; refreshing package lists and retrying"
    apt-get update >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
      || die "apt-get install ${missing[*]} failed"
  fi
}

# pid_alive PIDFILE: true when the pidfile names a live process.
pid_alive() {
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# stop_pid PIDFILE NAME [GRACE_SECONDS]: TERM the process (and its process group
# when it leads one), wait, then KILL what is left. Removes the pidfile.
stop_pid() {
  local pidfile="$1" name="$2" grace="${3:-20}" pid pgid i
  if ! pid_alive "$pidfile"; then
    log "$name is not running (no live pid in $pidfile)"
    rm -f "$pidfile"
    return 0
  fi
  pid="$(cat "$pidfile")"
  pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop within ${grace}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Only signal the group when the process led it (it was started with setsid).
  if [ -n "$pgid" ] && [ "$pgid" = "$pid" ]; then
    kill -TERM -- "-$pgid" 2>/dev/null || true
    sleep 0.5
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
  log "$name stopped"
}
