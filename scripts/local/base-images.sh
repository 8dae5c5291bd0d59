#!/usr/bin/env bash
# Build the base images the demo services' Dockerfiles need, locally, without
# pulling from any registry:
#
#   visiobook/python-base:bookworm  Debian bookworm minbase + python3 (stdlib only),
#                                   made with debootstrap and `docker import`.
#   visiobook/busybox:latest        a static busybox (~1 MB), for tiny tests.
#
# Usage: scripts/local/base-images.sh [python|busybox|all]   (default: all)
#
# Idempotent: an image that already exists is skipped. The python root
# filesystem is cached as a tarball in $DELIVERY_STATE_DIR/base-images, so a
# rebuild after `docker rmi` (or on a fresh engine) only re-imports it.
#
# Environment:
#   DELIVERY_STATE_DIR  state dir (default: <repo>/.local)
#   BASE_IMAGE          pull this image instead of debootstrapping and tag it as
#                       visiobook/python-base:bookworm (where registries are reachable)
#   BUSYBOX_IMAGE       same, for visiobook/busybox:latest
#   DEBIAN_MIRROR       mirror for debootstrap (default: the first Debian URI in
#                       /etc/apt/sources.list{,.d/*}, else http://deb.debian.org/debian)
#   DEBIAN_SUITE        suite (default: bookworm)
#   FORCE=1             rebuild even when the image exists (and refresh the cache)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PYTHON_IMAGE="visiobook/python-base:bookworm"
BUSYBOX_IMAGE_NAME="visiobook/busybox:latest"
CACHE_DIR="$STATE_DIR/base-images"
SUITE="${DEBIAN_SUITE:-bookworm}"
ROOTFS_TAR="$CACHE_DIR/python-base-$SUITE.tar"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local uri
  uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ {print $2}' | grep -Ev 'security|updates' | grep -m1 -E '/debian/?$' || true)"
  if [ -z "$uri" ]; then
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '/^deb / && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) {print $i; exit}}' || true)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

from_pull() { # SOURCE TARGET
  log "pulling $1 and tagging it $2"
  docker pull "$1" >&2 || die "could not pull $1"
  docker tag "$1" "$2"
}

build_python() {
  if [ "${FORCE:-0}" != 1 ] && image_exists "$PYTHON_IMAGE"; then
    log "$PYTHON_IMAGE exists; skipping"
    return
  fi
  if [ -n "${BASE_IMAGE:-}" ]; then
    from_pull "$BASE_IMAGE" "$PYTHON_IMAGE"
    return
  fi
  mkdir -p "$CACHE_DIR"
  if [ "${FORCE:-0}" = 1 ] || [ ! -s "$ROOTFS_TAR" ]; then
    is_root || die "debootstrap needs root (or set BASE_IMAGE to an image you can pull)"
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local mirror rootfs
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$rootfs'" EXIT
    log "debootstrap --variant=minbase --include=python3 $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1 \
      || { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed; see $CACHE_DIR/debootstrap.log"; }
    # vfs (where overlay2 cannot run) copies every layer for every container: keep the base small.
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
      "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/lintian "$rootfs"/var/cache/apt/*.bin \
      "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
      "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
    chmod 0755 "$rootfs" # mktemp made it 0700; it becomes the image's /
    log "caching the root filesystem as $ROOTFS_TAR"
    tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$rootfs"
    trap - EXIT
  else
    log "using the cached root filesystem $ROOTFS_TAR"
  fi
  log "importing $PYTHON_IMAGE"
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=python3 $SUITE" \
    "$ROOTFS_TAR" "$PYTHON_IMAGE" >/dev/null
  docker run --rm --network none "$PYTHON_IMAGE" python3 -c 'import sys; print(sys.version.split()[0])' >/dev/null \
    || die "$PYTHON_IMAGE was imported but python3 does not run in it"
  log "built $PYTHON_IMAGE"
}

build_busybox() {
  if [ "${FORCE:-0}" != 1 ] && image_exists "$BUSYBOX_IMAGE_NAME"; then
    log "$BUSYBOX_IMAGE_NAME exists; skipping"
    return
  fi
  if [ -n "${BUSYBOX_IMAGE:-}" ]; then
    from_pull "$BUSYBOX_IMAGE" "$BUSYBOX_IMAGE_NAME"
    return
  fi
  local bb
  bb="$(command -v busybox || true)"
  if [ -z "$bb" ] || ldd "$bb" >/dev/null 2>&1; then
    apt_install busybox-static
    bb=/bin/busybox
  fi
  ldd "$bb" >/dev/null 2>&1 && die "$bb is dynamically linked; install busybox-static"
  local rootfs applet
  mkdir -p "$CACHE_DIR"
  rootfs="$(mktemp -d "$CACHE_DIR/busybox.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" EXIT
  chmod 0755 "$rootfs" # mktemp made it 0700; it becomes the image's /
  mkdir -p "$rootfs"/{bin,etc,tmp,root,var/tmp}
  chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
  cp "$bb" "$rootfs/bin/busybox"
  for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  log "importing $BUSYBOX_IMAGE_NAME from $bb"
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/bin' --change 'CMD ["sh"]' --message "static busybox" - "$BUSYBOX_IMAGE_NAME" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
  log "built $BUSYBOX_IMAGE_NAME"
}

need_cmd docker
docker info >/dev/null 2>&1 || die "the Docker engine does not answer; run scripts/local/docker-engine.sh start"
mkdir -p "$CACHE_DIR"
# Serialise concurrent runs (parallel test sessions share the engine and cache).
exec 9>"$CACHE_DIR/.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 600 9 || die "timed out waiting for another base-images.sh run"
fi

case "${1:-all}" in
  python) build_python ;;
  busybox) build_busybox ;;
  all) build_busybox; build_python ;;
  *) echo "usage: $0 [python|busybox|all]" >&2; exit 2 ;;
esac
