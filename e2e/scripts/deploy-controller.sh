#!/usr/bin/env bash
# Installs the Portcullis controller with the Helm chart (charts/portcullis:
# our CRDs, RBAC, 2 replicas with leader election, PodDisruptionBudget, the
# GatewayClass `portcullis`), exactly as a user would, and waits until the
# class is Accepted. Idempotent (`helm upgrade --install`): the controller
# tests, the policy tests and the conformance phase all call it. Needs
# `source STATE/env` and the release binary (the node agent runs it for
# `portcullis*` images). Helm is built from its Go module, once, into a cache.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
BIN="$CARGO_TARGET_DIR/release/portcullis"
[[ -x $BIN ]] || die "no release binary at $BIN (make build)"
SYS=portcullis-system
HELM=$(bash "$REPO_DIR/scripts/check-packaging.sh" --helm)

# Helm installs a chart's crds/ only on first install and never upgrades
# them: apply the current ones first, as the chart's README tells users.
"$BIN" crds | kubectl apply --server-side --force-conflicts -f - >/dev/null
features=$(printf '%s\n' Gateway GRPCRoute HTTPRoute ReferenceGrant $(claimed_features | tr ',' ' ') \
  | python3 -c 'import json,sys; print(json.dumps([l.strip() for l in sys.stdin if l.strip()]))')
values=$(mktemp)
trap 'rm -f "$values"' EXIT
cat >"$values" <<YAML
image: {repository: portcullis, tag: e2e}
controller:
  logFormat: text
  supportedFeatures: $features
YAML
"$HELM" upgrade --install portcullis "$REPO_DIR/charts/portcullis" \
  --namespace "$SYS" --create-namespace --values "$values" \
  --wait --timeout 120s >&2 \
  || { kubectl -n "$SYS" get deploy,pods -o wide >&2
       kubectl -n "$SYS" logs deployment/portcullis-controller --tail=30 >&2 || true
       die "helm upgrade --install of charts/portcullis failed"; }
kubectl -n "$SYS" rollout status deployment/portcullis-controller --timeout=90s >&2 \
  || { kubectl -n "$SYS" get pods -o wide >&2; die "controller not available"; }
accepted() {
  [[ $(kubectl get gatewayclass portcullis -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' 2>/dev/null) == True ]]
}
wait_for "GatewayClass portcullis Accepted" 60 accepted || die "GatewayClass portcullis not Accepted"
log "controller installed with the Helm chart, GatewayClass Accepted"
