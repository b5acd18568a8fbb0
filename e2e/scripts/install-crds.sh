#!/usr/bin/env bash
# Installs the Gateway API CRDs (standard channel) of the version pinned in
# e2e/conformance, from the Go module cache, and waits until they are served.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
MOD="$E2E_DIR/conformance"
ver=$(cd "$MOD" && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance)
dir=$(cd "$MOD" && go mod download -json "sigs.k8s.io/gateway-api@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
crds="$dir/config/crd/standard"
[[ -d $crds ]] || die "no CRDs at $crds"
log "installing Gateway API $ver CRDs (standard channel)"
# Server-side apply: the CRDs are too large for the last-applied annotation.
kubectl apply --server-side --force-conflicts -f "$crds" >/dev/null
mapfile -t names < <(kubectl get crd -o name | grep 'gateway.networking.k8s.io$')
((${#names[@]} > 0)) || die "no Gateway API CRD after apply"
kubectl wait --for=condition=Established --timeout=60s "${names[@]}" >/dev/null
log "${#names[@]} Gateway API CRDs established"
