#!/usr/bin/env bash
# Builds the Helm CLI the deploy tests render the chart with, from the Go module proxy (the version
# test/helm/go.mod names as a tool), into the cache, and prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "helm/build.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "no go command on PATH: install Go 1.26 (see README)"
cache=${KPTUNE_CACHE:-$HOME/.cache/kptune}
ver=$(sed -n 's/^\thelm.sh\/helm\/v3 \(v[0-9.]*\).*$/\1/p' "$here/go.mod")
[ -n "$ver" ] || die "test/helm/go.mod does not require helm.sh/helm/v3"
helm="$cache/bin/helm-$ver/helm"
if [ ! -x "$helm" ]; then
  echo "helm/build.sh: building helm $ver" >&2
  mkdir -p "$(dirname "$helm")"
  exec 9>"$(dirname "$helm")/.lock"
  flock 9
  if [ ! -x "$helm" ]; then
    (cd "$here" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$helm.tmp" helm.sh/helm/v3/cmd/helm) \
      || die "building helm $ver failed (is the Go module proxy reachable?)"
    mv "$helm.tmp" "$helm"
  fi
fi
echo "$helm"
