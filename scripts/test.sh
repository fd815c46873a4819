#!/usr/bin/env bash
# Runs every podwire test: formatting, lints, unit tests, and the root
# end-to-end tests that build labs in network namespaces. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the tests create network namespaces)" >&2; exit 1; }
scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
# Two labs at a time: each lab is a handful of namespaces and processes.
# (No doc tests: the crates document with prose, not examples.)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests -- --test-threads 2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
