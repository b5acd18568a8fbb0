#!/usr/bin/env bash
# The controller end to end (issue 3): RBAC, statuses, provisioning, traffic,
# route change, leader failover, the Rust API-server tests. See
# tests-controller/README.md.
set -euo pipefail
exec bash "$(dirname "$0")/../tests-controller/controller.sh"
