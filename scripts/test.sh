#!/usr/bin/env bash
# Runs every dfgraph test. Tests that need Redis start their own
# redis-server on a free port, and tests/browser.rs its own chromedriver
# and headless Chromium, so this only makes sure they are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (Debian/Ubuntu)" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
