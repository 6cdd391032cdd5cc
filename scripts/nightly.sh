#!/usr/bin/env bash
# The main job through lockctl on the embedded default (a SQLite file in
# the user's data directory, no set-up): two schedulers fire tonight's
# nightly job at once — one runs it, the other is told it is running
# elsewhere (exit 200) — then a rerun is skipped because the job already
# succeeded (exit 202). Run the script again today and every call is
# skipped: the ledger remembers the date.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build -q -p lockctl || exit 1
lockctl=target/debug/lockctl
[[ -n ${CARGO_TARGET_DIR:-} ]] && lockctl=$CARGO_TARGET_DIR/debug/lockctl
job="nightly-$(date +%F)"
work='echo "loading $LOCKSTORE_KEY with fence $LOCKSTORE_FENCE"; sleep 2; echo loaded'

"$lockctl" run --once "$job" -- sh -c "$work" &
first=$!
# Let the first scheduler record its run before the second fires, however busy the
# machine (at most 10 s; a record from an earlier run today ends the wait at once).
for _ in $(seq 100); do
  "$lockctl" status --json "$job" 2>/dev/null | grep -q '"run":{' && break
  sleep 0.1
done
"$lockctl" run --once "$job" -- sh -c "$work"
echo "second scheduler: exit $? (200 = running elsewhere)"
wait "$first"
echo "first scheduler: exit $?"
"$lockctl" run --once "$job" -- sh -c "$work"
echo "rerun: exit $? (202 = already succeeded)"
"$lockctl" status "$job"
