#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian machine: the netfilter tools kube-proxy runs
# (iptables, nftables, conntrack), iproute2 for network namespaces, buildah (builds the agent's image
# from the Dockerfile without a daemon), and the Go module downloads.
# Idempotent and quick when everything is present. With --matrix it also installs Debian's Go 1.19,
# which `make test-matrix` builds the kube-proxy releases of that era with. With --bench it installs
# perf and gdb (the approach the retune benchmark compares against) and mounts tracefs for perf probe.
# With --e2e it installs what `make e2e` runs a node with: containerd, runc and the CNI plugins.
set -euo pipefail
matrix=0 bench=0 e2e=0
for a in "$@"; do
  case "$a" in
    --matrix) matrix=1 ;;
    --bench) bench=1 ;;
    --e2e) e2e=1 ;;
    *) echo "setup.sh: unknown flag $a: use --matrix, --bench or --e2e" >&2; exit 1 ;;
  esac
done
die() { echo "setup.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "no go command on PATH: install Go 1.26 first (https://go.dev/dl)"
need=()
for pair in ip:iproute2 iptables:iptables ip6tables:iptables nft:nftables conntrack:conntrack modprobe:kmod buildah:buildah; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ $matrix = 1 ] && [ ! -x /usr/lib/go-1.19/bin/go ] && need+=(golang-1.19)
if [ $e2e = 1 ]; then
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/loopback ] || need+=(containernetworking-plugins)
fi
if [ $bench = 1 ]; then
  command -v perf >/dev/null || need+=(linux-perf)
  command -v gdb >/dev/null || need+=(gdb)
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run as root, or apt-get install ${need[*]}"
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them with your package manager"
  echo "setup.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed: check the network to the Debian mirror"
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null \
    || die "apt-get install ${need[*]} failed"
fi
if [ $bench = 1 ] && [ ! -e /sys/kernel/tracing/uprobe_events ]; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || die "cannot mount tracefs on /sys/kernel/tracing: perf probe needs it (and a kernel with uprobes)"
fi
cd "$(dirname "$0")/.."
go mod download
