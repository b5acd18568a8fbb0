#!/usr/bin/env bash
# Our policy CRDs applied with kubectl take effect through a provisioned
# proxy and report it in status.ancestors:
#   - BackendPolicy on a Service: a session cookie pins a client to one
#     echo pod; a policy on a missing Service is Accepted=False
#     TargetNotFound and changes nothing else;
#   - RateLimitPolicy on a named route rule: a local limit of 3 per minute
#     per client header answers the 4th request 429 with Retry-After,
#     other clients unaffected;
#   - AuthPolicy (JWT, RS256, inline JWKS) on a second route: 401 with
#     WWW-Authenticate without a token, 200 with one, 401 with a forged
#     one; the first route stays open;
#   - AuthPolicy (API keys from labelled Opaque Secrets) on a third route:
#     401 without a key, 200 with it, and the key never reaches the pod.
# Needs `source STATE/env` and the release binary.
set -euo pipefail
source "$(dirname "$0")/../scripts/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
NS=e2e-policies

bash "$E2E_DIR/scripts/deploy-controller.sh"
for crd in backendpolicies ratelimitpolicies authpolicies; do
  kubectl wait --for=condition=Established --timeout=30s "crd/$crd.portcullis.dev" >/dev/null \
    || die "CRD $crd.portcullis.dev not established"
done

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
{ echo_deployment_yaml 3; cat <<'YAML'; echo_route_yaml; } | kubectl apply -n "$NS" -f - >/dev/null
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: portcullis
  listeners: [{name: http, port: 8080, protocol: HTTP}]
YAML

wait_for "HTTPRoute Accepted" 60 is_true cond httproute echo '.status.parents[0].conditions' Accepted \
  || { kubectl -n "$NS" get gateway,httproute -o yaml >&2; die "HTTPRoute not Accepted"; }
kubectl -n "$NS" rollout status deployment/echo --timeout=90s >&2 || die "echo not available"
gateway_serving

log "BackendPolicy: a session cookie pins a client to one pod"
kubectl apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: sticky}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  loadBalancer:
    type: RoundRobin
    sessionPersistence: {cookieName: e2e-session}
---
apiVersion: portcullis.dev/v1alpha1
kind: BackendPolicy
metadata: {name: orphan}
spec:
  targetRefs: [{group: "", kind: Service, name: no-such-service}]
  loadBalancer: {type: Random}
YAML
ancestor='.status.ancestors[0].conditions'
wait_for "BackendPolicy sticky Accepted" 60 is_true cond backendpolicy sticky "$ancestor" Accepted \
  || { kubectl -n "$NS" get backendpolicy sticky -o yaml >&2; die "BackendPolicy sticky not Accepted"; }
not_found() { [[ $(reason backendpolicy orphan "$ancestor" Accepted) == TargetNotFound ]]; }
wait_for "BackendPolicy orphan TargetNotFound" 60 not_found \
  || { kubectl -n "$NS" get backendpolicy orphan -o yaml >&2; die "BackendPolicy orphan not reported TargetNotFound"; }

cookie_jar=$(mktemp); trap 'rm -f "$cookie_jar"' EXIT
has_cookie() { # the proxy has the policy: it hands out the session cookie
  rm -f "$cookie_jar"
  curl -sf --max-time 2 -c "$cookie_jar" "http://$ADDR:8080/" >/dev/null && grep -q e2e-session "$cookie_jar"
}
wait_for "session cookie handed out" 60 has_cookie \
  || { curl -sv --max-time 2 "http://$ADDR:8080/" >&2 || true; die "no session cookie: BackendPolicy not in effect"; }
pod() { curl -sf --max-time 2 "$@" "http://$ADDR:8080/" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pod"])'; }
first=$(pod -b "$cookie_jar")
for _ in $(seq 1 12); do
  p=$(pod -b "$cookie_jar")
  [[ $p == "$first" ]] || die "session cookie did not pin the client: $first then $p"
done
pods=$(for _ in $(seq 1 12); do pod; done | sort -u | wc -l)
((pods > 1)) || die "without the cookie, requests should spread over the pods (saw $pods)"
log "12 requests with the cookie all reached $first; without it $pods pods answered"

log "RateLimitPolicy: 3 requests per minute per client on rule main"
kubectl apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-client}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: echo, sectionName: main}]
  responseHeaders: Draft
  limits:
    per-client:
      rates: [{limit: 3, window: 1m}]
      key: [{type: Header, name: x-e2e-client}]
YAML
wait_for "RateLimitPolicy Accepted" 60 is_true cond ratelimitpolicy per-client "$ancestor" Accepted \
  || { kubectl -n "$NS" get ratelimitpolicy per-client -o yaml >&2; die "RateLimitPolicy not Accepted"; }
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "x-e2e-client: $1" "http://$ADDR:8080/"; }
limited() { # the proxy has the policy: a probe client's 4th request is refused
  local probe="probe-$RANDOM$RANDOM"
  for _ in 1 2 3; do status_of "$probe" >/dev/null; done
  [[ $(status_of "$probe") == 429 ]]
}
wait_for "rate limit in effect" 60 limited \
  || { curl -sv --max-time 2 -H 'x-e2e-client: x' "http://$ADDR:8080/" >&2 || true; die "RateLimitPolicy not in effect"; }
codes=$(for _ in 1 2 3 4; do status_of alice; echo -n ' '; done)
[[ $codes == "200 200 200 429 " ]] || die "alice: expected 200 200 200 429, got $codes"
headers=$(curl -s -D - -o /dev/null --max-time 2 -H 'x-e2e-client: alice' "http://$ADDR:8080/")
grep -qi '^retry-after: [0-9]' <<<"$headers" || die "429 without Retry-After: $headers"
[[ $(status_of bob) == 200 ]] || die "bob was limited by alice's counter"
log "alice: $codes; 429 carries Retry-After; bob unaffected"

log "AuthPolicy: JWT (RS256, inline JWKS) on route private"
jwt_dir=$(mktemp -d); trap 'rm -f "$cookie_jar"; rm -rf "$jwt_dir"' EXIT
openssl genrsa -out "$jwt_dir/key.pem" 2048 2>/dev/null
openssl genrsa -out "$jwt_dir/other.pem" 2048 2>/dev/null
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
jwks=$(python3 - "$(openssl rsa -in "$jwt_dir/key.pem" -noout -modulus 2>/dev/null | cut -d= -f2)" <<'PY'
import base64, json, sys
n = bytes.fromhex(sys.argv[1])
b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
print(json.dumps({"keys": [{"kty": "RSA", "kid": "e2e", "alg": "RS256", "use": "sig", "n": b(n), "e": b((65537).to_bytes(3, "big"))}]}))
PY
)
token() { # token KEY: a JWT for alice signed with KEY
  local h p
  h=$(printf '{"alg":"RS256","typ":"JWT","kid":"e2e"}' | b64url)
  p=$(printf '{"iss":"https://issuer.e2e","aud":"e2e","sub":"alice","exp":%d}' $(( $(date +%s) + 600 )) | b64url)
  printf '%s.%s.%s' "$h" "$p" "$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$1" | b64url)"
}
good=$(token "$jwt_dir/key.pem"); forged=$(token "$jwt_dir/other.pem")
kubectl apply -n "$NS" -f - >/dev/null <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: private}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /private}}]
    backendRefs: [{name: echo, port: 8080}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: jwt}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: private}]
  jwt:
    providers:
    - name: e2e
      issuer: https://issuer.e2e
      audiences: [e2e]
      jwks: {inline: '$jwks'}
YAML
wait_for "AuthPolicy Accepted" 60 is_true cond authpolicy jwt "$ancestor" Accepted \
  || { kubectl -n "$NS" get authpolicy jwt -o yaml >&2; die "AuthPolicy not Accepted"; }
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@"; }
protected() { [[ $(code "http://$ADDR:8080/private/x") == 401 ]]; }
wait_for "AuthPolicy in effect" 60 protected \
  || { curl -sv --max-time 2 "http://$ADDR:8080/private/x" >&2 || true; die "AuthPolicy not in effect"; }
curl -s -D - -o /dev/null --max-time 2 "http://$ADDR:8080/private/x" | grep -qi '^www-authenticate: Bearer' \
  || die "401 without WWW-Authenticate: Bearer"
[[ $(code -H "Authorization: Bearer $good" "http://$ADDR:8080/private/x") == 200 ]] || die "a valid token was refused"
[[ $(code -H "Authorization: Bearer $forged" "http://$ADDR:8080/private/x") == 401 ]] || die "a token signed with another key was accepted"
[[ $(code -H 'x-e2e-client: carol' "http://$ADDR:8080/open") == 200 ]] || die "the route without AuthPolicy is no longer open"
log "no token 401 (WWW-Authenticate: Bearer), valid token 200, forged token 401, other route open"

log "AuthPolicy: API key from a labelled Secret on route keyed"
kubectl apply -n "$NS" -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Secret
metadata:
  name: key-mobile
  labels: {e2e.portcullis.dev/api-key: "true"}
  annotations: {portcullis.dev/consumer: mobile}
stringData: {api_key: e2e-key-0123456789abcdef}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: keyed}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /keyed}}]
    backendRefs: [{name: echo, port: 8080}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthPolicy
metadata: {name: keys}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: keyed}]
  apiKeys:
    selector: {matchLabels: {e2e.portcullis.dev/api-key: "true"}}
    header: x-api-key
YAML
wait_for "AuthPolicy keys Accepted" 60 is_true cond authpolicy keys "$ancestor" Accepted \
  || { kubectl -n "$NS" get authpolicy keys -o yaml >&2; die "AuthPolicy keys not Accepted"; }
key_ok() { [[ $(code -H 'x-api-key: e2e-key-0123456789abcdef' "http://$ADDR:8080/keyed/x") == 200 ]]; }
wait_for "the API key from the Secret is accepted" 60 key_ok \
  || { curl -sv --max-time 2 -H 'x-api-key: e2e-key-0123456789abcdef' "http://$ADDR:8080/keyed/x" >&2 || true
       die "the API key Secret did not reach the proxy"; }
[[ $(code "http://$ADDR:8080/keyed/x") == 401 ]] || die "no key must be 401"
[[ $(code -H 'x-api-key: e2e-key-0123456789abcdefX' "http://$ADDR:8080/keyed/x") == 401 ]] || die "a wrong key must be 401"
echoed=$(curl -sf --max-time 2 -H 'x-api-key: e2e-key-0123456789abcdef' "http://$ADDR:8080/keyed/x")
grep -qi 'e2e-key-0123456789abcdef' <<<"$echoed" && die "the API key reached the backend: $echoed"
log "API key: 200 with the key (stripped before the pod), 401 without or wrong"

kubectl delete namespace "$NS" --wait=false >/dev/null
kubectl -n portcullis-system delete deployment portcullis-controller --wait=false >/dev/null
log "policies e2e: ok"
