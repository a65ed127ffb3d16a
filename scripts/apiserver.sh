#!/usr/bin/env bash
# Builds (once) the real Kubernetes CRD API server, `apiextensions-apiserver`, and makes sure `etcd` is
# installed, for the real-API-server tier (tests/unit/test_crd_apiserver.py). Only Debian packages are
# used: the Go sources and the Go toolchain come from Debian sid as source packages (no registry ships
# the binary and no other download is possible here), etcd from the system's apt (etcd-server).
#
# Prints the path of the binary on its last line of stdout. Everything else goes to stderr.
#
# The binary is cached outside the git tree, keyed by the exact versions of every package that went
# into it: $TAKO_CACHE_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/tako-vm)/apiextensions-apiserver/.
# A second run needs no network and no build: it checks the cached binary and prints its path (sid's
# package list is only fetched when nothing is cached yet, or with TAKO_APISERVER_REFRESH=1).
# Measured on 2 shared cores: docs/crds.md ("Checking the CRDs on a real API server").
set -euo pipefail
cache="${TAKO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tako-vm}/apiextensions-apiserver"
say() { echo "apiserver.sh: $*" >&2; }
mkdir -p "$cache"

if ! command -v etcd >/dev/null 2>&1; then
    say "apt-get install etcd-server (nothing is started; the tests run their own etcd)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi

# A cached build: the newest complete one (a build writes into a temporary name and renames at the end).
latest="$cache/latest"
if [ "${TAKO_APISERVER_REFRESH:-0}" != 1 ] && [ -x "$latest" ] && "$latest" --help >/dev/null 2>&1; then
    say "cached: $(readlink -f "$latest")"
    readlink -f "$latest"
    exit 0
fi

work="$cache/work"
rm -rf "$work"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/root"
echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main' \
    > "$work/sources.list"
# A private apt state: the system's sources and package lists are never touched.
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
start=$SECONDS
apt-get "${apt_opts[@]}" update -qq >&2
# The Go toolchain the source packages are built with: what sid's golang-go depends on (golang-1.NN-go).
go_pkg="$(apt-cache "${apt_opts[@]}" depends golang-go | sed -n 's/^ *Depends: \(golang-1\.[0-9]*-go\)$/\1/p' | head -1)"
[ -n "$go_pkg" ] || { say "cannot find sid's Go toolchain package (golang-go depends on no golang-1.NN-go)"; exit 1; }
go_src="${go_pkg%-go}-src"
apt-cache "${apt_opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances --no-pre-depends golang-k8s-apiextensions-apiserver-dev "$go_pkg" "$go_src" \
    | grep -E '^golang-' | grep -vE '^golang-(go|any|src|golang-x-tools)$' | sort -u > "$work/packages"
# The cache key: every package and its exact version.
xargs apt-cache "${apt_opts[@]}" show --no-all-versions < "$work/packages" \
    | awk '/^Package:/ {p=$2} /^Version:/ {print p, $2}' | sort > "$work/versions"
key="$(sha256sum < "$work/versions" | cut -c1-16)"
binary="$cache/$key/apiextensions-apiserver"
if [ -x "$binary" ] && "$binary" --help >/dev/null 2>&1; then
    ln -sfn "$binary" "$latest"
    rm -rf "$work"
    say "cached for this package set: $binary"
    echo "$binary"
    exit 0
fi
say "downloading $(wc -l < "$work/packages") Debian sid Go packages ($go_pkg)"
(cd "$work/cache/archives" && xargs apt-get "${apt_opts[@]}" download -qq < "$work/packages" >&2)
downloaded=$SECONDS
for deb in "$work"/cache/archives/*.deb; do dpkg -x "$deb" "$work/root"; done
unpacked=$SECONDS
go_version="${go_pkg#golang-}"
goroot="$work/root/usr/lib/go-${go_version%-go}"
src="$work/root/usr/share/gocode/src/k8s.io/apiextensions-apiserver"
say "go build (GOPATH mode, sources as Debian packs them; several CPU-minutes)"
mkdir -p "$cache/$key"
(cd "$src" && GOROOT="$goroot" GOPATH="$work/root/usr/share/gocode" GO111MODULE=off CGO_ENABLED=0 \
    GOTOOLCHAIN=local GOFLAGS= GOCACHE="$work/gocache" "$goroot/bin/go" build -ldflags='-s -w' \
    -o "$binary.tmp" .)
mv "$binary.tmp" "$binary"
cp "$work/versions" "$cache/$key/versions"
ln -sfn "$binary" "$latest"
rm -rf "$work"
say "built $binary: download $((downloaded - start)) s, unpack $((unpacked - downloaded)) s," \
    "build $((SECONDS - unpacked)) s"
echo "$binary"
