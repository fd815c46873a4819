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
cargo test --workspace -- --test-threads 2
