#!/usr/bin/env bash
# The scale-up benchmark of issue 9 §4: a fresh m5.xlarge vpc node (room for
# 56 pods) receives 30 pods at once; per pod the time until it has its
# address and until it answers a TCP connect from the other node; then the
# pods go and the run checks that the lab cloud and the agent's pool agree
# and no ENI is left unattached. Three configurations, RUNS runs each, each
# on a fresh lab. Run as root.
#
#   bench/scaleup.sh [RUNS=3] [OUTDIR=target/bench-scaleup]
#
# EC2 timing (say which, the brief asks): every EC2 call 150 ms (EC2 API
# calls take ~100-200 ms), and an attached ENI's link appears 5 s after
# AttachNetworkInterface answers (AWS documents create+attach "up to 10
# seconds"; 5 s is the middle of that). PODWIRE_SCALEUP_LATENCY_MS and
# PODWIRE_SCALEUP_ATTACH_MS change them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=${2:-target/bench-scaleup}
LAT=${PODWIRE_SCALEUP_LATENCY_MS:-150}
ATTACH=${PODWIRE_SCALEUP_ATTACH_MS:-5000}
LAB=pwscale
PODWIRE_BENCH_DEPS=1 scripts/deps.sh
# PODWIRE_BENCH_NO_BUILD=1: the release binaries are built already.
[ -n "${PODWIRE_BENCH_NO_BUILD:-}" ] || cargo build --release --workspace --bins -q
mkdir -p "$OUT"
CTL=target/release/podwirectl
cleanup() { "$CTL" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT

declare -A EXTRA=(
  [default]=""
  [prefix]="--prefix-delegation"
  [throttle20]="--throttle-rate 0.2"
)
for run in $(seq 1 "$RUNS"); do
  for cfg in default prefix throttle20; do
    cleanup
    # shellcheck disable=SC2086 # EXTRA holds flags
    "$CTL" lab up --name "$LAB" --mode vpc --nodes 2 --instance-type m5.xlarge \
      --ec2-latency "$LAT" --attach-delay "$ATTACH" ${EXTRA[$cfg]} >/dev/null
    # node-1 is fresh: its agent just became ready; nothing ran on it.
    if target/release/vpc-scaleup --lab "$LAB" --node node-1 --from node-2 --pods 30 \
        >"$OUT/$cfg-$run.json" 2>"$OUT/$cfg-$run.err"; then
      echo "$cfg run $run: ok"
    else
      echo "$cfg run $run: FAILED (see $OUT/$cfg-$run.err)"
    fi
    cleanup
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, sys, statistics
out, runs = sys.argv[1], int(sys.argv[2])
print("\n| configuration | runs | failed pods | address p50 / p99 / max ms | answers p50 / p99 / max ms | cloud = pool after DEL |")
print("|---|---|---|---|---|---|")
for cfg in ["default", "prefix", "throttle20"]:
    rs = []
    for r in range(1, runs + 1):
        try:
            with open(f"{out}/{cfg}-{r}.json") as f:
                rs.append(json.loads(f.read()))
        except (OSError, ValueError):
            pass
    if not rs:
        continue
    def fmt(k):
        return " / ".join("{:.0f}".format(statistics.median(x[k][q] for x in rs)) for q in ("p50", "p99", "max"))
    failed = sum(x["failed"] for x in rs)
    clean = sum(1 for x in rs if x["agree_after_del_ms"] is not None and x["after_del"].get("unattached_enis") == 0)
    print(f"| {cfg} | {len(rs)} | {failed} | {fmt('addr_ms')} | {fmt('answer_ms')} | {clean}/{len(rs)} |")
    for x in rs:
        print(f"|   run | | {x['failed']} | " + " / ".join(f"{x['addr_ms'][q]:.0f}" for q in ("p50","p99","max"))
              + " | " + " / ".join(f"{x['answer_ms'][q]:.0f}" for q in ("p50","p99","max"))
              + f" | load1 {x['load1_before']:.2f} |")
PY
