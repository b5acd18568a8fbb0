#!/usr/bin/env bash
# Config churn under load: CHANGES route changes (default 1,000) written to
# the standalone gateway's config directory while wrk drives keep-alive
# load through the very route being changed. Each change waits until the
# gateway serves it (portcullis_config_generation moves), so every one is
# a real reload: compile, table swap, listener reconcile. Prints requests,
# errors and latency percentiles without churn and during it; the goal is
# zero failed requests and a p99 close to the steady one.
#
#   DURATION=15s CHANGES=1000 CONNECTIONS=64 THREADS=2 WORKERS=2 bench/churn.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-15s}
CHANGES=${CHANGES:-1000}
CONNECTIONS=${CONNECTIONS:-64}

echo_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port)
HOST='bench.example.com'
"$BIN" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" &
pids+=($!)
mkdir -p "$work/config"
sed -e "s/__GW_PORT__/$gw_port/" -e "s/__ECHO_PORT__/$echo_port/" bench/config.yaml >"$work/config/bench.yaml"

# Change N: the route under load (/bench/churn) gets a new header value,
# and a second route comes or goes, so the routes of the host change too.
write_change() {
  local n=$1 extra=""
  if (( n % 2 == 0 )); then
    extra="
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra-$((n % 50)), namespace: default}
spec:
  parentRefs: [{name: bench}]
  hostnames: [$HOST]
  rules:
  - matches: [{path: {type: PathPrefix, value: /extra/$n}}]
    backendRefs: [{name: echo, port: 80}]"
  fi
  cat >"$work/churn.tmp" <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: churn, namespace: default}
spec:
  parentRefs: [{name: bench}]
  hostnames: [$HOST]
  rules:
  - matches: [{path: {type: PathPrefix, value: /bench/churn}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-churn, value: "$n"}]}
    backendRefs: [{name: echo, port: 80}]$extra
YAML
  # Rename: the watcher never sees a half-written file.
  mv "$work/churn.tmp" "$work/config/churn.yaml"
}
write_change 0

TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/config" --bind 127.0.0.1 \
  --admin "127.0.0.1:$admin_port" 2>"$work/portcullis.log" &
pids+=($!)
wait_port "$echo_port"; wait_port "$gw_port"; wait_port "$admin_port"

# The generation being served ("" when the admin listener did not answer:
# the caller just polls again).
generation() {
  { curl -sf --max-time 2 "http://127.0.0.1:$admin_port/metrics" || true; } |
    awk '/^portcullis_config_generation / {print $2}'
}

url="http://127.0.0.1:$gw_port/bench/churn"
wrk -t1 -c8 -d2s -H "Host: $HOST" "$url" >/dev/null

# "<requests> <errors> <p50 ms> <p99 ms> <p99.9 ms> <req/s>"
result() {
  awk '$1=="RESULT" {printf "%d %d %.3f %.3f %.3f %.0f\n", $2, $3, $4/1000, $5/1000, $6/1000, $2/($7/1e6)}' "$1"
}

wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/latency.lua -H "Host: $HOST" "$url" >"$work/steady.txt"
read -r s_req s_err s_p50 s_p99 s_p999 s_rps < <(result "$work/steady.txt")

# Load for as long as the changes take: wrk stops and reports on SIGINT.
wrk -t"$THREADS" -c"$CONNECTIONS" -d600s -s bench/latency.lua -H "Host: $HOST" "$url" >"$work/churn.txt" &
wrk_pid=$!
sleep 1
start=$(date +%s.%N)
applied=0
for n in $(seq 1 "$CHANGES"); do
  before=$(generation)
  write_change "$n"
  # Bounded wait for the reload (debounced in milliseconds).
  for _ in $(seq 1 500); do
    now=$(generation)
    if [[ -n $now && $now != "$before" ]]; then applied=$((applied + 1)); break; fi
    sleep 0.01
  done
  (( n % 100 == 0 )) && echo "[churn] $n changes written, $applied served" >&2
done
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
kill -INT "$wrk_pid"
wait "$wrk_pid" || true
read -r c_req c_err c_p50 c_p99 c_p999 c_rps < <(result "$work/churn.txt")

printf '\nconfig churn: %d of %d route changes served in %s s under wrk -c%d (%d workers)\n' \
  "$applied" "$CHANGES" "$elapsed" "$CONNECTIONS" "$WORKERS"
printf '%-14s %10s %8s %9s %9s %9s %10s\n' phase requests errors 'p50 ms' 'p99 ms' 'p99.9 ms' 'req/s'
printf '%-14s %10s %8s %9s %9s %9s %10s\n' steady "$s_req" "$s_err" "$s_p50" "$s_p99" "$s_p999" "$s_rps"
printf '%-14s %10s %8s %9s %9s %9s %10s\n' 'during churn' "$c_req" "$c_err" "$c_p50" "$c_p99" "$c_p999" "$c_rps"
printf 'p99 during churn / steady: %s x; failed requests during churn: %s\n' \
  "$(awk -v a="$c_p99" -v b="$s_p99" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')" "$c_err"
