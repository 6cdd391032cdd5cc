#!/usr/bin/env bash
# The headless browser of lockctl's page tests (lockctl/tests/serve_browser.rs): Debian's
# chromium and chromium-driver, installed with apt when missing (root or sudo), then their
# paths printed as `export` lines for `eval "$(scripts/browser.sh)"`. Idempotent and quiet
# when both are there. CI calls it in its background preparation (.ci/run), and
# scripts/test.sh before the tests, so a fresh machine gets them.
set -euo pipefail

chromium=${LOCKSTORE_TEST_CHROMIUM:-/usr/bin/chromium}
driver=${LOCKSTORE_TEST_CHROMEDRIVER:-/usr/bin/chromedriver}

if [[ ! -x $chromium || ! -x $driver ]]; then
  sudo=
  ((EUID == 0)) || sudo=sudo
  log=$(mktemp)
  echo "browser.sh: installing chromium and chromium-driver via apt (log: $log)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt (scripts/servers.sh, scripts/docker.sh) rather than fail on its lock;
  # refresh the package lists only when the install fails (empty on a fresh image, or stale).
  apt=($sudo apt-get -o DPkg::Lock::Timeout=600 -y --no-install-recommends)
  if ! { "${apt[@]}" install chromium chromium-driver ||
    { $sudo apt-get -o DPkg::Lock::Timeout=600 update && "${apt[@]}" install chromium chromium-driver; }; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "browser.sh: apt-get install chromium chromium-driver failed (log: $log)" >&2
    exit 1
  fi
fi
echo "export LOCKSTORE_TEST_CHROMIUM=$chromium"
echo "export LOCKSTORE_TEST_CHROMEDRIVER=$driver"
