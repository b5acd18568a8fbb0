#!/usr/bin/env bash
# Builds the node agent (its own cargo workspace, shared target dir).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$E2E_DIR/node-agent"
# Output on stderr: shows "Blocking waiting for file lock" when another build
# holds the shared target dir.
"${NICE[@]}" cargo build --release --locked >&2
echo "$CARGO_TARGET_DIR/release/e2e-node-agent"
