#!/usr/bin/env bash
# Installs the system packages a make target needs, only when missing.
# Usage: install-deps.sh bench|test|fuzz
set -euo pipefail

need=()
case "${1:-}" in
  bench) cmds=(wrk:wrk nginx:nginx-light haproxy:haproxy h2load:nghttp2-client curl:curl redis-server:redis-server openssl:openssl python3:python3) ;;
  test) cmds=(curl:curl redis-server:redis-server) ;;
  # libFuzzer (built by libfuzzer-sys) is C++.
  fuzz) cmds=(c++:g++) ;;
  *) echo "usage: $0 bench|test|fuzz" >&2; exit 2 ;;
esac
for pair in "${cmds[@]}"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing: ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
