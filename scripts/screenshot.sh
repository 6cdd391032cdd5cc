#!/usr/bin/env bash
# A screenshot of `lockctl serve`'s runs page, for a developer to look at: runs the ignored
# `screenshot` test of lockctl/tests/serve_browser.rs (records of every status, one with a
# key holding markup, in headless chromium) and prints where the PNG is:
# target/lockctl-serve.png.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/browser.sh)"
# The workspace's feature set, as scripts/test.sh builds it: nothing is compiled again.
cargo test --workspace --all-features --test serve_browser -- --ignored --exact screenshot
echo "screenshot: $PWD/target/lockctl-serve.png"
