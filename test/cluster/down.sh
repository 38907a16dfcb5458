#!/usr/bin/env bash
# Stops every test bed started on this machine (recorded under /run/kptune-testbed): its processes,
# network namespaces (and with them every rule kube-proxy wrote) and files.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec go run ./test/cmd/testbed down
