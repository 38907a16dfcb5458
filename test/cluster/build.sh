#!/usr/bin/env bash
# Builds the test bed's control plane, the real etcd (test/etcd) and kube-apiserver, into the cache, and
# prints their paths, one a line: etcd first, then kube-apiserver.
#
#   build.sh [K8S_VERSION]     (default: $KPTUNE_APISERVER_VERSION or v1.37.2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "cluster/build.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "no go command on PATH: install Go 1.26 (see README)"

cache=${KPTUNE_CACHE:-$HOME/.cache/kptune}
etcdver=$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/../etcd/go.mod")
[ -n "$etcdver" ] || die "test/etcd/go.mod does not name go.etcd.io/etcd/server/v3"
etcd="$cache/bin/etcd-$etcdver/etcd"
if [ ! -x "$etcd" ]; then
  echo "cluster/build.sh: building etcd $etcdver" >&2
  mkdir -p "$(dirname "$etcd")"
  (cd "$here/../etcd" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$etcd.tmp" .) \
    || die "building etcd $etcdver failed (is the Go module proxy reachable?)"
  mv "$etcd.tmp" "$etcd"
fi
echo "$etcd"
"$here/../kubeproxy/build.sh" "${1:-${KPTUNE_APISERVER_VERSION:-v1.37.2}}" --cmd kube-apiserver
