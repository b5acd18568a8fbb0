#!/usr/bin/env bash
# Harness check: the Gateway API conformance suite's backends (its base
# manifests, under other namespace names, without the Gateways) all become
# Ready on this cluster: echo-basic in HTTP, TLS, gRPC and TCP modes, Secret
# volumes with items, several pods mounting different Secrets at one path,
# the CoreDNS stand-in. The suite itself requires every pod there Ready.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"

MOD="$E2E_DIR/conformance"
ver=$(cd "$MOD" && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance)
dir=$(cd "$MOD" && go mod download -json "sigs.k8s.io/gateway-api/conformance@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
P=harness-check
namespaces=("$P-infra" "$P-app-backend" "$P-web-backend")

# The Secrets the suite creates before applying its base manifests.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tmp/k" -out "$tmp/c" \
  -days 1 -subj /CN=harness-check 2>/dev/null
python3 - "$dir/base/manifests.yaml" "$P" >"$tmp/base.yaml" <<'PY'
import sys
text = open(sys.argv[1]).read().replace("gateway-conformance-", sys.argv[2] + "-")
# Keep everything but the Gateways (no controller here).
docs = [d for d in text.split("\n---") if "\nkind: Gateway\n" not in "\n" + d + "\n"]
print("\n---".join(docs))
PY
kubectl apply -f "$tmp/base.yaml" >/dev/null
for s in infra/tls-checks-certificate infra/tls-passthrough-checks-certificate \
         app-backend/tls-checks-certificate app-backend/tls-passthrough-checks-certificate; do
  kubectl -n "$P-${s%/*}" create secret tls "${s#*/}" --cert="$tmp/c" --key="$tmp/k" >/dev/null
done
for ns in "${namespaces[@]}"; do
  kubectl -n "$ns" wait --for=condition=Available deployment --all --timeout=60s >/dev/null || {
    kubectl -n "$ns" get pods -o wide >&2; die "conformance backends in $ns did not become available"; }
done
total=$(kubectl get pods -A --no-headers | awk -v p="$P-" 'index($1, p) == 1' | wc -l)
ready=$(kubectl get pods -A --no-headers | awk -v p="$P-" 'index($1, p) == 1 && $4 == "Running" && $3 == "1/1"' | wc -l)
((total > 0 && ready == total)) || { kubectl get pods -A -o wide | grep "$P-" >&2; die "only $ready of $total conformance backend pods Ready"; }
log "all $ready conformance backend pods Ready ($ver base manifests)"
kubectl delete namespace "${namespaces[@]}" --wait=false >/dev/null
