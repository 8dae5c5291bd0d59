#!/usr/bin/env bash
# Installs the Debian packages the pipelines and their tests use, when they are missing.
# As root on Debian/Ubuntu only; elsewhere it says what to install and exits non-zero.
set -euo pipefail
PACKAGES=(git make curl python3-venv docker.io docker-registry prometheus prometheus-alertmanager
          prometheus-pushgateway postgresql redis-server debootstrap busybox-static docker-compose)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "Missing packages: ${missing[*]}. Install them (Debian: apt-get install ${missing[*]}) and rerun." >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
# Where systemd runs, the packages start their own daemons; the tests and `make run` start their own.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  for svc in prometheus prometheus-alertmanager prometheus-pushgateway docker-registry postgresql redis-server; do
    systemctl stop "$svc" >/dev/null 2>&1 || true
  done
fi
