#!/usr/bin/env bash
# Builds the Gateway API conformance echo server (echo-basic) from the
# gateway-api conformance module pinned in e2e/conformance, cached by the pin.
# Prints the binary's path.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
MOD="$E2E_DIR/conformance"
RECIPE=1   # bump when the build command below changes
key=$( { cat "$MOD/go.mod" "$MOD/go.sum"; echo "recipe $RECIPE"; go version; } | sha256sum | cut -c1-16)
out="$E2E_CACHE/bin/echo-basic-$key/echo-basic"
if [[ -x $out ]]; then
  touch "$(dirname "$out")"
else
  log "building echo-basic (gateway-api conformance $(cd "$MOD" && go list -m -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance))"
  mkdir -p "$(dirname "$out")"
  (cd "$MOD" && CGO_ENABLED=0 "${NICE[@]}" go build -trimpath -ldflags "-s -w" -o "$out.tmp" sigs.k8s.io/gateway-api/conformance/echo-basic)
  mv "$out.tmp" "$out"
fi
echo "$out"
