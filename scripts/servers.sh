#!/usr/bin/env bash
# Real test servers for lockstore: Redis, a Redis Cluster of three primaries, PostgreSQL, moto
# and dynalite (two independent DynamoDB-compatible servers), all on 127.0.0.1, on free
# ports, without Docker.
# Run it (don't source it):
#
#   eval "$(scripts/servers.sh start)"     # install + start what is missing, export LOCKSTORE_TEST_*
#   scripts/servers.sh run cargo test      # same, then run a command with those variables set
#   scripts/servers.sh stop                # stop what we started and wipe the state dir
#
# stdout carries only `export ...` lines; all progress and errors go to stderr.
# If start fails, stdout ends with `false`, so the eval fails too (and stops a `set -e` caller).
# A URL already set in the environment
# (LOCKSTORE_TEST_{REDIS,REDIS_CLUSTER,POSTGRES,DYNAMODB,DYNALITE}_URL) means "use that
# server": we neither start nor export that one.
# It also exports LOCKSTORE_TEST_REDIS_SERVER, the redis-server binary that tests restarting
# a private server run.
# Servers are recorded in $LOCKSTORE_SERVERS_DIR (default /tmp/lockstore-servers); a second
# start reuses them if they still answer, otherwise starts fresh ones on new free ports.
# dynalite (npm, pinned below) is installed once into $LOCKSTORE_DYNALITE_HOME (default
# .cache/dynalite-<version> in the checkout, git-ignored), which `stop` keeps.
set -euo pipefail

DIR=${LOCKSTORE_SERVERS_DIR:-/tmp/lockstore-servers}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${LOCKSTORE_PYTHON:-python3}
# 3.2.2, not 4.x: 4.x needs node >= 20, and Debian 12's nodejs is 18.
DYNALITE_VERSION=3.2.2
DYNALITE_HOME=${LOCKSTORE_DYNALITE_HOME:-$HERE/../.cache/dynalite-$DYNALITE_VERSION}

log() { echo "servers.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
fail_with_log() {
  log "ERROR: $1 (last lines of $2 below)"
  tail -n 40 "$2" >&2 2>/dev/null || true
  exit 1
}
# Export here (for `run`) and print for the caller's eval (for `start`).
emit() { export "$1=$2"; printf 'export %s=%q\n' "$1" "$2"; }
# Is the process in pidfile $1 running?  A zombie counts as dead: our servers outlive this
# script, so they get reparented to PID 1, which (in some containers) is slow to reap them.
alive() {
  local stat
  [[ -f $1 ]] && stat=$(cat "/proc/$(<"$1")/stat" 2>/dev/null) && stat=${stat##*) } && [[ ${stat:0:1} != Z ]]
}

# Ask the kernel for a free port.  Tiny race until the server binds it; moto avoids it by
# binding port 0 itself.
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# N distinct free ports on one line: every socket is held until all ports are known.
free_ports() {
  "$PY" -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}

# wait_ready NAME PIDFILE LOG CMD...: poll CMD for up to 30s; give up early if the process died.
wait_ready() {
  local name=$1 pidfile=$2 logf=$3 deadline=$((SECONDS + 30))
  shift 3
  while ((SECONDS < deadline)); do
    "$@" >/dev/null 2>&1 && return 0
    if [[ -f $pidfile ]] && ! alive "$pidfile"; then fail_with_log "$name exited before becoming ready" "$logf"; fi
    sleep 0.1
  done
  fail_with_log "$name not ready after 30s" "$logf"
}

# postgres refuses to run as root, so run its tools as the postgres OS user.
# cd first: runuser keeps the cwd, which postgres often cannot read (e.g. /root).
as_pg() {
  if ((EUID == 0)); then (cd "$DIR" && runuser -u postgres -- "$@"); else "$@"; fi
}

# ---------------------------------------------------------------- installation
apt_install() {
  local sudo=
  ((EUID == 0)) || sudo=sudo
  local aptlog=$DIR/apt.log
  log "installing $* via apt (log: $aptlog)"
  export DEBIAN_FRONTEND=noninteractive
  # Only refresh package lists when the install fails (empty lists on a fresh image, or stale).
  { $sudo apt-get install -y --no-install-recommends "$@" ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "$@"; }; } >"$aptlog" 2>&1 ||
    fail_with_log "apt-get install $* failed" "$aptlog"
  # Outside containers (no policy-rc.d) the packages start system services (redis on 6379,
  # postgres on 5432).  We run our own instances, so don't leave those running.
  local svc
  for svc in redis-server postgresql; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      $sudo systemctl disable --now "$svc" >&2 || true
    fi
  done
}

pg_bin_dir() {
  local d
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1) # newest Debian-packaged version
  [[ -d $d ]] || d=
  [[ -n $d ]] || ! command -v pg_ctl >/dev/null || d=$(dirname "$(readlink -f "$(command -v pg_ctl)")")
  echo "$d"
}

has_dynalite() { [[ -f $DYNALITE_HOME/node_modules/dynalite/package.json ]]; }

has_moto() { "$PY" -c 'import importlib.util as u; assert u.find_spec("moto") and u.find_spec("werkzeug")' 2>/dev/null; }

install_missing() {
  local pkgs=() want_moto=
  [[ -n ${LOCKSTORE_TEST_REDIS_SERVER:-} ]] || command -v redis-server >/dev/null || pkgs+=(redis-server)
  [[ -n ${LOCKSTORE_TEST_POSTGRES_URL:-} || -n $(pg_bin_dir) ]] || pkgs+=(postgresql)
  command -v "$PY" >/dev/null || pkgs+=(python3 python3-pip) # python3 is also our free-port finder
  if [[ -z ${LOCKSTORE_TEST_DYNAMODB_URL:-} ]] && ! has_moto; then
    want_moto=1
    "$PY" -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
  fi
  if [[ -z ${LOCKSTORE_TEST_DYNALITE_URL:-} ]]; then
    command -v node >/dev/null || pkgs+=(nodejs)
    has_dynalite || command -v npm >/dev/null || pkgs+=(npm)
  fi
  ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
  # Resolve pyenv-style shims once: each later python call is then ~100ms cheaper.
  PY=$("$PY" -c 'import sys; print(sys.executable)')
  if [[ -n $want_moto ]]; then
    log "installing moto[server] via pip (log: $DIR/pip.log)"
    # Debian 12's python is "externally managed" (PEP 668); this is a throwaway test box.
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install 'moto[server]' >"$DIR/pip.log" 2>&1 ||
      fail_with_log "pip install moto[server] failed" "$DIR/pip.log"
  fi
  if [[ -z ${LOCKSTORE_TEST_DYNALITE_URL:-} ]] && ! has_dynalite; then
    log "installing dynalite@$DYNALITE_VERSION via npm into $DYNALITE_HOME (log: $DIR/npm.log)"
    # Into a fresh directory, renamed into place only when complete: an interrupted install
    # never looks installed.
    local tmp=$DYNALITE_HOME.tmp.$$
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$tmp" && npm install --no-audit --no-fund --no-save --loglevel=error \
      "dynalite@$DYNALITE_VERSION") >"$DIR/npm.log" 2>&1 ||
      { rm -rf "$tmp"; fail_with_log "npm install dynalite@$DYNALITE_VERSION failed" "$DIR/npm.log"; }
    rm -rf "$DYNALITE_HOME" && mv "$tmp" "$DYNALITE_HOME"
  fi
}

# ---------------------------------------------------------------- servers
# Each server: if recorded in $DIR and still answering, reuse; otherwise start a new one.
# Spawned processes get `9>&-` so they don't inherit (and hold forever) our flock.

# timeout: anything else listening on the port (a collision) would make redis-cli hang.
redis_ping() { [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }

start_redis() {
  [[ -n ${LOCKSTORE_TEST_REDIS_SERVER:-} ]] || emit LOCKSTORE_TEST_REDIS_SERVER "$(command -v redis-server)"
  [[ -z ${LOCKSTORE_TEST_REDIS_URL:-} ]] || { log "redis: using LOCKSTORE_TEST_REDIS_URL from env"; return 0; }
  local port
  if alive "$DIR/redis.pid" && [[ -f $DIR/redis.port ]] && redis_ping "$(<"$DIR/redis.port")"; then
    port=$(<"$DIR/redis.port")
    log "redis: reusing 127.0.0.1:$port"
  else
    port=$(free_port)
    rm -f "$DIR/redis.port"
    # No persistence: tests must not depend on (or leave behind) dump files.  Not --daemonize:
    # with our own background process we know its pid at once and notice if it dies (e.g.
    # port taken); setsid keeps it alive when the terminal that ran us gets Ctrl-C.
    setsid redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
      --dir "$DIR" </dev/null >"$DIR/redis.log" 2>&1 9>&- &
    echo $! >"$DIR/redis.pid"
    wait_ready redis "$DIR/redis.pid" "$DIR/redis.log" redis_ping "$port"
    echo "$port" >"$DIR/redis.port"
    log "redis: started on 127.0.0.1:$port"
  fi
  emit LOCKSTORE_TEST_REDIS_URL "redis://127.0.0.1:$port"
}

# A Redis Cluster of three primaries without replicas (backend-redis/tests/cluster.rs runs the
# lock and ledger suites on it): three `redis-server --cluster-enabled yes`, joined by
# `redis-cli --cluster create`.  The cluster bus gets a free port of its own (`cluster-port`,
# Redis 7) instead of the default port + 10000, which may be taken or beyond 65535.  No
# persistence, like the single Redis; each node's nodes.conf lives in $DIR.
cluster_ok() {
  [[ $(timeout 2 redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:') == cluster_state:ok ]]
}

start_redis_cluster() {
  [[ -z ${LOCKSTORE_TEST_REDIS_CLUSTER_URL:-} ]] || { log "redis cluster: using LOCKSTORE_TEST_REDIS_CLUSTER_URL from env"; return 0; }
  local ports=() i reuse=1
  if [[ -f $DIR/cluster.ports ]]; then
    read -ra ports <"$DIR/cluster.ports"
    for i in 0 1 2; do
      { alive "$DIR/cluster-$i.pid" && cluster_ok "${ports[$i]}"; } || reuse=
    done
  else
    reuse=
  fi
  if [[ -n $reuse ]]; then
    log "redis cluster: reusing 127.0.0.1:${ports[0]},${ports[1]},${ports[2]}"
  else
    rm -f "$DIR/cluster.ports"
    for i in 0 1 2; do
      if alive "$DIR/cluster-$i.pid"; then kill "$(<"$DIR/cluster-$i.pid")" 2>/dev/null || true; fi
    done
    read -ra ports <<<"$(free_ports 6)" # three client ports, then three bus ports
    for i in 0 1 2; do
      rm -rf "$DIR/cluster-$i" && mkdir -p "$DIR/cluster-$i"
      setsid redis-server --bind 127.0.0.1 --port "${ports[$i]}" --cluster-enabled yes \
        --cluster-port "${ports[$((i + 3))]}" --cluster-config-file "$DIR/cluster-$i/nodes.conf" \
        --cluster-node-timeout 5000 --save '' --appendonly no --dir "$DIR/cluster-$i" \
        </dev/null >"$DIR/cluster-$i.log" 2>&1 9>&- &
      echo $! >"$DIR/cluster-$i.pid"
    done
    for i in 0 1 2; do
      wait_ready "redis cluster node $i" "$DIR/cluster-$i.pid" "$DIR/cluster-$i.log" redis_ping "${ports[$i]}"
    done
    redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" "127.0.0.1:${ports[2]}" \
      --cluster-replicas 0 --cluster-yes >"$DIR/cluster-create.log" 2>&1 ||
      fail_with_log "redis-cli --cluster create failed" "$DIR/cluster-create.log"
    # Every node must know every slot's owner before clients use it (gossip takes a moment).
    for i in 0 1 2; do
      wait_ready "redis cluster node $i" "$DIR/cluster-$i.pid" "$DIR/cluster-$i.log" cluster_ok "${ports[$i]}"
    done
    echo "${ports[*]:0:3}" >"$DIR/cluster.ports"
    log "redis cluster: started on 127.0.0.1:${ports[0]},${ports[1]},${ports[2]} (three primaries)"
  fi
  emit LOCKSTORE_TEST_REDIS_CLUSTER_URL "redis+cluster://127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
}

start_postgres() {
  [[ -z ${LOCKSTORE_TEST_POSTGRES_URL:-} ]] || { log "postgres: using LOCKSTORE_TEST_POSTGRES_URL from env"; return 0; }
  local bin data=$DIR/pg port
  bin=$(pg_bin_dir)
  if [[ -f $DIR/pg.port ]] && "$bin/pg_isready" -q -U postgres -h 127.0.0.1 -p "$(<"$DIR/pg.port")"; then
    port=$(<"$DIR/pg.port")
    log "postgres: reusing 127.0.0.1:$port"
  else
    rm -f "$DIR/pg.port"
    if [[ ! -f $data/PG_VERSION ]]; then
      rm -rf "$data" && mkdir -p "$data" && touch "$DIR/pg.log"
      ((EUID != 0)) || chown postgres: "$data" "$DIR/pg.log"
      # trust auth + no locale: local throwaway cluster, and minimal images lack locales.
      as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale -N >>"$DIR/pg.log" 2>&1 ||
        fail_with_log "postgres initdb failed" "$DIR/pg.log"
      # Durability is pointless for tests; max_connections for parallel test binaries.
      cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
EOF
    fi
    port=$(free_port)
    # The port is not in postgresql.conf because each start picks a new one.
    as_pg "$bin/pg_ctl" -s -D "$data" -l "$DIR/pg.log" -o "-p $port" -w -t 30 start 9>&- >&2 ||
      fail_with_log "postgres failed to start" "$DIR/pg.log"
    wait_ready postgres /dev/null "$DIR/pg.log" "$bin/pg_isready" -q -U postgres -h 127.0.0.1 -p "$port"
    echo "$port" >"$DIR/pg.port"
    log "postgres: started on 127.0.0.1:$port"
  fi
  local psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
  if [[ -z $("${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = 'lockstore_test'") ]]; then
    "${psql[@]}" -c 'CREATE DATABASE lockstore_test' >&2
  fi
  emit LOCKSTORE_TEST_POSTGRES_URL "postgres://postgres@127.0.0.1:$port/lockstore_test"
}

# A real DynamoDB call (also warms moto's lazily loaded dynamodb backend).
moto_ready() {
  "$PY" - "$1" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/", data=b"{}", headers={
    "X-Amz-Target": "DynamoDB_20120810.ListTables",
    "Content-Type": "application/x-amz-json-1.0",
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
})
assert b"TableNames" in urllib.request.urlopen(req, timeout=5).read()
EOF
}

# Split in two because moto takes ~1s to import: spawn it first, let it load while redis and
# postgres start, and only then wait for it.
spawn_moto() {
  [[ -z ${LOCKSTORE_TEST_DYNAMODB_URL:-} ]] || return 0
  if alive "$DIR/moto.pid" && [[ -f $DIR/moto.port ]] && moto_ready "$(<"$DIR/moto.port")" 2>/dev/null; then
    return 0
  fi
  rm -f "$DIR/moto.port"
  # setsid as for redis.  The launcher binds port 0 and writes the real port to moto.port
  # once listening.
  setsid "$PY" "$HERE/moto_single_threaded.py" "$DIR/moto.port" </dev/null >"$DIR/moto.log" 2>&1 9>&- &
  echo $! >"$DIR/moto.pid"
  MOTO_SPAWNED=1
}

finish_moto() {
  [[ -z ${LOCKSTORE_TEST_DYNAMODB_URL:-} ]] || { log "moto: using LOCKSTORE_TEST_DYNAMODB_URL from env"; return 0; }
  local port
  if [[ -n ${MOTO_SPAWNED:-} ]]; then
    wait_ready moto "$DIR/moto.pid" "$DIR/moto.log" test -s "$DIR/moto.port"
    port=$(<"$DIR/moto.port")
    wait_ready moto "$DIR/moto.pid" "$DIR/moto.log" moto_ready "$port"
    log "moto: started on 127.0.0.1:$port (single-threaded)"
  else
    port=$(<"$DIR/moto.port")
    log "moto: reusing 127.0.0.1:$port"
  fi
  emit LOCKSTORE_TEST_DYNAMODB_URL "http://127.0.0.1:$port"
}

# The same ListTables call; dynalite also wants a date header beside the signature.
dynalite_ready() {
  "$PY" - "$1" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/", data=b"{}", headers={
    "X-Amz-Target": "DynamoDB_20120810.ListTables",
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Date": "20240101T000000Z",
    "Authorization": "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
})
assert b"TableNames" in urllib.request.urlopen(req, timeout=5).read()
EOF
}

# Spawned early like moto (node takes a moment to load), waited for at the end.
spawn_dynalite() {
  [[ -z ${LOCKSTORE_TEST_DYNALITE_URL:-} ]] || return 0
  if alive "$DIR/dynalite.pid" && [[ -f $DIR/dynalite.port ]] && dynalite_ready "$(<"$DIR/dynalite.port")" 2>/dev/null; then
    return 0
  fi
  rm -f "$DIR/dynalite.port"
  # Our launcher binds port 0 on 127.0.0.1 (dynalite's own CLI listens on every interface)
  # and writes the real port to dynalite.port once listening.
  setsid node "$HERE/dynalite_server.js" "$DYNALITE_HOME" "$DIR/dynalite.port" </dev/null \
    >"$DIR/dynalite.log" 2>&1 9>&- &
  echo $! >"$DIR/dynalite.pid"
  DYNALITE_SPAWNED=1
}

finish_dynalite() {
  [[ -z ${LOCKSTORE_TEST_DYNALITE_URL:-} ]] || { log "dynalite: using LOCKSTORE_TEST_DYNALITE_URL from env"; return 0; }
  local port
  if [[ -n ${DYNALITE_SPAWNED:-} ]]; then
    wait_ready dynalite "$DIR/dynalite.pid" "$DIR/dynalite.log" test -s "$DIR/dynalite.port"
    port=$(<"$DIR/dynalite.port")
    wait_ready dynalite "$DIR/dynalite.pid" "$DIR/dynalite.log" dynalite_ready "$port"
    log "dynalite: started on 127.0.0.1:$port"
  else
    port=$(<"$DIR/dynalite.port")
    log "dynalite: reusing 127.0.0.1:$port"
  fi
  emit LOCKSTORE_TEST_DYNALITE_URL "http://127.0.0.1:$port"
}

start_all() {
  mkdir -p "$DIR"
  chmod 755 "$DIR" # the postgres user must be able to reach $DIR/pg
  install_missing
  spawn_moto
  spawn_dynalite
  start_redis
  start_redis_cluster
  start_postgres
  finish_moto
  finish_dynalite
  # For the restart cases, which start dynalites of their own.
  if has_dynalite; then emit LOCKSTORE_DYNALITE_HOME "$(cd "$DYNALITE_HOME" && pwd)"; fi
}

stop_all() {
  [[ -d $DIR ]] || { log "nothing to stop ($DIR does not exist)"; return 0; }
  local f pid i
  for f in "$DIR/redis.pid" "$DIR"/cluster-[0-9].pid "$DIR/moto.pid" "$DIR/dynalite.pid"; do
    if alive "$f"; then
      pid=$(<"$f")
      kill "$pid"
      for ((i = 0; i < 50; i++)); do alive "$f" || break; sleep 0.1; done
      ! alive "$f" || kill -9 "$pid"
      log "stopped $(basename "$f" .pid) (pid $pid)"
    fi
  done
  # `status` first: after a crash postmaster.pid is stale and `stop` would fail.
  if [[ -f $DIR/pg/postmaster.pid ]] && as_pg "$(pg_bin_dir)/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    as_pg "$(pg_bin_dir)/pg_ctl" -s -D "$DIR/pg" -m fast -w stop >&2
    log "stopped postgres"
  fi
  rm -rf "$DIR"
}

# Serialise concurrent starts/stops (e.g. two test shells); the lock lives beside $DIR
# because stop deletes $DIR.
lock() { mkdir -p "$(dirname "$DIR")"; exec 9>"$DIR.lock"; flock 9; }

case ${1:-} in
  start | env)
    trap 's=$?; ((s == 0)) || echo "false  # servers.sh start failed, see stderr"' EXIT
    lock
    start_all
    ;;
  run)
    shift
    (($#)) || die "usage: $0 run COMMAND [ARGS...]"
    lock
    start_all >/dev/null
    exec 9>&-
    exec "$@"
    ;;
  stop)
    lock
    stop_all
    ;;
  *) die "usage: eval \"\$($0 start)\" | $0 run COMMAND... | $0 stop" ;;
esac
