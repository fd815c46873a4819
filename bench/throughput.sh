#!/usr/bin/env bash
# iperf3 pod→pod across nodes, in one run: vpc mode, overlay mode, overlay
# with a wrong pod MTU (9001 inside a 9001 underlay: no room for VXLAN's 50
# bytes), and a plain veth pair as the baseline. Run as root.
#
#   bench/throughput.sh [SECONDS=5] [REPS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-5}
REPS=${2:-3}
PODWIRE_BENCH_DEPS=1 scripts/deps.sh
cargo build --release --workspace -q
CTL=target/release/podwirectl
PIDFILE=$(mktemp -u /tmp/pw-tp-iperf.XXXXXX)
cleanup() {
  if [ -s "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
  "$CTL" lab down --name pwtpv >/dev/null 2>&1 || true
  "$CTL" lab down --name pwtpo >/dev/null 2>&1 || true
  ip netns del pw-tp-a 2>/dev/null || true
  ip netns del pw-tp-b 2>/dev/null || true
}
trap cleanup EXIT
cleanup

# gbps SERVER_NS CLIENT_NS SERVER_IP: median of REPS runs, Gbit/s.
gbps() {
  local runs=()
  for _ in $(seq 1 "$REPS"); do
    ip netns exec "$1" iperf3 -s -1 -D -p 5201 -I "$PIDFILE" >/dev/null
    sleep 0.3
    local bps
    # A path that black-holes large packets stalls: bound it, count it as 0.
    bps=$(timeout $((T + 10)) ip netns exec "$2" iperf3 -c "$3" -p 5201 -t "$T" -J 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' 2>/dev/null || echo 0)
    # The server of a failed run is still waiting: stop it by its PID.
    if [ -s "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; rm -f "$PIDFILE"; fi
    runs+=("$bps")
  done
  printf '%s\n' "${runs[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.2f", a[int((NR+1)/2)]/1e9}'
}

# Baseline: one veth pair between two namespaces, MTU 9001.
ip netns add pw-tp-a; ip netns add pw-tp-b
ip -n pw-tp-a link add eth0 mtu 9001 type veth peer name eth0 netns pw-tp-b
ip -n pw-tp-a addr add 192.168.250.1/30 dev eth0; ip -n pw-tp-a link set eth0 up
ip -n pw-tp-b addr add 192.168.250.2/30 dev eth0; ip -n pw-tp-b link set eth0 up
VETH=$(gbps pw-tp-b pw-tp-a 192.168.250.2)

"$CTL" lab up --name pwtpv --mode vpc >/dev/null
"$CTL" lab pod add --name pwtpv c --node node-1 >/dev/null
S=$("$CTL" lab pod add --name pwtpv s --node node-2)
VPC=$(gbps pw-pwtpv-pod-s pw-pwtpv-pod-c "$S")

"$CTL" lab up --name pwtpo --mode overlay >/dev/null
"$CTL" lab pod add --name pwtpo c --node node-1 >/dev/null
S=$("$CTL" lab pod add --name pwtpo s --node node-2)
OVL=$(gbps pw-pwtpo-pod-s pw-pwtpo-pod-c "$S")

# The same pods with the MTU an overlay-unaware config would give them.
for p in c s; do ip -n "pw-pwtpo-pod-$p" link set eth0 mtu 9001; done
for n in 1 2; do
  for v in $(ip -n "pw-pwtpo-node-$n" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^pw'); do
    ip -n "pw-pwtpo-node-$n" link set "$v" mtu 9001
  done
done
WRONG=$(gbps pw-pwtpo-pod-s pw-pwtpo-pod-c "$S")
# ...and where ICMP "fragmentation needed" does not get back to the pod (a
# security group or firewall that drops ICMP): path MTU discovery fails.
ip netns exec pw-pwtpo-node-1 nft -f - <<'NFT'
table inet pwbench {
  chain out { type filter hook output priority 0; icmp type destination-unreachable drop; }
}
NFT
# Forget the path MTU the previous case learned.
for p in c s; do ip -n "pw-pwtpo-pod-$p" route flush cache; done
BLACKHOLE=$(gbps pw-pwtpo-pod-s pw-pwtpo-pod-c "$S")

echo
echo "iperf3 TCP, 1 stream, ${T}s, median of $REPS runs"
echo
echo "| path | Gbit/s | vs vpc mode |"
echo "|---|---:|---:|"
awk -v veth="$VETH" -v vpc="$VPC" -v ovl="$OVL" -v wrong="$WRONG" -v bh="$BLACKHOLE" 'BEGIN {
  printf "| plain veth pair (baseline) | %.2f | %.2f |\n", veth, veth / vpc
  printf "| vpc mode, pod→pod across nodes | %.2f | 1.00 |\n", vpc
  printf "| overlay mode (VXLAN, pod MTU 8951) | %.2f | %.2f |\n", ovl, ovl / vpc
  printf "| overlay, wrong pod MTU 9001 (PMTU discovery repairs it) | %.2f | %.2f |\n", wrong, wrong / vpc
  printf "| overlay, wrong pod MTU 9001 and ICMP dropped | %.2f | %.2f |\n", bh, bh / vpc
}'
