#!/usr/bin/env bash
# Build Go programs from their published modules, cached by version outside the checkout.
#
#   deploy/gobuild.sh NAME VERSION PKG[@VERSION]... [-- GO_BUILD_FLAGS...]
#
# installs each PKG (`go install PKG@VERSION`) into $NETWEFT_CACHE/go/NAME-VERSION/bin and prints
# that directory on stdout. A finished build leaves a stamp; a warm machine rebuilds nothing.
# Module downloads and Go's build cache also live under $NETWEFT_CACHE/go, so a rebuild of a
# neighbouring version is cheap. NETWEFT_CACHE defaults to /var/cache/netweft.
#
# For modules whose go.mod has replace directives (k8s.io/kubernetes), `go install PKG@VERSION`
# refuses: give GOBUILD_MODFILE=path/to/go.mod (a small build module of ours pinning what is
# needed) and PKG without @VERSION; the packages are then built inside a copy of that module.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: deploy/gobuild.sh NAME VERSION PKG[@VERSION]... [-- GO_BUILD_FLAGS...]" >&2
    exit 2
fi
name=$1 version=$2; shift 2
pkgs=() flags=()
while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; flags=("$@"); break; fi
    pkgs+=("$1"); shift
done
if ! command -v go >/dev/null; then
    for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do [ -x "$g" ] && PATH=$(dirname "$g"):$PATH; done
fi
command -v go >/dev/null || { echo "gobuild.sh: no Go toolchain (need Go >= 1.22 on PATH)" >&2; exit 1; }

cache=${NETWEFT_CACHE:-/var/cache/netweft}/go
out=$cache/$name-$version
stamp=$out/.built
key="${pkgs[*]} ${flags[*]:-} ${GOBUILD_MODFILE:+$(sha256sum "$GOBUILD_MODFILE" | cut -c1-16)}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    echo "$out/bin"
    exit 0
fi
mkdir -p "$out/bin" "$cache/mod" "$cache/build"
export GOMODCACHE=$cache/mod GOCACHE=$cache/build GOBIN=$out/bin GOFLAGS="${GOFLAGS:-} -mod=mod"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}  # modules come from the proxy configured on this machine
start=$(date +%s)
if [ -n "${GOBUILD_MODFILE:-}" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp "$GOBUILD_MODFILE" "$work/go.mod"
    dir=$(dirname "$GOBUILD_MODFILE")
    [ -f "$dir/go.sum" ] && cp "$dir/go.sum" "$work/go.sum"
    (cd "$work" && go mod download >&2 && go install "${flags[@]}" "${pkgs[@]}" >&2)
else
    GOFLAGS=${GOFLAGS% -mod=mod} go install "${flags[@]}" "${pkgs[@]}" >&2
fi
echo "$key" > "$stamp"
echo "gobuild.sh: built $name $version in $(( $(date +%s) - start )) s" >&2
echo "$out/bin"
