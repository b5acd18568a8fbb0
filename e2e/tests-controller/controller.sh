#!/usr/bin/env bash
# e2e of the Kubernetes controller (issue 3) on the harness's cluster:
#   1. CRDs (portcullis crds), deploy/rbac, the controller (2 replicas, Lease
#      leader election) as a Deployment of image portcullis:e2e (the node
#      agent runs $CARGO_TARGET_DIR/release/portcullis for it);
#   2. GatewayClass + Gateway + echo backend + HTTPRoute with kubectl: the
#      statuses appear (Accepted / Programmed), the proxy Deployment and its
#      LoadBalancer Service are provisioned, Gateway.status.addresses is the
#      Service's address, and a request through it reaches the echo pods;
#   3. a route change is followed by the traffic;
#   4. the leader pod is deleted: the other replica takes the Lease over and
#      writes the status of a route created afterwards;
#   5. the API server is killed: traffic keeps flowing; once it is back a
#      route change is followed and status is written again;
#   6. an HTTPS listener serves the certificate of its Secret, and the
#      rotated one after the Secret changes;
#   7. a backend scaled to zero answers 503 at once (no hang);
#   8. the Rust tests against this API server
#      (crates/controller/tests/kube_apiserver.rs).
# Needs `source STATE/env` (KUBECONFIG, kubectl) and a release build of the
# binary (cargo build --release -p portcullis).
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
BIN="$CARGO_TARGET_DIR/release/portcullis"
[[ -x $BIN ]] || die "no release binary at $BIN (cargo build --release -p portcullis)"
NS=e2e-ctl
SYS=portcullis-system

log "CRDs, RBAC, controller: 2 replicas"
bash "$E2E_DIR/scripts/deploy-controller.sh"

log "Gateway, echo backend, HTTPRoute"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, labels: {app: echo}}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: gcr.io/k8s-staging-gateway-api/echo-basic:v20260204-monthly-2026.01-60-g28382302
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        readinessProbe:
          httpGet: {path: /, port: 3000}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: 3000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: echo, port: 8080}]
YAML

cond() { # cond KIND NAME JSONPATH-TO-CONDITIONS TYPE: prints the condition status
  kubectl -n "$NS" get "$1" "$2" -o jsonpath="{$3[?(@.type==\"$4\")].status}"
}
is_true() { [[ $("$@") == True ]]; }
wait_for "GatewayClass Accepted" 30 is_true cond gatewayclass portcullis .status.conditions Accepted \
  || { kubectl get gatewayclass portcullis -o yaml >&2; die "GatewayClass not Accepted"; }
wait_for "Gateway Programmed" 30 is_true cond gateway gw .status.conditions Programmed \
  || { kubectl -n "$NS" get gateway gw -o yaml >&2; die "Gateway not Programmed"; }
wait_for "HTTPRoute Accepted" 30 is_true cond httproute echo '.status.parents[0].conditions' Accepted \
  || { kubectl -n "$NS" get httproute echo -o yaml >&2; die "HTTPRoute not Accepted"; }

log "provisioned proxy"
kubectl -n "$NS" rollout status deployment/gw-portcullis --timeout=90s >&2 \
  || { kubectl -n "$NS" get deploy,pods,svc -o wide >&2; die "proxy Deployment not available"; }
[[ $(kubectl -n "$NS" get svc gw-portcullis -o jsonpath='{.spec.type}') == LoadBalancer ]] || die "proxy Service is not a LoadBalancer"
[[ $(kubectl -n "$NS" get deploy gw-portcullis -o jsonpath='{.metadata.ownerReferences[0].kind}') == Gateway ]] || die "no owner reference"
address() { kubectl -n "$NS" get gateway gw -o jsonpath='{.status.addresses[0].value}'; }
has_address() { [[ -n $(address) ]]; }
wait_for "Gateway.status.addresses" 60 has_address || { kubectl -n "$NS" get gateway gw -o yaml >&2; die "no Gateway address"; }
ADDR=$(address)
log "Gateway address $ADDR"

served() { # served PATH: the echo pods answer PATH through the Gateway
  curl -sf --max-time 2 "http://$ADDR:8080$1" | grep -Eq '"namespace": ?"'"$NS"'"'
}
diagnose() { # what a failed traffic check needs to be understood
  curl -sv --max-time 2 "http://$ADDR:8080${1:-/}" >&2 || true
  kubectl -n "$NS" get pods,svc,endpointslices -o wide >&2
  kubectl -n "$NS" logs deployment/gw-portcullis --tail=40 >&2 || true
  kubectl -n "$NS" get httproute -o yaml >&2
}
kubectl -n "$NS" rollout status deployment/echo --timeout=60s >&2 || die "echo not available"
wait_for "a request through the Gateway reaches echo" 60 served /hello || { diagnose /hello; die "traffic does not reach echo through $ADDR"; }

log "route change"
kubectl -n "$NS" patch httproute echo --type merge -p \
  '{"spec":{"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/v2"}}],"backendRefs":[{"name":"echo","port":8080}]}]}}' >/dev/null
t0=$(now_ms)
old_path_gone() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADDR:8080/hello") == 404 ]]; }
wait_for "new path served" 30 served /v2/x || { diagnose /v2/x; die "route change not followed"; }
wait_for "old path refused" 30 old_path_gone || die "old path still served"
log "route change followed in $(( $(now_ms) - t0 )) ms (kubectl return -> both checks)"

log "leader failover"
holder() { kubectl -n "$SYS" get lease portcullis-controller -o jsonpath='{.spec.holderIdentity}'; }
leader=$(holder)
leader_pod=${leader%%_*}
[[ -n $leader_pod ]] || die "no leader"
kubectl -n "$SYS" delete pod "$leader_pod" --wait=false >/dev/null
t0=$(now_ms)
new_leader() { local h; h=$(holder); [[ -n $h && ${h%%_*} != "$leader_pod" ]]; }
wait_for "another replica holds the Lease" 40 new_leader || die "no takeover after deleting $leader_pod"
log "Lease taken over by $(holder) in $(( $(now_ms) - t0 )) ms"
kubectl apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: after-failover}
spec:
  parentRefs: [{name: gw}]
  hostnames: [failover.example]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
YAML
wait_for "status written by the new leader" 30 is_true cond httproute after-failover '.status.parents[0].conditions' Accepted \
  || die "the new leader did not write status"

log "API server restart"
# Killed hard and restarted with the same command line (recorded in the
# harness's pid file so that `cluster.sh down` stops it).
api_pid=$(awk '$1=="kube-apiserver" {print $2}' "$E2E_STATE/pids" | tail -1)
[[ -n $api_pid && -r /proc/$api_pid/cmdline ]] || die "cannot find the kube-apiserver process"
mapfile -d '' api_cmd <"/proc/$api_pid/cmdline"
kill -KILL "$api_pid"
api_gone() { ! kill -0 "$api_pid" 2>/dev/null; }
wait_for "kube-apiserver stopped" 10 api_gone || die "kube-apiserver did not stop"
ok=0
for _ in $(seq 1 25); do if served /v2/x; then ok=$((ok + 1)); fi; sleep 0.2; done
(( ok == 25 )) || { diagnose /v2/x; die "only $ok/25 requests served while the API server was down"; }
log "served 25/25 requests while the API server was down"
"${api_cmd[@]}" >"$E2E_STATE/logs/kube-apiserver-restarted.log" 2>&1 </dev/null &
echo "kube-apiserver $!" >>"$E2E_STATE/pids"
api_up() { kubectl get --raw /readyz; }
wait_for "kube-apiserver back" 90 api_up || die "kube-apiserver did not come back"
kubectl -n "$NS" patch httproute echo --type merge -p \
  '{"spec":{"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/v3"}}],"backendRefs":[{"name":"echo","port":8080}]}]}}' >/dev/null
wait_for "a change after the restart is served" 60 served /v3/x || { diagnose /v3/x; die "route change after the API server restart not followed"; }
status_current() { # the route's status was written for its current generation
  local want; want=$(kubectl -n "$NS" get httproute echo -o jsonpath='{.metadata.generation}')
  [[ $(kubectl -n "$NS" get httproute echo -o jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].observedGeneration}') == "$want" ]]
}
wait_for "status written after the restart" 60 status_current || die "no status for the route's new generation after the restart"
log "after the restart: serving, following changes, writing status"

log "HTTPS listener, certificate from a Secret, rotated"
tmp=$(mktemp -d)
mkcert() { # mkcert NAME: a self-signed certificate for tls.example
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$tmp/$1.key" -out "$tmp/$1.crt" -days 1 \
    -subj /CN=tls.example -addext subjectAltName=DNS:tls.example 2>/dev/null
}
mkcert one
kubectl -n "$NS" create secret tls tls-cert --cert="$tmp/one.crt" --key="$tmp/one.key" >/dev/null
kubectl -n "$NS" patch gateway gw --type json -p '[{"op":"add","path":"/spec/listeners/-","value":
  {"name":"https","port":8443,"protocol":"HTTPS","hostname":"tls.example",
   "tls":{"mode":"Terminate","certificateRefs":[{"name":"tls-cert"}]}}}]' >/dev/null
served_tls() { # served_tls CERT PATH: HTTPS through the Gateway, verified against CERT
  curl -sf --max-time 2 --cacert "$tmp/$1.crt" --resolve "tls.example:8443:$ADDR" "https://tls.example:8443$2" \
    | grep -Eq '"namespace": ?"'"$NS"'"'
}
wait_for "HTTPS served with the first certificate" 120 served_tls one /v3/x \
  || { kubectl -n "$NS" get gateway gw -o yaml >&2; diagnose /v3/x; die "HTTPS listener not served"; }
mkcert two
kubectl -n "$NS" create secret tls tls-cert --cert="$tmp/two.crt" --key="$tmp/two.key" --dry-run=client -o yaml \
  | kubectl replace -f - >/dev/null
t0=$(now_ms)
wait_for "HTTPS served with the rotated certificate" 60 served_tls two /v3/x || die "certificate rotation not picked up"
log "rotated certificate served after $(( $(now_ms) - t0 )) ms"
rm -rf "$tmp"

log "a backend without ready endpoints answers 503 at once"
kubectl -n "$NS" scale deployment echo --replicas=0 >/dev/null
no_endpoints() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADDR:8080/v3/x") == 503 ]]; }
wait_for "503 without endpoints" 60 no_endpoints || { diagnose /v3/x; die "no 503 for a Service without ready endpoints"; }
took=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "http://$ADDR:8080/v3/x")
awk -v t="$took" 'BEGIN { exit !(t < 1.0) }' || die "503 took ${took}s"
log "503 in ${took}s"

log "Rust tests against this API server"
(cd "$REPO_DIR" && PORTCULLIS_TEST_KUBECONFIG="$KUBECONFIG" "${NICE[@]}" cargo test -q -p portcullis-controller --test kube_apiserver) >&2 \
  || die "kube_apiserver tests failed"

kubectl delete namespace "$NS" --wait=false >/dev/null
kubectl -n "$SYS" delete deployment portcullis-controller --wait=false >/dev/null
log "controller e2e: ok"
