#!/usr/bin/env bash
# e2e of the Kubernetes controller (issue 3) on the harness's cluster:
#   1. CRDs (portcullis crds), the Helm chart: the controller (2 replicas, Lease
#      leader election) as a Deployment of image portcullis:e2e (the node
#      agent runs $CARGO_TARGET_DIR/release/portcullis for it);
#   2. Gateway + echo backend + HTTPRoute with kubectl: the
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
#
# Failures are meant to be understood from the CI log alone: every check
# that fails prints the state it depends on (`fail MSG CMD...` runs each CMD
# and shows its output, then dies with MSG), any other failing command is
# caught by the ERR trap with its line and a general dump, and the last
# line is always `ERROR: ...` (e2e.sh repeats it under its phase table).
# Every check after a change polls (wait_for) rather than reading once: the
# API server, the controller and the proxies all apply changes
# asynchronously.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
BIN="$CARGO_TARGET_DIR/release/portcullis"
[[ -x $BIN ]] || die "no release binary at $BIN (cargo build --release -p portcullis)"
NS=e2e-ctl
SYS=portcullis-system
STEP="start"

step() { STEP=$*; log "$*"; }

# show CMD...: each CMD (a shell string) with its output, for a failure.
show() {
  local c
  for c in "$@"; do
    printf -- '---- $ %s\n' "$c" >&2
    ( eval "$c" ) 2>&1 | tail -n 80 >&2 || true
  done
}
# What nearly every failure needs: objects, pods, the Lease, recent logs.
general_state() {
  show "kubectl -n $NS get gateway,httproute -o wide" \
    "kubectl -n $NS get gateway gw -o jsonpath='{.status}'; echo" \
    "kubectl -n $NS get deploy,pods,svc,endpointslices -o wide" \
    "kubectl -n $SYS get pods -o wide" \
    "kubectl -n $SYS get lease portcullis-controller -o jsonpath='{.spec}'; echo" \
    "kubectl -n $SYS logs deployment/portcullis-controller --tail=30" \
    "kubectl -n $NS logs deployment/gw-portcullis --tail=30" \
    "kubectl get events -A --sort-by=.lastTimestamp | tail -n 20"
}
# fail MSG CMD...: print what the failed check depends on, then die.
fail() {
  local msg=$1; shift
  trap - ERR
  log "FAILED at step: $STEP"
  if (( $# )); then show "$@"; else general_state; fi
  die "[$STEP] $msg"
}
on_error() { # a command failed outside of a check
  local rc=$1 line=$2 cmd=$3
  trap - ERR
  log "FAILED at step: $STEP"
  general_state
  die "[$STEP] line $line: '$cmd' exited $rc"
}
trap 'on_error $? $LINENO "$BASH_COMMAND"' ERR
# retry N CMD...: CMD until it succeeds, at most N times, 1 s apart (API
# calls right after an API server restart).
retry() {
  local n=$1 i; shift
  for (( i = 1; i <= n; i++ )); do "$@" && return 0; sleep 1; done
  "$@"
}

step "CRDs, Helm chart (RBAC, controller: 2 replicas, GatewayClass)"
bash "$E2E_DIR/scripts/deploy-controller.sh" || fail "deploy-controller.sh failed" \
  "kubectl -n $SYS get deploy,pods -o wide" "kubectl -n $SYS logs deployment/portcullis-controller --tail=40" \
  "kubectl get gatewayclass portcullis -o yaml"

step "Gateway, echo backend, HTTPRoute"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
{ echo_deployment_yaml 2; cat <<'YAML'; echo_route_yaml; } | kubectl apply -n "$NS" -f - >/dev/null
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 8080, protocol: HTTP}]
YAML

CONTROLLER_LOGS="kubectl -n $SYS logs deployment/portcullis-controller --tail=40"
wait_for "GatewayClass Accepted" 30 is_true cond gatewayclass portcullis .status.conditions Accepted \
  || fail "GatewayClass not Accepted" "kubectl get gatewayclass portcullis -o yaml" "$CONTROLLER_LOGS"
wait_for "Gateway Programmed" 30 is_true cond gateway gw .status.conditions Programmed \
  || fail "Gateway not Programmed" "kubectl -n $NS get gateway gw -o yaml" "$CONTROLLER_LOGS"
wait_for "HTTPRoute Accepted" 30 is_true cond httproute echo '.status.parents[0].conditions' Accepted \
  || fail "HTTPRoute not Accepted" "kubectl -n $NS get httproute echo -o yaml" "$CONTROLLER_LOGS"

step "provisioned proxy"
# Statuses come from compile; the proxy objects from the provisioner, which
# may apply them a moment later: wait for them to exist before checking.
exists() { kubectl -n "$NS" get "$1" "$2" >/dev/null; }
wait_for "proxy Deployment created" 60 exists deployment gw-portcullis \
  || fail "the proxy Deployment was not created" "kubectl -n $NS get deploy,svc,sa -o wide" "$CONTROLLER_LOGS"
kubectl -n "$NS" rollout status deployment/gw-portcullis --timeout=90s >&2 \
  || fail "proxy Deployment not available" "kubectl -n $NS get deploy,pods,svc -o wide" \
    "kubectl -n $NS describe pods -l gateway.networking.k8s.io/gateway-name=gw" \
    "kubectl -n $NS logs deployment/gw-portcullis --tail=40"
wait_for "proxy Service created" 60 exists svc gw-portcullis \
  || fail "the proxy Service was not created" "kubectl -n $NS get svc -o wide" "$CONTROLLER_LOGS"
svc_type=$(kubectl -n "$NS" get svc gw-portcullis -o jsonpath='{.spec.type}')
[[ $svc_type == LoadBalancer ]] || fail "proxy Service is a '$svc_type', not a LoadBalancer" "kubectl -n $NS get svc gw-portcullis -o yaml"
owner=$(kubectl -n "$NS" get deploy gw-portcullis -o jsonpath='{.metadata.ownerReferences[0].kind}')
[[ $owner == Gateway ]] || fail "the proxy Deployment's owner is '$owner', not the Gateway" "kubectl -n $NS get deploy gw-portcullis -o jsonpath='{.metadata}'"
address() { kubectl -n "$NS" get gateway gw -o jsonpath='{.status.addresses[0].value}'; }
has_address() { [[ -n $(address) ]]; }
wait_for "Gateway.status.addresses" 60 has_address \
  || fail "no Gateway address" "kubectl -n $NS get gateway gw -o yaml" "kubectl -n $NS get svc gw-portcullis -o yaml" "$CONTROLLER_LOGS"
ADDR=$(address)
log "Gateway address $ADDR"

served() { # served PATH: the echo pods answer PATH through the Gateway
  curl -sf --max-time 2 "http://$ADDR:8080$1" | grep -Eq '"namespace": ?"'"$NS"'"'
}
kubectl -n "$NS" rollout status deployment/echo --timeout=60s >&2 \
  || fail "echo not available" "kubectl -n $NS get deploy,pods -o wide" "kubectl -n $NS describe pods -l app=echo"
wait_for "a request through the Gateway reaches echo" 60 served /hello \
  || fail "traffic does not reach echo through $ADDR" "curl -sv --max-time 2 http://$ADDR:8080/hello 2>&1 | tail -n 25" \
    "kubectl -n $NS get pods,svc,endpointslices -o wide" "kubectl -n $NS logs deployment/gw-portcullis --tail=40" \
    "kubectl -n $NS get httproute -o yaml"

step "route change"
kubectl -n "$NS" patch httproute echo --type merge -p \
  '{"spec":{"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/v2"}}],"backendRefs":[{"name":"echo","port":8080}]}]}}' >/dev/null
t0=$(now_ms)
old_path_gone() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADDR:8080/hello") == 404 ]]; }
wait_for "new path served" 30 served /v2/x || fail "route change not followed: /v2/x not served" \
  "curl -sv --max-time 2 http://$ADDR:8080/v2/x 2>&1 | tail -n 25" "kubectl -n $NS logs deployment/gw-portcullis --tail=40" \
  "kubectl -n $NS get httproute echo -o yaml"
wait_for "old path refused" 30 old_path_gone || fail "old path still served after the route change" \
  "curl -sv --max-time 2 http://$ADDR:8080/hello 2>&1 | tail -n 25" "kubectl -n $NS logs deployment/gw-portcullis --tail=40"
log "route change followed in $(( $(now_ms) - t0 )) ms (kubectl return -> both checks)"

step "leader failover"
LEASE="kubectl -n $SYS get lease portcullis-controller -o yaml"
holder() { kubectl -n "$SYS" get lease portcullis-controller -o jsonpath='{.spec.holderIdentity}'; }
has_leader() { [[ -n $(holder) ]]; }
# Statuses were written, so a leader exists; poll anyway (a Lease read can
# fail transiently and a leader may be between renewals).
wait_for "a leader holds the Lease" 30 has_leader || fail "no leader" "$LEASE" "kubectl -n $SYS get pods -o wide"
leader=$(holder)
leader_pod=${leader%%_*}
kubectl -n "$SYS" get pod "$leader_pod" >/dev/null 2>&1 \
  || fail "the Lease holder '$leader' is not a controller pod" "$LEASE" "kubectl -n $SYS get pods -o wide"
kubectl -n "$SYS" delete pod "$leader_pod" --wait=false >/dev/null
t0=$(now_ms)
new_leader() { local h; h=$(holder); [[ -n $h && ${h%%_*} != "$leader_pod" ]]; }
wait_for "another replica holds the Lease" 40 new_leader || fail "no takeover after deleting $leader_pod" \
  "$LEASE" "kubectl -n $SYS get pods -o wide" "kubectl -n $SYS logs deployment/portcullis-controller --tail=40 --all-containers --prefix"
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
  || fail "the new leader did not write status" "kubectl -n $NS get httproute after-failover -o yaml" "$LEASE" \
    "kubectl -n $SYS logs deployment/portcullis-controller --tail=40 --all-containers --prefix"

step "API server restart"
# Killed hard and restarted with the same command line (recorded in the
# harness's pid file so that `cluster.sh down` stops it).
api_pid=$(awk '$1=="kube-apiserver" {print $2}' "$E2E_STATE/pids" | tail -1)
[[ -n $api_pid && -r /proc/$api_pid/cmdline ]] || fail "cannot find the kube-apiserver process" "cat $E2E_STATE/pids" "ps -eo pid,args | grep [k]ube-apiserver"
mapfile -d '' api_cmd <"/proc/$api_pid/cmdline"
kill -KILL "$api_pid"
api_gone() { ! kill -0 "$api_pid" 2>/dev/null; }
wait_for "kube-apiserver stopped" 10 api_gone || fail "kube-apiserver did not stop" "ps -o pid,stat,args -p $api_pid"
ok=0 failed_codes=()
for _ in $(seq 1 25); do
  if served /v2/x; then ok=$((ok + 1))
  else failed_codes+=("$(curl -s -o /dev/null -w '%{http_code}/%{time_total}s' --max-time 2 "http://$ADDR:8080/v2/x" || true)"); fi
  sleep 0.2
done
# The API server is down: only what does not need it can be shown.
(( ok == 25 )) || fail "only $ok/25 requests served while the API server was down (retried: ${failed_codes[*]})" \
  "curl -sv --max-time 2 http://$ADDR:8080/v2/x 2>&1 | tail -n 25" \
  "tail -n 40 $E2E_STATE/logs/node-agent.log" "ls $E2E_STATE/logs"
log "served 25/25 requests while the API server was down"
"${api_cmd[@]}" >"$E2E_STATE/logs/kube-apiserver-restarted.log" 2>&1 </dev/null &
echo "kube-apiserver $!" >>"$E2E_STATE/pids"
api_up() { kubectl get --raw /readyz; }
wait_for "kube-apiserver back" 90 api_up || fail "kube-apiserver did not come back" "tail -n 40 $E2E_STATE/logs/kube-apiserver-restarted.log"
# /readyz can answer before every CRD is served again.
wait_for "HTTPRoutes served again" 30 kubectl -n "$NS" get httproute echo \
  || fail "HTTPRoutes not served after the API server restart" "kubectl api-resources --api-group=gateway.networking.k8s.io"
retry 10 kubectl -n "$NS" patch httproute echo --type merge -p \
  '{"spec":{"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/v3"}}],"backendRefs":[{"name":"echo","port":8080}]}]}}' >/dev/null
wait_for "a change after the restart is served" 60 served /v3/x || fail "route change after the API server restart not followed" \
  "curl -sv --max-time 2 http://$ADDR:8080/v3/x 2>&1 | tail -n 25" \
  "kubectl -n $NS logs deployment/gw-portcullis --tail=40 --all-containers --prefix" "kubectl -n $NS get httproute echo -o yaml"
status_current() { # the route's status was written for its current generation
  local want; want=$(kubectl -n "$NS" get httproute echo -o jsonpath='{.metadata.generation}')
  [[ $(kubectl -n "$NS" get httproute echo -o jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].observedGeneration}') == "$want" ]]
}
wait_for "status written after the restart" 60 status_current || fail "no status for the route's new generation after the restart" \
  "kubectl -n $NS get httproute echo -o yaml" "$LEASE" "kubectl -n $SYS logs deployment/portcullis-controller --tail=40 --all-containers --prefix"
log "after the restart: serving, following changes, writing status"

step "HTTPS listener, certificate from a Secret, rotated"
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
TLS_STATE=("curl -sv --max-time 2 --cacert $tmp/one.crt --resolve tls.example:8443:$ADDR https://tls.example:8443/v3/x 2>&1 | tail -n 30"
  "kubectl -n $NS get gateway gw -o yaml" "kubectl -n $NS get svc gw-portcullis -o yaml" "kubectl -n $NS get pods -o wide"
  "kubectl -n $NS logs deployment/gw-portcullis --tail=40 --all-containers --prefix")
wait_for "HTTPS served with the first certificate" 120 served_tls one /v3/x \
  || fail "HTTPS listener not served with the Secret's certificate" "${TLS_STATE[@]}"
mkcert two
kubectl -n "$NS" create secret tls tls-cert --cert="$tmp/two.crt" --key="$tmp/two.key" --dry-run=client -o yaml \
  | kubectl replace -f - >/dev/null
t0=$(now_ms)
wait_for "HTTPS served with the rotated certificate" 60 served_tls two /v3/x \
  || fail "certificate rotation not picked up" "${TLS_STATE[@]/one.crt/two.crt}" "kubectl -n $NS get secret tls-cert -o jsonpath='{.metadata}'"
log "rotated certificate served after $(( $(now_ms) - t0 )) ms"
rm -rf "$tmp"

step "a backend without ready endpoints answers 503 at once"
kubectl -n "$NS" scale deployment echo --replicas=0 >/dev/null
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADDR:8080/v3/x"; }
no_endpoints() { [[ $(code) == 503 ]]; }
# Twice in a row: every proxy replica behind the load balancer saw it.
no_endpoints_twice() { no_endpoints && no_endpoints; }
wait_for "503 without endpoints" 60 no_endpoints_twice || fail "no 503 for a Service without ready endpoints (last: $(code))" \
  "curl -sv --max-time 2 http://$ADDR:8080/v3/x 2>&1 | tail -n 25" "kubectl -n $NS get deploy,pods,endpointslices -o wide" \
  "kubectl -n $NS logs deployment/gw-portcullis --tail=40 --all-containers --prefix"
# "At once" means no wait for an upstream timeout (seconds); the best of
# three keeps a scheduling hiccup of this busy machine out of it.
took=9
for _ in 1 2 3; do
  t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "http://$ADDR:8080/v3/x" || echo 9)
  took=$(awk -v a="$t" -v b="$took" 'BEGIN { print (a < b ? a : b) }')
done
awk -v t="$took" 'BEGIN { exit !(t < 1.0) }' || fail "503 took ${took}s (best of 3): the proxy waited for a backend" \
  "curl -sv --max-time 5 http://$ADDR:8080/v3/x 2>&1 | tail -n 25" "kubectl -n $NS logs deployment/gw-portcullis --tail=40"
log "503 in ${took}s"

step "Rust tests against this API server"
(cd "$REPO_DIR" && PORTCULLIS_TEST_KUBECONFIG="$KUBECONFIG" "${NICE[@]}" cargo test -q -p portcullis-controller --test kube_apiserver) >&2 \
  || fail "kube_apiserver tests failed (their output is above)" "kubectl get ns"

kubectl delete namespace "$NS" --wait=false >/dev/null
kubectl -n "$SYS" delete deployment portcullis-controller --wait=false >/dev/null
log "controller e2e: ok"
