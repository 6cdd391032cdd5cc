#!/usr/bin/env bash
# The whole test suite, against real servers: starts (or reuses) Redis,
# PostgreSQL and two DynamoDB-compatible servers (moto, dynalite) on 127.0.0.1 — installing
# them first on a fresh machine — then runs every test of the workspace.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p lockstore-redis`).
# The servers keep running for the next run; `scripts/servers.sh stop` ends them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

servers=$(scripts/servers.sh start)
eval "$servers"

cargo test --workspace --all-features --no-fail-fast "$@"
