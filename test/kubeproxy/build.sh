#!/usr/bin/env bash
# Builds a real upstream Kubernetes command (kube-proxy by default) at any k8s version the Go module
# proxy serves, the way upstream releases do, and prints the path of the cached binary.
#
#   build.sh VERSION [--pie] [--cgo] [--debug] [--go TOOLCHAIN] [--cmd NAME]
#
#   VERSION        v1.33.7, 1.37.2, ...
#   --pie          -buildmode=pie
#   --cgo          CGO_ENABLED=1 (upstream ships CGO_ENABLED=0)
#   --debug        keep symbols and DWARF (no -s -w): the ground truth for layout tests
#   --go TC        another Go toolchain: go1.22.12 (golang.org/toolchain from the module proxy)
#                  or a path to a go binary (/usr/lib/go-1.19/bin/go)
#   --cmd NAME     kube-proxy (default), kube-apiserver, kube-controller-manager, kube-scheduler or kubelet
#   --fixture NAME a test fixture of test/fixtures/NAME (a small program importing the real runner)
#
# Cache: ${KPTUNE_CACHE:-$HOME/.cache/kptune}/bin/NAME-VERSION-FLAVOUR/NAME; the generated module that
# requires k8s.io/kubernetes lives in .../mod/VERSION-GO and is shared by every flavour.
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }

version="" pie=0 cgo=0 debug=0 toolchain="" cmd=kube-proxy fixture=""
while [ $# -gt 0 ]; do
  case "$1" in
    --pie) pie=1 ;;
    --cgo) cgo=1 ;;
    --debug) debug=1 ;;
    --go) [ $# -ge 2 ] || die "--go needs a toolchain (go1.22.12) or a path to a go binary"; toolchain=$2; shift ;;
    --cmd) [ $# -ge 2 ] || die "--cmd needs a command name (kube-proxy, kubelet, ...)"; cmd=$2; shift ;;
    --fixture) [ $# -ge 2 ] || die "--fixture needs a name from test/fixtures"; fixture=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown flag $1 (see --help)" ;;
    *) [ -z "$version" ] || die "one VERSION only (got $version and $1)"; version=$1 ;;
  esac
  shift
done
[ -n "$version" ] || die "usage: build.sh VERSION [--pie] [--cgo] [--debug] [--go TOOLCHAIN] [--cmd NAME]"
version=v${version#v}
[[ "$version" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "version $version is not of the form v1.MINOR.PATCH"
minor=${BASH_REMATCH[1]} patch=${BASH_REMATCH[2]}
case "$cmd" in kube-proxy|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet) ;; *) die "--cmd $cmd: one of kube-proxy, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet" ;; esac
pkg="k8s.io/kubernetes/cmd/$cmd"
if [ -n "$fixture" ]; then
  src="$(cd "$(dirname "$0")/.." && pwd)/fixtures/$fixture"
  [ -f "$src/main.go" ] || die "no fixture $fixture: pick one of $(cd "$(dirname "$src")" && ls -d */ | tr -d / | tr '\n' ' ')"
  # The source is part of the cache key, so an edited fixture is rebuilt.
  cmd="$fixture" pkg="./fixtures/$fixture"
fi

gobin=go
tcname=$(go env GOVERSION 2>/dev/null) || die "no go command on PATH: install Go 1.26 (see README)"
export GOTOOLCHAIN=local
if [ -n "$toolchain" ]; then
  if [ -x "$toolchain" ]; then
    gobin=$toolchain
  elif [[ "$toolchain" =~ ^go1\.[0-9]+(\.[0-9]+)?$ ]]; then
    export GOTOOLCHAIN=$toolchain
  else
    die "--go $toolchain: give a toolchain name such as go1.22.12 or the path of a go binary"
  fi
  tcname=$(GOFLAGS= "$gobin" env GOVERSION 2>/dev/null) \
    || die "toolchain $toolchain is not available: the module proxy must serve golang.org/toolchain@v0.0.1-$toolchain.linux-$(go env GOARCH), or install it (apt-get install golang-1.19)"
fi

flavour=static
[ $pie = 1 ] && flavour=pie
[ $cgo = 1 ] && flavour="$flavour-cgo"
[ $debug = 1 ] && flavour="$flavour-debug"
flavour="$flavour-$tcname"

cache=${KPTUNE_CACHE:-$HOME/.cache/kptune}
key="$cmd-$version-$flavour"
[ -n "$fixture" ] && key="fixture-$key-$(cat "$src"/*.go | sha256sum | cut -c1-12)"
out="$cache/bin/$key/$cmd"
if [ -x "$out" ]; then echo "$out"; exit 0; fi

moddir="$cache/mod/$version-$tcname"
# One build at a time a module: go build -mod=mod rewrites go.mod and go.sum.
mkdir -p "$cache/mod"
command -v flock >/dev/null || die "no flock command: apt-get install util-linux"
exec 9>"$moddir.lock"
flock 9
if [ -x "$out" ]; then echo "$out"; exit 0; fi
if [ ! -f "$moddir/.ready" ]; then
  mkdir -p "$moddir"
  echo "build.sh: fetching k8s.io/kubernetes@$version (first build of this version takes minutes)" >&2
  kmod=$(cd "$moddir" && GOFLAGS=-mod=mod "$gobin" mod download -json "k8s.io/kubernetes@$version" 2>&1) \
    || die "the module proxy does not serve k8s.io/kubernetes@$version: pick a served patch release ($(echo "$kmod" | grep -o '"Error": *"[^"]*"' | head -1))"
  gomod=$(echo "$kmod" | sed -n 's/.*"GoMod": *"\([^"]*\)".*/\1/p')
  [ -f "$gomod" ] || die "no go.mod for k8s.io/kubernetes@$version in the module cache"
  # k8s.io/kubernetes replaces its staging modules with local directories, which a dependent module
  # cannot see: point each at the published k8s.io/NAME v0.MINOR.PATCH instead. Replace and godebug
  # directives only act in the main module, so they are carried over here.
  {
    echo "module kptune.test/k8s"
    echo
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    awk -v ver="v0.$minor.$patch" '
      /^replace \($/ { inblock=1; print; next }
      inblock && /^\)/ { inblock=0; print; next }
      inblock || /^replace / {
        line=$0
        if (match(line, /=> \.\/staging\/src\/k8s\.io\/[^ ]+/)) {
          name=substr(line, RSTART+3+length("./staging/src/"), RLENGTH-3-length("./staging/src/"))
          sub(/=> \.\/staging\/src\/k8s\.io\/[^ ]+/, "=> " name " " ver, line)
        }
        print line
      }' "$gomod"
  } > "$moddir/go.mod"
  rm -f "$moddir/go.sum"
  printf 'package k8s\n' > "$moddir/doc.go"
  touch "$moddir/.ready"
fi

if [ -n "$fixture" ]; then
  mkdir -p "$moddir/fixtures/$fixture"
  cp "$src"/*.go "$moddir/fixtures/$fixture/"
fi

ldflags="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
[ $debug = 1 ] || ldflags="-s -w $ldflags"
# A cgo build is linked by the system linker, as distribution builds are: its .text then starts with
# C code, not at runtime.text.
[ $cgo = 1 ] && ldflags="-linkmode=external $ldflags"
args=(build -mod=mod -trimpath -tags=notest)
[ $pie = 1 ] && args+=(-buildmode=pie)
tmp="$out.tmp.$$"
mkdir -p "$(dirname "$out")"
echo "build.sh: building $cmd $version ($flavour)" >&2
if ! (cd "$moddir" && CGO_ENABLED=$cgo "$gobin" "${args[@]}" -ldflags="$ldflags" -o "$tmp" "$pkg") >"$out.log" 2>&1; then
  # Go >= 1.23 refuses //go:linkname pulls of runtime internals by old dependencies; upstream built these
  # releases with an older toolchain, so relax that check rather than change what is linked.
  if grep -q 'invalid reference to\|linkname' "$out.log"; then
    echo "build.sh: retrying with -checklinkname=0 (old dependency, newer Go)" >&2
    (cd "$moddir" && CGO_ENABLED=$cgo "$gobin" "${args[@]}" -ldflags="$ldflags -checklinkname=0" -o "$tmp" "$pkg") >"$out.log" 2>&1 \
      || { rm -f "$tmp"; die "building $cmd $version failed: see $out.log"; }
  else
    rm -f "$tmp"
    missing=$(grep -o '[a-z0-9./-]*@v[0-9][^:]*: \(reading\|verifying\).* 40[34]' "$out.log" | head -1 | cut -d: -f1 || true)
    [ -n "$missing" ] && die "$missing, which $cmd $version needs, is not served by the module proxy: pick another patch release of 1.$minor"
    die "building $cmd $version failed: see $out.log"
  fi
fi
mv "$tmp" "$out"
echo "$out"
