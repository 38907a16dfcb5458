#!/usr/bin/env bash
# Starts a test bed by hand and leaves it running: a control plane and kube-proxies (default one
# v1.33.5 in iptables mode), each in its own network namespace. Flags: see `up.sh -h`.
#   test/cluster/up.sh --kube-proxy v1.33.5,v1.37.2 --mode nftables --dual-stack
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "up.sh: the test bed needs root (network namespaces, iptables): run as root" >&2; exit 1; }
./test/setup.sh
exec go run ./test/cmd/testbed up "$@"
