#!/usr/bin/env bash
# The packaging, validated by the API server itself (server-side dry-run):
# our CRDs (applied for real: printer columns and schemas are checked), the
# Helm chart rendered with default values and with every option on, the
# plain manifests of deploy/install (kustomize), and deploy/examples.
# Objects of CRDs this cluster does not have (ServiceMonitor, PodMonitor,
# PrometheusRule, Argo CD, Flux) are left out; scripts/check-packaging.sh
# covers them with helm lint / helm template.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
cd "$REPO_DIR"

HELM=$(bash scripts/check-packaging.sh --helm)
kube_version=$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')
work=$(mktemp -d)
cleanup() {
  kubectl delete namespace pc-packaging demo --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

dry_run() { # FILE DESCRIPTION
  log "server-side dry-run: $2"
  kubectl apply --server-side --dry-run=server --force-conflicts \
    --field-manager=portcullis-packaging-check -f "$1" >"$work/out" 2>&1 \
    || { cat "$work/out" >&2; die "the API server refused $2"; }
  log "  $(grep -c . "$work/out" || true) objects accepted"
}

# Our CRDs, for real (idempotent): the API server validates their schemas
# and printer columns, and later objects of these kinds need them.
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null \
  || die "the API server refused crds/"
for crd in crds/*.yaml; do
  name=$(awk '/^  name:/ {print $2; exit}' "$crd")
  kubectl wait --for=condition=Established "crd/$name" --timeout=30s >/dev/null \
    || die "CRD $name not established"
done
log "crds/ established"

# Namespaces the dry-run objects live in must exist.
for ns in pc-packaging portcullis-system demo; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done

# The chart, default values, in its own namespace and names (so that
# nothing an earlier test installed is touched even in a dry run).
"$HELM" template pc-packaging charts/portcullis --namespace pc-packaging --include-crds --kube-version "$kube_version" \
  --set fullnameOverride=pc-packaging >"$work/chart-default.yaml"
dry_run "$work/chart-default.yaml" "helm template (default values)"

"$HELM" template pc-packaging charts/portcullis --namespace pc-packaging --kube-version "$kube_version" \
  --set fullnameOverride=pc-packaging \
  --set controller.replicas=3 \
  --set controller.provisioning=false \
  --set 'controller.supportedFeatures={HTTPRouteQueryParamMatching}' \
  --set gatewayClass.parametersRef.group=portcullis.dev \
  --set gatewayClass.parametersRef.kind=GatewayParameters \
  --set gatewayClass.parametersRef.name=defaults \
  --set gatewayClass.parametersRef.namespace=pc-packaging \
  --set controller.podDisruptionBudget.minAvailable=2 \
  >"$work/chart-options.yaml"
dry_run "$work/chart-options.yaml" "helm template (options)"

kubectl kustomize deploy/install >"$work/install.yaml"
dry_run "$work/install.yaml" "deploy/install (kustomize)"

kubectl kustomize deploy/examples >"$work/examples.yaml"
dry_run "$work/examples.yaml" "deploy/examples (kustomize)"

# The monitoring kustomization builds (its PrometheusRule needs the
# prometheus-operator CRDs, which this cluster does not have).
kubectl kustomize deploy/monitoring >"$work/monitoring.yaml" \
  || die "deploy/monitoring does not build"
grep -q '^kind: PrometheusRule' "$work/monitoring.yaml" || die "no PrometheusRule in deploy/monitoring"
log "packaging accepted by the API server"
