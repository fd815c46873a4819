#!/usr/bin/env bash
# podwire ADD/DEL latency side by side with Debian's ptp + host-local, in
# one run, with ../shared/bench/cni-latency.sh; then the agent's resident
# memory with N pods. Run as root.
#
#   bench/latency.sh vpc|overlay [N=100] [OUTDIR=target/bench-MODE]
#
# vpc: the warm pool is ready (no ADD waits for the cloud);
# overlay: the node's agent on the lab's SQLite datastore.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: bench/latency.sh vpc|overlay [N] [OUTDIR]}
N=${2:-100}
OUT=${3:-target/bench-$MODE}
HARNESS=${PODWIRE_BENCH_HARNESS:-../shared/bench}
LAB=pwbench
PODWIRE_BENCH_DEPS=1 scripts/deps.sh
cargo build --release --workspace -q
mkdir -p "$OUT"
CTL=target/release/podwirectl
cleanup() { "$CTL" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
# A node with room for N pods and a warm pool that holds them all, so no ADD
# waits for the (emulated) cloud.
if [ "$MODE" = vpc ]; then
  "$CTL" lab up --name "$LAB" --mode vpc --nodes 1 --instance-type c5.18xlarge --warm-ip-target 0 --minimum-ip-target $((N + 10)) >/dev/null
else
  "$CTL" lab up --name "$LAB" --mode overlay --nodes 1 >/dev/null
fi
for _ in $(seq 1 100); do
  [ "$MODE" = vpc ] || break
  free=$("$CTL" lab status --name "$LAB" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["agent"]["free_ips"])')
  [ "$free" -ge "$N" ] && break
  sleep 0.2
done
SOCK=/run/podwire/lab/$LAB/node-1/agent.sock
cat > "$OUT/podwire-$MODE.json" <<JSON
{"cniVersion": "1.0.0", "name": "bench-podwire", "type": "podwire", "mode": "$MODE", "agentSocket": "$SOCK"}
JSON
BIN=$(realpath target/release)
# ipexec: the plugin started through `ip netns exec` (the harness default);
# direct: spawned from inside the node namespace, as kubelet/containerd do.
for SPAWN in ipexec direct; do
  "$HARNESS/cni-latency.sh" "$OUT/podwire-$MODE.json" "$N" --mode $SPAWN --node pw-bench-node --cni-path "$BIN:/usr/lib/cni" --json "$OUT/podwire-$SPAWN.json" | tee "$OUT/podwire-$SPAWN.md"
  "$HARNESS/cni-latency.sh" "$HARNESS/conf/ptp-host-local.json" "$N" --mode $SPAWN --node pw-bench-node --json "$OUT/ptp-$SPAWN.json" | tee "$OUT/ptp-$SPAWN.md"
done

# Agent memory with N pods attached.
for i in $(seq 1 "$N"); do "$CTL" lab pod add --name "$LAB" "m$i" --node node-1 >/dev/null; done
PID=$("$CTL" lab status --name "$LAB" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["agent_pid"])')
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
echo "agent VmRSS with $N pods: $RSS KiB" | tee "$OUT/agent-rss.txt"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def p50(d, k): return d["summary"][k]["wall_ns"]["p50"] / 1e6
def cpu(d, k): return d["summary"][k]["cpu_ns"]["p50"] / 1e6
print("\n| spawn | op | podwire p50 ms | ptp+host-local p50 ms | ratio | CPU p50 podwire / ptp ms |")
print("|---|---|---|---|---|---|")
for mode in ("ipexec", "direct"):
    pw, ptp = (json.load(open(f"{out}/{n}-{mode}.json")) for n in ("podwire", "ptp"))
    for k in ("add", "del"):
        a, b = p50(pw, k), p50(ptp, k)
        print(f"| {mode} | {k.upper()} | {a:.2f} | {b:.2f} | {a/b:.2f} | {cpu(pw,k):.2f} / {cpu(ptp,k):.2f} |")
    print(f"| {mode} | floor (spawn /bin/true) | {p50(pw,'floor'):.2f} | {p50(ptp,'floor'):.2f} | | |")
PY
