#!/usr/bin/env bash
# Rate-limit overhead: one portcullis in front of the echo backend, the same
# route three times: without limits, with a local limit that never trips
# and with a global limit (real redis-server) that never trips. wrk at 64
# keep-alive connections, alternating the three in ROUNDS rounds; prints
# requests/s, p99 and each limited route's throughput ratio to the
# unlimited one (targets: local >= 0.95, global >= 0.8). All clients share
# one client IP, so every request hits the same counter (the worst case for
# contention). No pass/fail: the machine is shared and noisy.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}

echo_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port); redis_port=$(free_port)

redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
"$BIN" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" &
pids+=($!)
wait_port "$redis_port"

mkdir -p "$work/config"
sed -e "s/__GW_PORT__/$gw_port/" -e "s/__ECHO_PORT__/$echo_port/" -e "s/__REDIS_PORT__/$redis_port/" \
  bench/ratelimit.yaml >"$work/config/bench.yaml"
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/config" --bind 127.0.0.1 --admin "127.0.0.1:$admin_port" 2>"$work/portcullis.log" &
pids+=($!)
wait_port "$echo_port"; wait_port "$gw_port"

gw_pid=${pids[2]}
tick_us=$(awk -v t="$(getconf CLK_TCK)" 'BEGIN{print 1000000 / t}')

# One run: prints "<requests/s> <p99 in ms> <non-2xx count> <gateway CPU
# µs per request>". CPU per request is the steadier figure on a busy
# machine: it does not depend on how much CPU the other processes leave us.
measure() {
  local out rps p99 bad before after requests
  before=$(cpu_ticks "$gw_pid")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $1.example.com" "http://127.0.0.1:$gw_port/bench")
  after=$(cpu_ticks "$gw_pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $(to_ms "$p99") ${bad:-0} $(awk -v t=$((after - before)) -v u="$tick_us" -v n="$requests" 'BEGIN{printf "%.1f", t * u / n}')"
}

for h in none local global; do
  wrk -t1 -c8 -d1s -H "Host: $h.example.com" "http://127.0.0.1:$gw_port/bench" >/dev/null
done

printf '\nHTTP/1.1 keep-alive, %s connections, %s per run, %s rounds, %s workers\n' \
  "$CONNECTIONS" "$DURATION" "$ROUNDS" "$WORKERS"
printf '%-6s %13s %7s %7s %13s %7s %7s %13s %7s %7s %7s %7s\n' round 'no limit rps' 'p99 ms' 'cpu us' \
  'local rps' 'p99 ms' 'cpu us' 'global rps' 'p99 ms' 'cpu us' 'local' 'global'
local_ratios=(); global_ratios=(); n_cpus=(); l_cpus=(); g_cpus=()
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so that neither drift in the background
  # load nor warm-up favours one route.
  order=(none local global)
  for ((i = 0; i < (round - 1) % 3; i++)); do order=("${order[@]:1}" "${order[0]}"); done
  for h in "${order[@]}"; do
    case $h in
      none) read -r n_rps n_p99 n_bad n_cpu <<<"$(measure none)" ;;
      local) read -r l_rps l_p99 l_bad l_cpu <<<"$(measure local)" ;;
      global) read -r g_rps g_p99 g_bad g_cpu <<<"$(measure global)" ;;
    esac
  done
  if [ "$n_bad$l_bad$g_bad" != "000" ]; then
    echo "non-2xx answers (none/local/global): $n_bad/$l_bad/$g_bad" >&2
  fi
  lr=$(awk -v a="$l_rps" -v b="$n_rps" 'BEGIN{printf "%.2f", a/b}')
  gr=$(awk -v a="$g_rps" -v b="$n_rps" 'BEGIN{printf "%.2f", a/b}')
  local_ratios+=("$lr"); global_ratios+=("$gr"); n_cpus+=("$n_cpu"); l_cpus+=("$l_cpu"); g_cpus+=("$g_cpu")
  printf '%-6s %13s %7s %7s %13s %7s %7s %13s %7s %7s %7s %7s\n' "$round" "$n_rps" "$n_p99" "$n_cpu" \
    "$l_rps" "$l_p99" "$l_cpu" "$g_rps" "$g_p99" "$g_cpu" "$lr" "$gr"
done
echo "median throughput ratio to no limit: local $(median "${local_ratios[@]}"), global $(median "${global_ratios[@]}")"
nc=$(median "${n_cpus[@]}"); lc=$(median "${l_cpus[@]}"); gc=$(median "${g_cpus[@]}")
echo "median gateway CPU per request: no limit ${nc} us, local ${lc} us, global ${gc} us;" \
  "throughput at equal CPU: local $(awk -v a="$nc" -v b="$lc" 'BEGIN{printf "%.2f", a/b}'), global $(awk -v a="$nc" -v b="$gc" 'BEGIN{printf "%.2f", a/b}')"
echo "redis CPU over the whole run: $(awk -v t="$(cpu_ticks "${pids[0]}")" -v u="$tick_us" 'BEGIN{printf "%.2f", t * u / 1000000}') s"
