#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian machine: the netfilter tools kube-proxy runs
# (iptables, nftables, conntrack), iproute2 for network namespaces, and the Go module downloads.
# Idempotent and quick when everything is present. With --matrix it also installs Debian's Go 1.19,
# which `make test-matrix` builds the kube-proxy releases of that era with.
set -euo pipefail
matrix=0
[ "${1:-}" = --matrix ] && matrix=1
die() { echo "setup.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "no go command on PATH: install Go 1.26 first (https://go.dev/dl)"
need=()
for pair in ip:iproute2 iptables:iptables ip6tables:iptables nft:nftables conntrack:conntrack modprobe:kmod; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ $matrix = 1 ] && [ ! -x /usr/lib/go-1.19/bin/go ] && need+=(golang-1.19)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run as root, or apt-get install ${need[*]}"
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get: install them with your package manager"
  echo "setup.sh: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed: check the network to the Debian mirror"
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null \
    || die "apt-get install ${need[*]} failed"
fi
cd "$(dirname "$0")/.."
go mod download
