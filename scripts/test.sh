#!/usr/bin/env bash
# The whole test suite, against real servers, installing and starting everything it needs on a
# fresh machine (CI runs exactly this). What it does depends on LOCKSTORE_TEST_DOCKER:
#
#   local (the default; needs root or sudo for the engine)
#       0. the build of every test target (first: it needs no server, and CI prepares the
#          servers and images beside it, see .ci/run).
#       1. scripts/servers.sh start: local servers on 127.0.0.1 — Redis, a three-primary Redis
#          Cluster, PostgreSQL, moto, dynalite — installed first if missing. Their installs are
#          also what tests use to spawn private servers they kill and restart
#          (LOCKSTORE_TEST_REDIS_SERVER, the PostgreSQL binaries, moto, dynalite).
#       1b. scripts/browser.sh: Debian's chromium and chromium-driver, for lockctl's page
#          tests in a real headless browser (lockctl/tests/serve_browser.rs).
#       2. scripts/docker.sh images: a Docker engine and the local stand-in images
#          (local/redis:7, local/postgres:15, local/moto:5), for machines without Docker Hub.
#       3. the whole workspace's tests with
#          LOCKSTORE_TEST_{REDIS,POSTGRES,DYNAMODB}_URL unset: every conformance suite (and the
#          lockctl end-to-end tests) of Redis, PostgreSQL and DynamoDB-on-moto gets its server
#          through testcontainers. dynalite and the Redis Cluster stay local servers (no
#          container fallback: dynalite has no official image, and a cluster's nodes must
#          announce addresses clients can reach).
#       4. the local-server path once more: the Redis lock and ledger suites with the URLs of
#          step 1, as a user without Docker runs them.
#   hub     as local, but testcontainers pulls the official images (redis:7, postgres:16,
#           amazon/dynamodb-local) from Docker Hub instead of building stand-ins.
#   off     no Docker at all: steps 0, 1, 1b and 3, with every URL set (everything on local servers).
#
# Extra arguments go to the `cargo test` of steps 0 and 3 and replace step 4, e.g.
# `scripts/test.sh -p lockstore-redis`. The servers and the engine keep running for the next
# run; `scripts/servers.sh stop` and `scripts/docker.sh stop` end them.
# Each step prints how long it took.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=${LOCKSTORE_TEST_DOCKER:-local}
case $mode in
  local | hub | off) ;;
  *) echo "test.sh: LOCKSTORE_TEST_DOCKER must be local, hub or off (not $mode)" >&2; exit 2 ;;
esac

timings=()
step() { # step NAME COMMAND...: run and time it
  local name=$1 started=$SECONDS status=0
  shift
  echo "== test.sh: $name" >&2
  "$@" || status=$?
  timings+=("$(printf '%-46s %4d s%s' "$name" $((SECONDS - started)) "$( ((status == 0)) || echo "  (failed: $status)")")")
  return "$status"
}
report() {
  echo "== test.sh timings" >&2
  printf '  %s\n' "${timings[@]}" >&2
}
trap report EXIT

servers() { eval "$(scripts/servers.sh start)"; }
browser() { eval "$(scripts/browser.sh)"; }
engine() {
  case $mode in
    local) eval "$(scripts/docker.sh images)" ;;
    hub) eval "$(scripts/docker.sh start)" ;;
  esac
}

cargo_test=(cargo test --workspace --all-features --no-fail-fast)
step "build the tests" "${cargo_test[@]}" --no-run "$@"
step "servers (scripts/servers.sh start)" servers
step "headless browser (scripts/browser.sh)" browser
[[ $mode == off ]] || step "docker engine and images (scripts/docker.sh)" engine

if [[ $mode == off ]]; then
  step "tests, on local servers" "${cargo_test[@]}" "$@"
  exit 0
fi

in_containers=(env -u LOCKSTORE_TEST_REDIS_URL -u LOCKSTORE_TEST_POSTGRES_URL -u LOCKSTORE_TEST_DYNAMODB_URL)
status=0
step "tests, servers through testcontainers" "${in_containers[@]}" "${cargo_test[@]}" "$@" || status=$?
if (($# == 0)); then
  # --workspace with a test-name filter, not -p lockstore-redis: the same feature set as the
  # build above, so nothing is compiled again; the other backends' suites match no name.
  step "Redis suites again, on the local server" \
    "${cargo_test[@]}" --test conformance --test ledger_conformance -- redis ||
    status=$?
fi
exit "$status"
