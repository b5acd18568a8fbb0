#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the
# pinned Go module in e2e/tools (no downloads but the Go module proxy), into
# $E2E_CACHE/bin/<key>, where <key> hashes the pins (go.mod, go.sum, this
# script, the Go version). Rebuilds only when the key changes. Prints the bin dir.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

TOOLS="$E2E_DIR/tools"
KUBE_VERSION=$(sed -nE 's/^\s*(require\s+)?k8s\.io\/kubernetes (v[^ ]+).*/\2/p' "$TOOLS/go.mod")
[[ $KUBE_VERSION =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || die "cannot read the k8s.io/kubernetes pin from $TOOLS/go.mod"
MAJOR=${BASH_REMATCH[1]} MINOR=${BASH_REMATCH[2]}

# Bump when the build recipe below changes in a way that changes the binaries.
RECIPE=2
key=$( { cat "$TOOLS/go.mod" "$TOOLS/go.sum"; echo "recipe $RECIPE"; go version; } | sha256sum | cut -c1-16)
out="$E2E_CACHE/bin/$KUBE_VERSION-$key"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

have_all() { local b; for b in "${bins[@]}"; do [[ -x $out/$b ]] || return 1; done; }
if have_all; then
  log "control-plane binaries cached in $out"
  touch "$out"
  echo "$out"; exit 0
fi
# Entries of other pins unused for two weeks go.
find "$E2E_CACHE/bin" -mindepth 1 -maxdepth 1 -type d -mtime +14 -exec rm -rf {} + 2>/dev/null || true

log "building control plane $KUBE_VERSION into $out (cold: ~20-30 min on 2 cores, niced)"
cd "$TOOLS"
# A reproducible build date: the release's own commit time from the module proxy.
build_date=$(go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes 2>/dev/null || true)
build_date=${build_date:-1970-01-01T00:00:00Z}
ld="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ld+=" -X '$pkg.gitVersion=$KUBE_VERSION' -X '$pkg.gitMajor=$MAJOR' -X '$pkg.gitMinor=$MINOR'"
  # The module proxy has no git commit: say where the source came from instead.
  ld+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=$build_date' -X '$pkg.gitCommit=module-k8s.io/kubernetes@$KUBE_VERSION'"
done
tmp="$out.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
# CGO off: static binaries, no C toolchain needed (upstream builds these the same way).
CGO_ENABLED=0 "${NICE[@]}" go build -trimpath -ldflags "$ld" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
CGO_ENABLED=0 "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
for b in "${bins[@]}"; do [[ -x $tmp/$b ]] || die "build did not produce $b"; done
rm -rf "$out"; mv "$tmp" "$out"
log "built: $("$out/kube-apiserver" --version) / $("$out/etcd" --version | head -1)"
echo "$out"
