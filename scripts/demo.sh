#!/usr/bin/env bash
# The main job: builds podwire and runs the article's vpc-mode experiment in
# a local emulated VPC (`podwirectl lab demo`). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the lab creates network namespaces)" >&2; exit 1; }
scripts/deps.sh
cargo build --release --workspace
exec target/release/podwirectl lab demo "$@"
