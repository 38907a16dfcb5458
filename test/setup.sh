#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian machine: the netfilter tools kube-proxy runs
# (iptables, nftables, conntrack), iproute2 for network namespaces, and the Go module downloads.
# Idempotent and quick when everything is present.
set -euo pipefail
die() { echo "setup.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "no go command on PATH: install Go 1.26 first (https://go.dev/dl)"
need=()
for pair in ip:iproute2 iptables:iptables ip6tables:iptables nft:nftables conntrack:conntrack modprobe:kmod; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
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
