#!/usr/bin/env bash
# Installs what podwire's lab, tests and benchmarks need on Debian/Ubuntu,
# only when missing. Runs as root.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have nft || need+=(nftables)
have iptables || need+=(iptables)
have traceroute || need+=(traceroute)
# Released pod addresses lose their connection tracking entries.
have conntrack || need+=(conntrack)
have ping || need+=(iputils-ping)
have sha1sum || need+=(coreutils)
have cc || need+=(gcc)
# The etcd backend's gRPC code is generated at build time; its tests run a real etcd.
have protoc || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto) come with the -dev package.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
have etcd || need+=(etcd-server)
# Real runtimes drive podwire (bin/ctl/tests/runtimes.rs): podman with its
# CNI backend and runc, containerd with ctr; their image is made from a
# static busybox. (nsenter and unshare come with util-linux.)
have podman || need+=(podman)
have runc || need+=(runc)
{ have containerd && have ctr; } || need+=(containerd)
have tar || need+=(tar)
# containerd's CRI plugin sets up a pod's lo with the reference `loopback`
# plugin (bin/ctl/tests/cri.rs).
[ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
if [ "${PODWIRE_BENCH_DEPS:-0}" = 1 ]; then
  [ -x /usr/lib/cni/ptp ] || need+=(containernetworking-plugins)
  have iperf3 || need+=(iperf3)
  [ -x /usr/bin/time ] || need+=(time)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! have cargo; then
  echo "cargo is missing: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
