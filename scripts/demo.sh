#!/usr/bin/env bash
# The main job: builds podwire and runs the article's two experiments (vpc
# mode, then overlay mode) in local emulated VPCs, then compares them
# (`podwirectl lab demo`, labs `demo-vpc` and `demo-ovl`). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (the lab creates network namespaces)" >&2; exit 1; }
scripts/deps.sh
cargo build --release --workspace
exec target/release/podwirectl lab demo "$@"
