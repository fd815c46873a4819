#!/usr/bin/env bash
# A/B: plugin ADD/DEL latency with the agent's metrics endpoint on and off,
# alternating RUNS times each (single runs vary by ±10 % here), with
# ../shared/bench/cni-latency.sh in direct spawn mode. Run as root.
#
#   bench/metrics-ab.sh [N=100] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
RUNS=${2:-3}
HARNESS=${PODWIRE_BENCH_HARNESS:-../shared/bench}
LAB=pwmab
OUT=target/bench-metrics-ab
PODWIRE_BENCH_DEPS=1 scripts/deps.sh
cargo build --release --workspace -q
mkdir -p "$OUT"
CTL=target/release/podwirectl
BIN=$(realpath target/release)
cleanup() { "$CTL" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT
for run in $(seq 1 "$RUNS"); do
  for metrics in on off; do
    cleanup
    PODWIRE_LAB_AGENT_METRICS=$metrics "$CTL" lab up --name "$LAB" --mode vpc --nodes 1 \
      --instance-type c5.18xlarge --warm-ip-target 0 --minimum-ip-target $((N + 10)) >/dev/null
    for _ in $(seq 1 100); do
      free=$("$CTL" lab status --name "$LAB" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["agent"]["free_ips"])')
      [ "$free" -ge "$N" ] && break
      sleep 0.2
    done
    cat > "$OUT/conf.json" <<JSON
{"cniVersion": "1.0.0", "name": "bench-podwire", "type": "podwire", "mode": "vpc", "agentSocket": "/run/podwire/lab/$LAB/node-1/agent.sock"}
JSON
    "$HARNESS/cni-latency.sh" "$OUT/conf.json" "$N" --mode direct --node "pw-$LAB-node" \
      --cni-path "$BIN:/usr/lib/cni" --json "$OUT/$metrics-$run.json" >/dev/null
  done
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
for op in ("add", "del"):
    med = {}
    for m in ("on", "off"):
        vals = [json.load(open(f"{out}/{m}-{r}.json"))["summary"][op]["wall_ns"]["p50"] / 1e6 for r in range(1, runs + 1)]
        med[m] = statistics.median(vals)
        print(f"{op} p50 with metrics {m}: runs {', '.join(f'{v:.2f}' for v in vals)} ms; median {med[m]:.2f} ms")
    print(f"{op} ratio on/off: {med['on'] / med['off']:.3f}")
PY
