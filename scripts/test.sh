#!/usr/bin/env bash
# Runs every podwire test: formatting, lints, unused dependencies, unit
# tests, and the root end-to-end tests that build labs in network
# namespaces. Run as root. Prints each suite's time and ends with one
# "tests: N passed, N failed" line.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the tests create network namespaces)" >&2; exit 1; }
scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Unused dependencies stay out (cargo-machete: stable toolchain, no build).
if ! command -v cargo-machete >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-machete
fi
cargo machete
# The plugin binary stays small: no async runtime, datastore or HTTP server.
if cargo tree -p podwire -e normal --prefix none | grep -E '^(tokio|rusqlite|etcd-client|tiny_http|ureq|hyper) '; then
  echo "the podwire plugin binary must not depend on the crates above" >&2
  exit 1
fi
# The end-to-end tests drive every binary of the workspace.
cargo build --workspace --bins
# Two labs at a time: each lab is a handful of namespaces and processes.
# (No doc tests: the crates document with prose, not examples.)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --lib --bins --tests -- --test-threads 2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# Each suite's time, slowest first, then one closing line for the whole run.
echo "suite times:"
awk '/Running / { d = $NF; gsub(/[()]/, "", d); sub(/.*\//, "", d); sub(/-[0-9a-f]+$/, "", d); suite = $2 " (" d ")" }
     /^test result:/ { sub(/s$/, "", $NF); printf "  %8.1fs  %s\n", $NF, suite }' "$log" | sort -rn
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
