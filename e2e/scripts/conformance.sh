#!/usr/bin/env bash
# Runs the official Gateway API conformance suite (the version pinned in
# e2e/conformance/go.mod, the same as the CRDs and echo-basic) against the e2e
# cluster, and writes the report to e2e/reports/. Needs `source STATE/env`,
# and the controller deployed with its GatewayClass Accepted.
#
#   E2E_GATEWAY_CLASS        GatewayClass to test (default portcullis)
#   E2E_CONFORMANCE_PROFILES default GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS
#   E2E_SUPPORTED_FEATURES   comma-separated extended features to test (default: supported-features.txt)
#   E2E_CONFORMANCE_ARGS     more suite flags, e.g. --run-test=HTTPRouteSimpleSameNamespace
set -euo pipefail
source "$(dirname "$0")/lib.sh"
: "${KUBECONFIG:?source the cluster env first}"
CLASS=${E2E_GATEWAY_CLASS:-portcullis}
PROFILES=${E2E_CONFORMANCE_PROFILES:-GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS}
FEATURES=${E2E_SUPPORTED_FEATURES:-$(claimed_features)}

accepted() {
  [[ $(kubectl get gatewayclass "$CLASS" -o jsonpath='{.status.conditions[?(@.type=="Accepted")].status}' 2>/dev/null) == True ]]
}
wait_for "GatewayClass $CLASS Accepted" 60 accepted \
  || die "GatewayClass $CLASS is not Accepted: deploy the controller before the conformance suite"

cd "$E2E_DIR/conformance"
ver=$(go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance)
mkdir -p "$E2E_DIR/reports"
report="$E2E_DIR/reports/gateway-api-$ver-$(echo "$PROFILES" | tr ',' '_' | tr '[:upper:]' '[:lower:]').yaml"
log "conformance $ver, profiles $PROFILES, class $CLASS, features: ${FEATURES:-none}"
# shellcheck disable=SC2086
"${NICE[@]}" go test -count=1 -timeout 45m -run '^TestConformance$' . -args \
  --gateway-class="$CLASS" --conformance-profiles="$PROFILES" --supported-features="$FEATURES" \
  --organization=portcullis --project=portcullis --url=https://portcullis.dev \
  --version="${E2E_VERSION:-dev}" --contact=maintainers \
  --report-output="$report.tmp" ${E2E_CONFORMANCE_ARGS:-}
mv "$report.tmp" "$report"
log "report: $report"
