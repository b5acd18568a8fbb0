#!/usr/bin/env bash
# Load benchmark: portcullis vs nginx in front of the same echo backend,
# same worker count, wrk at 64 connections. Prints requests/s and p99 for
# both and the ratio. No pass/fail: the machine is shared and noisy, compare
# the ratio within one run.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/portcullis-target}/release/portcullis}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-$(nproc)}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
# nginx runs with access_log off; so does portcullis unless asked otherwise.
export PORTCULLIS_ACCESS_LOG=${PORTCULLIS_ACCESS_LOG:-off}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() {
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}

echo_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port); nginx_port=$(free_port)

"$BIN" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" &
pids+=($!)

mkdir -p "$work/config"
sed -e "s/__GW_PORT__/$gw_port/" -e "s/__ECHO_PORT__/$echo_port/" bench/config.yaml >"$work/config/bench.yaml"
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/config" --bind 127.0.0.1 --admin "127.0.0.1:$admin_port" 2>"$work/portcullis.log" &
pids+=($!)

cat >"$work/nginx.conf" <<NGINX
worker_processes $WORKERS;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream echo { server 127.0.0.1:$echo_port; keepalive 128; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' 2>"$work/nginx.log" &
pids+=($!)

wait_port "$echo_port"; wait_port "$gw_port"; wait_port "$nginx_port"

# One run: prints "<requests/s> <p99 in ms>".
measure() {
  local out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H 'Host: bench.example.com' "http://127.0.0.1:$1/bench")
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  if grep -q 'Non-2xx' <<<"$out"; then echo "non-2xx answers from port $1:" >&2; grep 'Non-2xx' <<<"$out" >&2; fi
  echo "$rps $(to_ms "$p99")"
}
to_ms() {
  local v=$1
  case "$v" in
    *us) awk -v x="${v%us}" 'BEGIN{printf "%.3f", x/1000}' ;;
    *ms) awk -v x="${v%ms}" 'BEGIN{printf "%.3f", x}' ;;
    *s) awk -v x="${v%s}" 'BEGIN{printf "%.3f", x*1000}' ;;
    *) echo "$v" ;;
  esac
}

# Warm up both, then measure in alternating rounds so that a burst of
# background load hits both proxies alike; the ratio of each round is
# printed and the median ratio summarizes.
wrk -t1 -c8 -d2s -H 'Host: bench.example.com' "http://127.0.0.1:$gw_port/bench" >/dev/null
wrk -t1 -c8 -d2s -H 'Host: bench.example.com' "http://127.0.0.1:$nginx_port/bench" >/dev/null

printf '\nHTTP/1.1 keep-alive, %s connections, %s per run, %s rounds, %s workers each, same echo backend\n' \
  "$CONNECTIONS" "$DURATION" "$ROUNDS" "$WORKERS"
printf '%-6s %16s %10s %16s %10s %12s %10s\n' round 'portcullis rps' 'p99 ms' 'nginx rps' 'p99 ms' 'rps ratio' 'p99 ratio'
ratios=()
p99_ratios=()
for round in $(seq 1 "$ROUNDS"); do
  read -r p_rps p_p99 <<<"$(measure "$gw_port")"
  read -r n_rps n_p99 <<<"$(measure "$nginx_port")"
  r=$(awk -v a="$p_rps" -v b="$n_rps" 'BEGIN{printf "%.2f", a/b}')
  q=$(awk -v a="$p_p99" -v b="$n_p99" 'BEGIN{printf "%.2f", a/b}')
  ratios+=("$r"); p99_ratios+=("$q")
  printf '%-6s %16s %10s %16s %10s %12s %10s\n' "$round" "$p_rps" "$p_p99" "$n_rps" "$n_p99" "$r" "$q"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
echo "median ratio portcullis/nginx: throughput $(median "${ratios[@]}"), p99 $(median "${p99_ratios[@]}")"
echo "portcullis RSS after load: $(ps -o rss= -p "${pids[1]}") KiB"
