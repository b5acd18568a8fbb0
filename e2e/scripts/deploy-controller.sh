#!/usr/bin/env bash
# Deploys the Portcullis controller (2 replicas, under deploy/rbac) and the
# GatewayClass `portcullis`, and waits until the class is Accepted. Used
# before the conformance suite. Needs `source STATE/env` and the release
# binary (the node agent runs it for `portcullis*` images).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
BIN="$CARGO_TARGET_DIR/release/portcullis"
[[ -x $BIN ]] || die "no release binary at $BIN (make build)"
SYS=portcullis-system

"$BIN" crds | kubectl apply --server-side -f - >/dev/null
kubectl create namespace "$SYS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -k "$REPO_DIR/deploy/rbac" >/dev/null
features="Gateway,GRPCRoute,HTTPRoute,ReferenceGrant,TLSRoute,$(claimed_features)"
kubectl apply -n "$SYS" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: portcullis-controller, labels: {app: portcullis-controller}}
spec:
  replicas: 2
  selector: {matchLabels: {app: portcullis-controller}}
  template:
    metadata: {labels: {app: portcullis-controller}}
    spec:
      serviceAccountName: portcullis-controller
      containers:
      - name: controller
        image: portcullis:e2e
        args: [controller, --proxy-image, "portcullis:e2e", --admin, "0.0.0.0:9902", --supported-features, "$features"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: RUST_LOG, value: info}
        ports: [{name: admin, containerPort: 9902}]
        readinessProbe:
          httpGet: {path: /readyz, port: 9902}
          periodSeconds: 1
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
YAML
kubectl -n "$SYS" rollout status deployment/portcullis-controller --timeout=90s >&2 \
  || { kubectl -n "$SYS" get pods -o wide >&2; die "controller not available"; }
accepted() {
  [[ $(kubectl get gatewayclass portcullis -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' 2>/dev/null) == True ]]
}
wait_for "GatewayClass portcullis Accepted" 60 accepted || die "GatewayClass portcullis not Accepted"
log "controller deployed, GatewayClass Accepted"
