#!/usr/bin/env bash
# Builds every image docker-compose.yml needs without an image registry, from Debian's packages:
#
#   1. stampede-base:bookworm   a minimal Debian root file system made by debootstrap from the
#                               Debian mirror apt already uses, imported with `docker import`
#   2. stampede-redis:bookworm  base + Debian's redis-server   (deploy/redis.Dockerfile)
#   3. stampede-haproxy:bookworm base + Debian's haproxy       (deploy/haproxy.Dockerfile)
#   4. stampede:offline         the project Dockerfile's `runtime-base` stage on the base image,
#                               plus the binary from `cargo build --release` on this machine
#                               (deploy/prebuilt.Dockerfile)
#
# Images 1-3 are built once: an image that already exists (by tag) is kept; --rebuild rebuilds
# them. Image 4 is rebuilt each run (cargo and docker caches make an unchanged rebuild take
# seconds). Then start the stack with them:
#
#   docker compose --env-file deploy/offline.env up -d        (or docker-compose ...)
#
# Needs: root (debootstrap), debootstrap, docker, cargo. Only the Debian mirror is contacted (and
# crates.io by cargo). Settings (environment):
#   STAMPEDE_BASE_IMAGE, STAMPEDE_REDIS_IMAGE, STAMPEDE_LB_IMAGE, STAMPEDE_IMAGE   image names
#   STAMPEDE_BINARY   use this stampede binary instead of running `cargo build --release`
#   DEBIAN_MIRROR     Debian mirror (default: the one in /etc/apt/sources.list*)
#   DEBIAN_SECURITY_MIRROR  Debian security mirror (default: likewise; "none" to leave it out)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=bookworm
BASE_IMAGE=${STAMPEDE_BASE_IMAGE:-stampede-base:$SUITE}
REDIS_IMAGE=${STAMPEDE_REDIS_IMAGE:-stampede-redis:$SUITE}
LB_IMAGE=${STAMPEDE_LB_IMAGE:-stampede-haproxy:$SUITE}
NODE_IMAGE=${STAMPEDE_IMAGE:-stampede:offline}
RUNTIME_BASE_IMAGE=stampede-runtime-base:$SUITE

REBUILD=0
BUILD_NODE=1
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        --no-stampede) BUILD_NODE=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; echo "Flags: --rebuild (rebuild images 1-3), --no-stampede (skip image 4)"; exit 0 ;;
        *) echo "build-offline-images: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[build-offline-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# Legacy builder on purpose: works with Docker Engine 20.10 and without the buildx plugin.
dbuild() { DOCKER_BUILDKIT=0 docker build --quiet "$@" >/dev/null 2>"$BUILD_LOG" || { cat "$BUILD_LOG" >&2; return 1; }; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed)"

# Two builds at once (two test runs) would debootstrap twice; the second waits for the first.
LOCK=${TMPDIR:-/tmp}/stampede-offline-images.lock
exec 9>"$LOCK"
if command -v flock >/dev/null; then flock 9; fi
BUILD_LOG=$(mktemp)
trap 'rm -f "$BUILD_LOG"' EXIT

# The Debian mirror apt uses on this machine: the first URI serving "$SUITE" (one-line or deb822).
find_mirror() { # $1 = suite
    local suite=$1 files
    files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$files" ] || return 0
    # shellcheck disable=SC2086
    awk -v suite="$suite" '
        /^[[:space:]]*#/ { next }
        /^deb[[:space:]]/ {              # deb [options] URI SUITE COMPONENTS
            i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; exit }
            next
        }
        /^URIs:/   { uris = $2; next }
        /^Suites:/ { for (j = 2; j <= NF; j++) if ($j == suite && uris != "") { print uris; exit } next }
        /^[[:space:]]*$/ { uris = "" }
    ' $files
}
MIRROR=${DEBIAN_MIRROR:-$(find_mirror "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(find_mirror "$SUITE-security")}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}

total_start=$SECONDS
# What the tags named before this run: removed at the end if rebuilding left them untagged.
OLD_IDS=""
for tag in "$NODE_IMAGE" "$RUNTIME_BASE_IMAGE" "$REDIS_IMAGE" "$LB_IMAGE" "$BASE_IMAGE"; do
    OLD_IDS="$OLD_IDS $(image_id "$tag")"
done

# 1. The base image.
if [ "$REBUILD" = 0 ] && exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE exists, kept"
else
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to build $BASE_IMAGE"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    start=$SECONDS
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/stampede-rootfs.XXXXXX")
    cleanup_rootfs() {
        for m in proc sys dev/pts dev; do umount -l "$rootfs/$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$rootfs"
    }
    trap 'cleanup_rootfs; rm -f "$BUILD_LOG"' EXIT
    log "debootstrap --variant=minbase $SUITE from $MIRROR (a few minutes)"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$BUILD_LOG" 2>&1 \
        || { tail -n 30 "$BUILD_LOG" >&2; cat "$rootfs/debootstrap/debootstrap.log" >&2 2>/dev/null || true; die "debootstrap failed"; }
    # Apt inside the images uses the same mirror; no caches, no docs, no recommends (as in the
    # official Debian images).
    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [ "$SECURITY" = none ] || echo "deb $SECURITY $SUITE-security main"
    } >"$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/apt.conf.d/90stampede" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90stampede-nodoc" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
        "$rootfs"/usr/share/doc/*/changelog* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    log "docker import -> $BASE_IMAGE"
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -C "$rootfs" -c . \
        | docker import \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'ENV LANG=C.UTF-8' \
            -c 'CMD ["bash"]' \
            -m "debootstrap --variant=minbase $SUITE $MIRROR" - "$BASE_IMAGE" >/dev/null
    cleanup_rootfs
    trap 'rm -f "$BUILD_LOG"' EXIT
    log "$BASE_IMAGE built in $((SECONDS - start))s"
fi

# 2, 3. Redis and HAProxy from Debian's packages (apt in the build container reaches the mirror).
for pair in "$REDIS_IMAGE:redis" "$LB_IMAGE:haproxy"; do
    image=${pair%:*}; what=${pair##*:}
    if [ "$REBUILD" = 0 ] && exists "$image"; then
        log "$image exists, kept"
        continue
    fi
    start=$SECONDS
    log "building $image ($what from Debian)"
    dbuild -f "$ROOT/deploy/$what.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$image" "$ROOT/deploy"
    log "$image built in $((SECONDS - start))s"
done

# 4. The node image: the Dockerfile's runtime-base stage, plus a binary built here.
if [ "$BUILD_NODE" = 1 ]; then
    start=$SECONDS
    if [ -n "${STAMPEDE_BINARY:-}" ]; then
        binary=$STAMPEDE_BINARY
    else
        log "cargo build --release -p stampede"
        (cd "$ROOT" && "${CARGO:-cargo}" build --release --locked -p stampede) >&2
        binary=${CARGO_TARGET_DIR:-$ROOT/target}/release/stampede
    fi
    [ -x "$binary" ] || die "no stampede binary at $binary"
    log "binary ready in $((SECONDS - start))s: $binary"
    start=$SECONDS
    dbuild -f "$ROOT/Dockerfile" --target runtime-base --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
        -t "$RUNTIME_BASE_IMAGE" "$ROOT"
    context=$(mktemp -d)
    trap 'rm -rf "$context"; rm -f "$BUILD_LOG"' EXIT
    cp "$binary" "$context/stampede"
    dbuild -f "$ROOT/deploy/prebuilt.Dockerfile" --build-arg "BASE_IMAGE=$RUNTIME_BASE_IMAGE" \
        -t "$NODE_IMAGE" "$context"
    log "$NODE_IMAGE built in $((SECONDS - start))s"
fi
dangling=$(docker image ls -q --no-trunc --filter dangling=true)
for id in $OLD_IDS; do
    if printf '%s\n' "$dangling" | grep -Fxq "$id"; then
        docker image rm "$id" >/dev/null 2>&1 || true
    fi
done
log "done in $((SECONDS - total_start))s: STAMPEDE_IMAGE=$NODE_IMAGE STAMPEDE_REDIS_IMAGE=$REDIS_IMAGE STAMPEDE_LB_IMAGE=$LB_IMAGE"
