#!/usr/bin/env bash
# Smoke test of the e2e cluster: a Deployment of the conformance echo server
# behind a LoadBalancer Service, reached from the host by pod IP and by the
# LoadBalancer address. Needs `source STATE/env`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
NS=e2e-smoke

kubectl create namespace "$NS" >/dev/null
{ echo_deployment_yaml 2; cat <<'YAML'; } | kubectl apply -n "$NS" -f - >/dev/null
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  type: LoadBalancer
  selector: {app: echo}
  ports:
  - {name: http, port: 8080, targetPort: 3000}
YAML

kubectl -n "$NS" rollout status deployment/echo --timeout=60s >&2 || {
  kubectl -n "$NS" get pods -o wide >&2; kubectl -n "$NS" describe pods >&2; die "echo deployment did not become available"; }

ready_endpoints() {
  kubectl -n "$NS" get endpointslices -l kubernetes.io/service-name=echo \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | grep -c .
}
two_ready_endpoints() { [[ $(ready_endpoints) == 2 ]]; }
wait_for "2 ready endpoints in the EndpointSlice of service echo" 30 two_ready_endpoints \
  || { kubectl -n "$NS" get endpointslices -o yaml >&2; die "EndpointSlice not populated"; }

mapfile -t pods < <(kubectl -n "$NS" get pods -l app=echo -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP}{"\n"}{end}')
((${#pods[@]} == 2)) || die "expected 2 pods, got: ${pods[*]}"
seen_ips=()
for line in "${pods[@]}"; do
  read -r name ip <<<"$line"
  [[ $ip == 198.18.* ]] || die "pod $name has IP '$ip', not from the pod CIDR"
  body=$(curl -sS --max-time 5 "http://$ip:3000/smoke?x=1") || die "curl to pod $name at $ip:3000 failed"
  python3 - "$body" "$name" "$NS" <<'PY' || die "unexpected echo from pod $name: $body"
import json, sys
b, pod, ns = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
assert b["path"] == "/smoke?x=1", b
assert b["pod"] == pod, (b["pod"], pod)
assert b["namespace"] == ns, b
PY
  seen_ips+=("$ip")
  log "pod $name at $ip echoes correctly"
done
[[ ${seen_ips[0]} != "${seen_ips[1]}" ]] || die "both pods got the same IP"

lb=""
wait_for "LoadBalancer address of service echo" 30 \
  bash -c "kubectl -n $NS get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}' | grep -q ." \
  || die "service echo got no LoadBalancer address"
lb=$(kubectl -n "$NS" get svc echo -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
declare -A hits=()
for i in $(seq 1 6); do
  body=$(curl -sS --max-time 5 "http://$lb:8080/lb") || die "curl to LoadBalancer $lb:8080 failed"
  pod=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pod"])' "$body")
  hits[$pod]=1
done
((${#hits[@]} == 2)) || die "LoadBalancer $lb reached ${!hits[*]} only, expected both pods"
log "LoadBalancer $lb:8080 reaches both pods"

# Container logs through the API server -> kubelet API path, with sinceTime
# (the conformance mirror tests count log lines since a time).
read -r first first_ip <<<"${pods[0]}"
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sleep 1.1   # sinceTime has one-second resolution
curl -sS --max-time 5 "http://$first_ip:3000/logged-after" >/dev/null || die "curl to $first_ip failed"
logs_have() { kubectl -n "$NS" logs "$first" --since-time="$since" | grep -q "$1"; }
wait_for "the request in the logs of $first" 10 logs_have /logged-after || die "kubectl logs --since-time lacks the request"
if logs_have /smoke; then die "kubectl logs --since-time returned lines older than $since"; fi
log "kubectl logs works (with --since-time)"

# A failing container is restarted (restartPolicy Always), with the previous
# instance's logs kept. Image e2e.local/host runs host commands.
kubectl -n "$NS" apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - name: c
    image: e2e.local/host
    command: [sh, -c, 'echo "run at $(date +%s%N)"; exit 3']
YAML
restarted_twice() { (( $(kubectl -n "$NS" get pod crasher -o jsonpath='{.status.containerStatuses[0].restartCount}' || echo 0) >= 2 )); }
wait_for "pod crasher to be restarted twice" 20 restarted_twice \
  || { kubectl -n "$NS" get pod crasher -o yaml >&2; die "a failing container was not restarted"; }
kubectl -n "$NS" logs crasher --previous | grep -q '^run at ' || die "kubectl logs --previous lacks the previous run"
code=$(kubectl -n "$NS" get pod crasher -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')
[[ $code == 3 ]] || die "lastState of the crashing container has exit code '$code', expected 3"
kubectl -n "$NS" delete pod crasher --wait=false >/dev/null
log "failed containers are restarted (exit code and previous logs reported)"

# Pods that go away take their processes and addresses with them.
kubectl -n "$NS" scale deployment echo --replicas=0 >/dev/null
no_echo_pods() { [[ -z $(kubectl -n "$NS" get pods -l app=echo -o name) ]]; }
wait_for "echo pods to be deleted" 60 no_echo_pods \
  || { kubectl -n "$NS" get pods -o wide >&2; die "echo pods were not deleted within 60s"; }
for line in "${pods[@]}"; do
  read -r _ ip <<<"$line"
  if curl -s --max-time 1 "http://$ip:3000/" >/dev/null; then die "pod at $ip still answers after deletion"; fi
done
kubectl delete namespace "$NS" --wait=false >/dev/null
log "smoke test passed"
