#!/usr/bin/env bash
# A Docker engine and the test images, so that the conformance suite runs through
# testcontainers on a machine that has no engine and cannot pull from Docker Hub (CI).
# Run it (don't source it):
#
#   eval "$(scripts/docker.sh start)"    # install the engine if missing, start it unless one answers
#   eval "$(scripts/docker.sh images)"   # the same, then build the local images; exports
#                                        # LOCKSTORE_TEST_{REDIS,POSTGRES,DYNAMODB}_IMAGE
#   scripts/docker.sh stop               # stop the engine `start` started, by its recorded PID
#
# stdout carries only `export ...` lines; progress and errors go to stderr. If a command
# fails, stdout ends with `false`, so the eval fails too (and stops a `set -e` caller).
# With Docker Hub access you need none of this: testcontainers pulls the official images
# (redis:7, postgres:16, amazon/dynamodb-local) by default.
#
# The engine: Debian's `docker.io` (apt, with iptables), started as `dockerd` with default
# settings (overlay2, the docker0 bridge), in its own session (setsid) so it outlives this
# script; its PID goes to $LOCKSTORE_DOCKER_DIR (default /tmp/lockstore-docker) and `stop`
# ends exactly that process. An engine that already answers on the socket (someone else's)
# is used as it is and never stopped. Should a kernel lack overlayfs, the start falls back
# to the vfs storage driver. Needs root (or sudo): dockerd manages namespaces and iptables.
#
# The images, built without a registry (the Dockerfiles are in scripts/images/):
#   local/lockstore-base:bookworm  Debian bookworm made by mmdebstrap, with redis-server,
#                                  postgresql-15 and python3-pip already installed
#   local/redis:7                  redis-server 7.0 on 6379                (stands in for redis:7)
#   local/postgres:15              PostgreSQL 15 on 5432, POSTGRES_* like the official image
#                                  (Debian bookworm has no 16)              (for postgres:16)
#   local/moto:5                   moto 5, single-threaded, on 8000         (for amazon/dynamodb-local)
# Why one base holding all three servers: one bootstrap run installs every package at once
# (measured on a 2-core VM: 64 s for the base with all packages, against 95 s for
# `debootstrap --variant=minbase` alone before any server is installed), and the three images
# share its one layer on disk; each image only adds its entry point (moto adds its pip
# packages). mmdebstrap rather than debootstrap: it installs through apt and, with its
# eatmydata hook, skips dpkg's fsync calls, which are most of the time on a VM disk.
# Every image carries a label with a hash of what built it (package list, Dockerfile, files);
# an image whose label matches is kept, anything else is rebuilt — so a second run costs
# nothing and an edited Dockerfile is never ignored.
# pip inside the build needs the host's CA bundle (HTTPS may pass a TLS-inspecting proxy):
# it is copied into the moto build context. apt uses plain http and needs nothing.
set -euo pipefail

DIR=${LOCKSTORE_DOCKER_DIR:-/tmp/lockstore-docker}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MIRROR=${LOCKSTORE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LOCKSTORE_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
MOTO_VERSION=5.2.1
BASE_IMAGE=local/lockstore-base:bookworm
BASE_PACKAGES=redis-server,postgresql-15,python3-pip,ca-certificates
LABEL=lockstore.build

log() { echo "docker.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
fail_with_log() {
  log "ERROR: $1 (last lines of $2 below)"
  tail -n 40 "$2" >&2 2>/dev/null || true
  exit 1
}
emit() { printf 'export %s=%q\n' "$1" "$2"; }
sudo=
((EUID == 0)) || sudo=sudo

# ---------------------------------------------------------------- the engine
engine_answers() { timeout 10 docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }
alive() { [[ -f $1 ]] && kill -0 "$(<"$1")" 2>/dev/null; }

apt_install() {
  log "installing $* via apt (log: $DIR/apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  # Package lists are refreshed only when the install fails (empty on a fresh image, or stale).
  { $sudo apt-get install -y --no-install-recommends "$@" ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "$@"; }; } >"$DIR/apt.log" 2>&1 ||
    fail_with_log "apt-get install $* failed" "$DIR/apt.log"
}

start_engine() {
  if engine_answers; then
    log "engine: answering at ${DOCKER_HOST:-unix:///var/run/docker.sock} (API $(docker version --format '{{.Server.APIVersion}}'))"
    return 0
  fi
  [[ -z ${DOCKER_HOST:-} ]] || die "DOCKER_HOST=$DOCKER_HOST does not answer; unset it to start a local engine"
  local pkgs=()
  command -v dockerd >/dev/null || pkgs+=(docker.io)
  command -v iptables >/dev/null || pkgs+=(iptables)
  ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
  local started=$SECONDS driver
  for driver in default vfs; do
    local args=()
    [[ $driver == default ]] || args=(--storage-driver "$driver")
    # setsid: the engine must survive this script and a Ctrl-C in the shell that ran it.
    $sudo setsid dockerd "${args[@]}" </dev/null >"$DIR/dockerd.log" 2>&1 9>&- &
    echo $! >"$DIR/dockerd.pid"
    local deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)) && alive "$DIR/dockerd.pid" && ! engine_answers; do sleep 0.2; done
    if engine_answers; then
      log "engine: dockerd started (pid $(<"$DIR/dockerd.pid"), storage $driver, API $(docker version --format '{{.Server.APIVersion}}'), $((SECONDS - started)) s)"
      return 0
    fi
    if alive "$DIR/dockerd.pid"; then
      fail_with_log "dockerd did not answer within 60 s" "$DIR/dockerd.log"
    fi
    log "engine: dockerd exited with storage driver $driver; trying the next one"
    cp "$DIR/dockerd.log" "$DIR/dockerd-$driver.log"
  done
  rm -f "$DIR/dockerd.pid"
  fail_with_log "dockerd did not start" "$DIR/dockerd-default.log"
}

stop_engine() {
  if ! alive "$DIR/dockerd.pid"; then
    log "engine: none started by this script is running"
    rm -f "$DIR/dockerd.pid"
    return 0
  fi
  local pid i
  pid=$(<"$DIR/dockerd.pid")
  # TERM: dockerd stops its containers and its containerd, then exits.
  $sudo kill "$pid"
  for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "engine: dockerd (pid $pid) still running after 30 s; killing it"
    $sudo kill -9 "$pid"
  fi
  rm -f "$DIR/dockerd.pid"
  log "engine: stopped dockerd (pid $pid)"
}

# ---------------------------------------------------------------- the images
hash_of() { sha256sum | cut -c1-16; }
image_label() { docker image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }

build_base() {
  local want
  want=$(printf '%s\n' "$BASE_PACKAGES" "$MIRROR" "$SECURITY_MIRROR" "mmdebstrap essential v1" | hash_of)
  if [[ $(image_label "$BASE_IMAGE") == "$want" ]]; then
    log "image $BASE_IMAGE: up to date"
    echo "$want"
    return 0
  fi
  local pkgs=()
  command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
  command -v eatmydata >/dev/null || pkgs+=(eatmydata)
  ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
  local started=$SECONDS logf=$DIR/build-base.log
  log "image $BASE_IMAGE: bootstrapping Debian bookworm with $BASE_PACKAGES (log: $logf)"
  # essential + the servers' packages (apt, without recommends) instead of minbase: the images
  # never run apt. No docs, man pages or translations. postgresql-common must not create the
  # default cluster: the postgres image's entrypoint makes its own in $PGDATA.
  # The tar goes straight into `docker import` through a pipe.
  $sudo mmdebstrap --variant=essential --include="$BASE_PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --essential-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/lockstore.conf"' \
    bookworm - \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main" 2>"$logf" |
    docker import --change "LABEL $LABEL=$want" --change 'CMD ["/bin/sh"]' - "$BASE_IMAGE" >>"$logf" 2>&1 ||
    fail_with_log "building $BASE_IMAGE failed" "$logf"
  log "image $BASE_IMAGE: built in $((SECONDS - started)) s"
  echo "$want"
}

# build_image NAME BASE_HASH [FILE...]: scripts/images/NAME/* plus FILEs as the build context.
build_image() {
  local name=$1 base_hash=$2 tag
  shift 2
  case $name in
    redis) tag=local/redis:7 ;;
    postgres) tag=local/postgres:15 ;;
    moto) tag=local/moto:5 ;;
  esac
  local context=$DIR/context-$name want
  rm -rf "$context" && mkdir -p "$context"
  cp -R "$HERE/images/$name/." "$context/"
  (($# == 0)) || cp "$@" "$context/"
  want=$( (echo "$base_hash $MOTO_VERSION" && cd "$context" && find . -type f ! -name host-ca-certificates.crt | LC_ALL=C sort | xargs cat) | hash_of)
  if [[ $(image_label "$tag") == "$want" ]]; then
    log "image $tag: up to date"
  else
    local started=$SECONDS logf=$DIR/build-$name.log
    log "image $tag: building (log: $logf)"
    # The legacy builder: this engine has no buildx plugin.
    DOCKER_BUILDKIT=0 docker build --quiet --label "$LABEL=$want" \
      --build-arg "MOTO_VERSION=$MOTO_VERSION" -t "$tag" "$context" >"$logf" 2>&1 ||
      fail_with_log "building $tag failed" "$logf"
    log "image $tag: built in $((SECONDS - started)) s"
  fi
  rm -rf "$context"
}

build_images() {
  local base_hash started=$SECONDS
  base_hash=$(build_base)
  build_image redis "$base_hash"
  build_image postgres "$base_hash"
  local ca=/etc/ssl/certs/ca-certificates.crt
  [[ -f $ca ]] || die "no CA bundle at $ca (pip inside the moto build needs the host's)"
  cp "$ca" "$DIR/host-ca-certificates.crt"
  build_image moto "$base_hash" "$HERE/moto_single_threaded.py" "$DIR/host-ca-certificates.crt"
  rm -f "$DIR/host-ca-certificates.crt"
  log "images ready ($((SECONDS - started)) s)"
  emit LOCKSTORE_TEST_REDIS_IMAGE local/redis:7
  emit LOCKSTORE_TEST_POSTGRES_IMAGE local/postgres:15
  emit LOCKSTORE_TEST_DYNAMODB_IMAGE local/moto:5
}

# Serialise concurrent runs (CI builds the images in the background while clippy runs, and
# the test script then asks for them again).
lock() { mkdir -p "$DIR"; exec 9>"$DIR/lock"; flock 9; }

case ${1:-} in
  start | images)
    trap 's=$?; ((s == 0)) || echo "false  # docker.sh failed, see stderr"' EXIT
    lock
    start_engine
    emit DOCKER_HOST "${DOCKER_HOST:-unix:///var/run/docker.sock}"
    [[ $1 == start ]] || build_images
    ;;
  stop)
    lock
    stop_engine
    ;;
  *) die "usage: eval \"\$($0 start)\" | eval \"\$($0 images)\" | $0 stop" ;;
esac
