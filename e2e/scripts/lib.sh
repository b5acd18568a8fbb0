# Shared helpers for the e2e scripts. Source, don't run.
# shellcheck shell=bash

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
# Built binaries live outside the checkout so that every clone on the machine
# (and CI's fresh clone) shares them; they are keyed by the pins.
E2E_CACHE="${E2E_CACHE:-/var/tmp/portcullis-e2e}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/portcullis-target}"

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[e2e %s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; exit 1; }

# now_ms: monotonic-ish wall clock in milliseconds.
now_ms() { date +%s%3N; }

# phase NAME CMD...: run CMD, print the wall time of the phase.
PHASE_TIMES=()
phase() {
  local name=$1; shift
  local t0; t0=$(now_ms)
  log "phase $name: start"
  local rc=0
  "$@" || rc=$?
  local dt=$(( $(now_ms) - t0 ))
  local secs="$((dt / 1000)).$(( (dt % 1000) / 100 ))"
  PHASE_TIMES+=("$(printf '%-30s %8ss  %s' "$name" "$secs" "$([ $rc = 0 ] && echo ok || echo FAILED)")")
  log "phase $name: $([ $rc = 0 ] && echo done || echo FAILED) in ${secs}s"
  return $rc
}
print_phase_times() {
  local l
  echo "---- e2e phase wall times ----" >&2
  for l in "${PHASE_TIMES[@]}"; do echo "  $l" >&2; done
}

# wait_for DESC TIMEOUT_S CMD...: poll CMD every 0.2s until it succeeds.
wait_for() {
  local desc=$1 timeout=$2; shift 2
  local deadline=$(( $(now_ms) + timeout * 1000 ))
  until "$@" >/dev/null 2>&1; do
    if (( $(now_ms) > deadline )); then
      log "timed out after ${timeout}s waiting for: $desc"
      return 1
    fi
    sleep 0.2
  done
}

# Heavy builds share 2 cores with everything else.
NICE=(nice -n 15)

# The extended features we claim, comma-separated (supported-features.txt).
claimed_features() { grep -v '^#' "$E2E_DIR/supported-features.txt" | grep -v '^$' | paste -sd, -; }

# The echo backend of the e2e tests: Deployment `echo` (label app=echo) of
# the conformance suite's echo-basic image on port 3000, answering JSON with
# its pod and namespace. echo_deployment_yaml REPLICAS prints its YAML.
echo_deployment_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, labels: {app: echo}}
spec:
  replicas: $1
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
YAML
}

# Conditions of objects in the caller's namespace $NS:
# cond KIND NAME JSONPATH-TO-CONDITIONS TYPE prints the condition's status,
# reason (same arguments) its reason; is_true CMD... holds when CMD prints True.
cond() { kubectl -n "$NS" get "$1" "$2" -o jsonpath="{$3[?(@.type==\"$4\")].status}" 2>/dev/null; }
reason() { kubectl -n "$NS" get "$1" "$2" -o jsonpath="{$3[?(@.type==\"$4\")].reason}" 2>/dev/null; }
is_true() { [[ $("$@") == True ]]; }

# Service `echo` (port 8080 to the echo pods' 3000) and HTTPRoute `echo`
# (one rule named `main`) on Gateway `gw`, as YAML documents.
echo_route_yaml() {
  cat <<'YAML'
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
  - name: main
    backendRefs: [{name: echo, port: 8080}]
YAML
}

# Waits until Gateway `gw` in $NS has its proxy provisioned and rolled out,
# an address, and serves http://ADDR:8080/; sets ADDR.
gateway_serving() {
  wait_for "proxy Deployment" 60 kubectl -n "$NS" get deployment gw-portcullis \
    || die "no proxy Deployment provisioned"
  kubectl -n "$NS" rollout status deployment/gw-portcullis --timeout=90s >&2 \
    || { kubectl -n "$NS" get deploy,pods -o wide >&2; die "proxy Deployment not available"; }
  address() { kubectl -n "$NS" get gateway gw -o jsonpath='{.status.addresses[0].value}'; }
  has_address() { [[ -n $(address) ]]; }
  wait_for "Gateway address" 60 has_address || die "no Gateway address"
  ADDR=$(address)
  served() { curl -sf --max-time 2 "http://$ADDR:8080/" >/dev/null; }
  wait_for "traffic through the Gateway" 90 served || die "no traffic through $ADDR"
}
