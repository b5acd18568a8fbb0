#!/usr/bin/env bash
# Builds the node agent (its own cargo workspace, shared target dir).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$E2E_DIR/node-agent"
"${NICE[@]}" cargo build --release --locked --quiet 2>&1 || "${NICE[@]}" cargo build --release --locked
echo "$CARGO_TARGET_DIR/release/e2e-node-agent"
