#!/usr/bin/env bash
# GatewayParameters `spec.observability` reaches the provisioned proxies:
#   - the access log keeps exactly the fields chosen, in `kubectl logs` of
#     the proxy pod, one JSON object per request, with the caller's trace id;
#   - spans are exported over OTLP/HTTP to the endpoint named (a small
#     collector on the host end of the cluster bridge, reachable from pods),
#     under the service name set.
# Needs `source STATE/env` and the release binary.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
NS=e2e-observe
HOST_ADDR=198.18.0.1 # host end of the bridge (scripts/cluster.sh)

work=$(mktemp -d)
collector_pid=
cleanup() {
  [[ -n $collector_pid ]] && kill "$collector_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The OTLP collector: appends every POSTed body (one per line) to
# $work/spans and answers 200; stops by itself after 10 minutes.
cat >"$work/collector.py" <<'PY'
import http.server, sys, threading
out, port_file = sys.argv[1], sys.argv[2]
class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(out, "ab") as f:
            f.write(self.path.encode() + b" " + body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((sys.argv[3], 0), Collector)
open(port_file, "w").write(str(server.server_address[1]))
threading.Timer(600, server.shutdown).start()
server.serve_forever()
PY
python3 "$work/collector.py" "$work/spans" "$work/port" "$HOST_ADDR" &
collector_pid=$!
has_port() { [[ -s $work/port ]]; }
wait_for "OTLP collector" 10 has_port || die "the OTLP collector did not start"
COLLECTOR=http://$HOST_ADDR:$(cat "$work/port")

bash "$E2E_DIR/scripts/deploy-controller.sh"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
{ echo_deployment_yaml 1; cat <<YAML; echo_route_yaml; } | kubectl apply -n "$NS" -f - >/dev/null
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayParameters
metadata: {name: observed}
spec:
  observability:
    accessLog: stdout
    accessLogFields: [trace_id, method, path, status, route]
    otlpEndpoint: $COLLECTOR
    otlpServiceName: e2e-edge
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: portcullis
  infrastructure:
    parametersRef: {group: portcullis.dev, kind: GatewayParameters, name: observed}
  listeners: [{name: http, port: 8080, protocol: HTTP}]
YAML

gateway_serving
args=$(kubectl -n "$NS" get deployment gw-portcullis -o jsonpath='{.spec.template.spec.containers[0].args}')
grep -q -- "--otlp-endpoint=$COLLECTOR" <<<"$args" || die "observability not rendered into the proxy flags: $args"

trace=4bf92f3577b34da6a3ce929d0e0e4736
curl -sf --max-time 2 -H "traceparent: 00-$trace-00f067aa0ba902b7-01" \
  "http://$ADDR:8080/observe-me" >/dev/null || die "request through the Gateway failed"

log "access log: exactly the chosen fields, in kubectl logs"
access_line() {
  kubectl -n "$NS" logs deployment/gw-portcullis 2>/dev/null | grep -F '"path":"/observe-me"' | tail -1
}
has_line() { [[ -n $(access_line) ]]; }
wait_for "access log line" 30 has_line \
  || { kubectl -n "$NS" logs deployment/gw-portcullis --tail=20 >&2 || true; die "no access log line for /observe-me"; }
line=$(access_line)
python3 - "$line" "$trace" <<'PY' || die "access log line not as configured: $line"
import json, sys
entry, trace = json.loads(sys.argv[1]), sys.argv[2]
assert list(entry) == ["trace_id", "method", "path", "status", "route"], list(entry)
assert entry["trace_id"] == trace, entry
assert entry["status"] == 200 and entry["method"] == "GET", entry
assert entry["route"].startswith("httproute/e2e-observe/echo"), entry
PY
log "access log: $line"

log "traces: a span of the caller's trace reaches the collector"
exported() { grep -q "$trace" "$work/spans" 2>/dev/null; }
wait_for "span exported" 30 exported \
  || { kubectl -n "$NS" logs deployment/gw-portcullis --tail=20 >&2 || true; die "no span with trace $trace reached $COLLECTOR"; }
span=$(grep "$trace" "$work/spans" | head -1)
[[ $span == /v1/traces* ]] || die "span posted to the wrong path: ${span:0:80}"
grep -q '"e2e-edge"' <<<"$span" || die "span without service.name e2e-edge: ${span:0:400}"
log "span exported to $COLLECTOR/v1/traces as service e2e-edge"

kubectl delete namespace "$NS" --wait=false >/dev/null
kubectl -n portcullis-system delete deployment portcullis-controller --wait=false >/dev/null
log "observe e2e: ok"
