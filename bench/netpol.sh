#!/usr/bin/env bash
# NetworkPolicy at scale on ONE node (issue 10 §5): 250 pods, 200 policies.
# Run as root. Overlay mode, one node, the lab's SQLite datastore.
#
#   bench/netpol.sh [CHANGES=100] [ADDS=50] [ROUNDS=3] [TP_SECONDS=5] [OUT=target/bench-netpol]
#
# 1a. policy change, datastore write -> rule in the kernel: bench/src/bin/policy-flip.rs
#     (run in a pod; flips which of two ports a policy opens, times until the
#     newly opened port connects), CHANGES changes with the 200 policies.
# 1b. CNI ADD p50 with and without the 200 policies, ROUNDS alternating runs of
#     ADDS ADDs each (../shared/bench/cni-latency.sh, direct spawn).
# 2.  iperf3 pod -> pod on the node, 5 alternating runs without / with the
#     200 policies (both pods selected by them; the traffic allowed).
# Env: STEPS="add tp flip" (default all), REUSE=1 (the lab from a KEEP=1 run),
# KEEP=1 (leave the lab up), PODWIRE_BENCH_NOBUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
CHANGES=${1:-100}
ADDS=${2:-50}
ROUNDS=${3:-3}
T=${4:-5}
OUT=${5:-target/bench-netpol}
HARNESS=${PODWIRE_BENCH_HARNESS:-../shared/bench}
LAB=pwnp
NODE=pw-$LAB-node-1
mkdir -p "$OUT"
if [ -z "${PODWIRE_BENCH_NOBUILD:-}" ]; then
  PODWIRE_BENCH_DEPS=1 scripts/deps.sh
  cargo build --release --workspace --bins -q
fi
CTL=target/release/podwirectl
PIDFILE=$(mktemp -u /tmp/pw-np-iperf.XXXXXX)
cleanup() {
  if [ -s "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
  [ -n "${KEEP:-}" ] || "$CTL" lab down --name "$LAB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
STEPS=${STEPS:-add tp flip}
step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
DB=/run/podwire/lab/$LAB/datastore.db
if [ -z "${REUSE:-}" ]; then
"$CTL" lab down --name "$LAB" >/dev/null 2>&1 || true

echo "== lab: 1 overlay node, 250 pods"
"$CTL" lab up --name "$LAB" --mode overlay --nodes 1 >/dev/null
for n in $(seq 0 9); do
  env=dev; [ $((n % 2)) = 0 ] && env=prod
  "$CTL" lab namespace add --name "$LAB" "ns-$n" --labels "team=t$((n % 3)),env=$env" >/dev/null
done
"$CTL" lab namespace add --name "$LAB" bench >/dev/null
roles=(server client); tiers=(web db)
for i in $(seq 0 245); do
  n=$((i % 10)); m=$((i / 10))
  "$CTL" lab pod add --name "$LAB" "ns-$n/p$i" --node node-1 \
    --labels "app=app-$((m % 6)),role=${roles[$((m % 2))]},tier=${tiers[$(((m / 2) % 2))]}" \
    --port http=80/tcp >/dev/null
done
"$CTL" lab pod add --name "$LAB" bench/flip-target --node node-1 --labels role=flip-target --port a=80/tcp --port b=81/tcp >/dev/null
"$CTL" lab pod add --name "$LAB" bench/flip-client --node node-1 >/dev/null
"$CTL" lab pod add --name "$LAB" ns-0/iperf-s --node node-1 --labels app=app-0,role=server,tier=web >/dev/null
"$CTL" lab pod add --name "$LAB" ns-0/iperf-c --node node-1 --labels app=app-0,role=client,tier=web >/dev/null
fi
ip_of() {
  "$CTL" lab status --name "$LAB" --json | python3 -c 'import json,sys; print([p["ip"] for n in json.load(sys.stdin)["nodes"] for p in n["pods"] if p["namespace"] + "/" + p["name"] == sys.argv[1]][0])' "$1"
}
TIP=$(ip_of bench/flip-target)
SIP=$(ip_of ns-0/iperf-s)
PODS=$("$CTL" lab status --name "$LAB" --json | python3 -c 'import json,sys; print(sum(len(n["pods"]) for n in json.load(sys.stdin)["nodes"]))')
echo "pods on node-1: $PODS"

python3 bench/netpol-gen.py "$OUT" >/dev/null
# How many policy helper chains the node's kernel holds.
np_chains() { ip netns exec "$NODE" nft -t list table ip podwire | grep -c '^\s*chain np-c' || true; }
wait_chains() { # wait_chains zero|some
  for _ in $(seq 1 200); do
    c=$(np_chains)
    if { [ "$1" = zero ] && [ "$c" = 0 ]; } || { [ "$1" = some ] && [ "$c" != 0 ]; }; then return 0; fi
    sleep 0.05
  done
  echo "the agent did not apply the policies ($1)" >&2; return 1
}
policies_on() {
  for f in "$OUT"/pol-*.json; do "$CTL" policy apply --lab "$LAB" -f "$f" >/dev/null; done
  wait_chains some; sleep 0.5
}
policies_off() {
  # Deleting what is not there is refused as a whole: delete what is.
  "$CTL" policy list --lab "$LAB" | awk 'NR > 1 && $1 ~ /^ns-[0-9]$/ {print $1 "/" $2}' >"$OUT/present.txt" || true
  [ -s "$OUT/present.txt" ] && xargs -n 50 "$CTL" policy delete --lab "$LAB" <"$OUT/present.txt" >/dev/null
  wait_chains zero; sleep 0.5
}

if step add; then
echo "== 1b. CNI ADD p50, $ROUNDS alternating rounds of $ADDS ADDs"
SOCK=/run/podwire/lab/$LAB/node-1/agent.sock
cat >"$OUT/podwire-overlay.json" <<JSON
{"cniVersion": "1.0.0", "name": "bench-podwire", "type": "podwire", "mode": "overlay", "agentSocket": "$SOCK"}
JSON
BIN=$(realpath target/release)
# The new pods claim to be ns-0/p0 (app-0, server, web): the policies select them.
export CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=ns-0;K8S_POD_NAME=p0"
for r in $(seq 1 "$ROUNDS"); do
  for state in off on; do
    if [ "$state" = on ]; then policies_on; else policies_off; fi
    "$HARNESS/cni-latency.sh" "$OUT/podwire-overlay.json" "$ADDS" --mode direct --node pw-npadd-node \
      --cni-path "$BIN:/usr/lib/cni" --quiet-wait 20 --quiet-busy 0.5 --json "$OUT/add-$state-$r.json" >"$OUT/add-$state-$r.md"
    echo "round $r policies $state: $(grep -m1 'box load' "$OUT/add-$state-$r.md" || true)"
  done
done
unset CNI_ARGS
fi

gbps() {
  ip netns exec "pw-$LAB-pod-ns-0-iperf-s" iperf3 -s -1 -D -p 5201 -I "$PIDFILE" >/dev/null
  sleep 0.3
  local bps
  bps=$(timeout $((T + 10)) ip netns exec "pw-$LAB-pod-ns-0-iperf-c" iperf3 -c "$SIP" -p 5201 -t "$T" -J 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' 2>/dev/null || echo 0)
  if [ -s "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
  echo "$bps"
}
if step tp; then
echo "== 2. iperf3 ns-0/iperf-c -> ns-0/iperf-s, 5 alternating runs of ${T}s"
: >"$OUT/tp.txt"
for r in 1 2 3 4 5; do
  for state in off on; do
    if [ "$state" = on ]; then policies_on; else policies_off; fi
    b=$(gbps)
    echo "$state $b" | tee -a "$OUT/tp.txt"
  done
done
fi

if step flip; then
echo "== 1a. policy change -> kernel, $CHANGES changes with the 200 policies"
policies_on
ip netns exec "pw-$LAB-pod-bench-flip-client" target/release/policy-flip --datastore "sqlite:$DB" \
  --namespace bench --target-label role=flip-target --target "$TIP" --changes "$CHANGES" --cleanup | tee "$OUT/flip.txt" | tail -1
NFT_LINES=$(ip netns exec "$NODE" nft list table ip podwire | wc -l)
echo "node ruleset with the 200 policies: $NFT_LINES lines, $(np_chains) helper chains" | tee "$OUT/ruleset.txt"
ip netns exec "$NODE" nft list table ip podwire >"$OUT/ruleset.nft"
fi

python3 - "$OUT" "$ROUNDS" "$STEPS" <<'PY'
import json, os, statistics, sys
out, rounds, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def p50(s, r): return json.load(open(f"{out}/add-{s}-{r}.json"))["summary"]["add"]["wall_ns"]["p50"] / 1e6
def adds():
    print("\n| round | ADD p50 ms, no policy | ADD p50 ms, 200 policies | ratio |")
    print("|---|---:|---:|---:|")
    offs, ons = [], []
    for r in range(1, rounds + 1):
        a, b = p50("off", r), p50("on", r); offs.append(a); ons.append(b)
        print(f"| {r} | {a:.2f} | {b:.2f} | {b/a:.2f} |")
    a, b = statistics.median(offs), statistics.median(ons)
    print(f"| median | {a:.2f} | {b:.2f} | **{b/a:.2f}** |")
if "add" in steps:
    adds()
if "tp" not in steps:
    sys.exit(0)
tp = {"off": [], "on": []}
for line in open(f"{out}/tp.txt"):
    s, v = line.split(); tp[s].append(float(v) / 1e9)
print("\n| iperf3 run | no policy Gbit/s | 200 policies Gbit/s |")
print("|---|---:|---:|")
for i, (a, b) in enumerate(zip(tp["off"], tp["on"]), 1):
    print(f"| {i} | {a:.2f} | {b:.2f} |")
a, b = statistics.median(tp["off"]), statistics.median(tp["on"])
print(f"| median | {a:.2f} | {b:.2f} (**{b/a:.3f}**) |")
PY
