#!/usr/bin/env bash
# RouteFilter response cache: requests/s and p99 of one URL through
#   portcullis  cached    a route with a RouteFilter cache (ttl 60s): hits
#   portcullis  uncached  the same backend and URL, no RouteFilter
#   nginx       cached    proxy_cache (same ttl, proxy_cache_lock on)
#   nginx       uncached  plain proxy_pass, for scale
# in front of the same `portcullis echo` backend, same worker count. wrk,
# HTTP/1.1 keep-alive; the four are measured in alternating order within
# each round, and the summary shows the medians of the rounds and the
# ratios portcullis cached / uncached and portcullis cached / nginx cached.
# No pass/fail: the machine is shared and noisy, read the ratios.
#
#   DURATION=5s ROUNDS=3 CONNECTIONS=64 WORKERS=2 bench/cache.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}

echo_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port); nginx_port=$(free_port)
HOST=bench.example.com

mkdir -p "$work/config" "$work/nginx-cache"
# nginx workers drop to an unprivileged user when started as root: they
# must be able to reach and write the cache directory.
chmod 755 "$work"; chmod 777 "$work/nginx-cache"
sed -e "s/__GW_PORT__/$gw_port/" -e "s/__ECHO_PORT__/$echo_port/" bench/config.yaml >"$work/config/bench.yaml"
cat >>"$work/config/bench.yaml" <<'YAML'
---
apiVersion: portcullis.dev/v1alpha1
kind: RouteFilter
metadata: {name: bench-cache, namespace: default}
spec:
  cache: {ttl: 60s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cached, namespace: default}
spec:
  parentRefs: [{name: bench}]
  hostnames: [bench.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /cached}}]
    filters:
    - type: ExtensionRef
      extensionRef: {group: portcullis.dev, kind: RouteFilter, name: bench-cache}
    backendRefs: [{name: echo, port: 80}]
YAML

"$BIN" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" &
pids+=($!)
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/config" --bind 127.0.0.1 --admin "127.0.0.1:$admin_port" 2>"$work/portcullis.log" &
pids+=($!)

cat >"$work/nginx.conf" <<NGINX
worker_processes $WORKERS;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=10m use_temp_path=off;
  upstream echo { server 127.0.0.1:$echo_port; keepalive 256; }
  server {
    listen 127.0.0.1:$nginx_port;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host \$host;
    location /cached {
      proxy_pass http://echo;
      proxy_cache bench;
      proxy_cache_valid 200 60s;
      proxy_cache_lock on;
      add_header X-Cache \$upstream_cache_status;
    }
    location / {
      proxy_pass http://echo;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon off;' 2>"$work/nginx.log" &
pids+=($!)

wait_port "$echo_port"; wait_port "$gw_port"; wait_port "$nginx_port"

# Every target must answer 200, and the cached ones from the cache.
check() {
  local port=$1 path=$2 want=$3 got
  got=$(curl -s -o /dev/null -D - -H "Host: $HOST" "http://127.0.0.1:$port$path" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}')
  if [[ $want != - && $got != "$want" ]]; then
    echo "$path on port $port: x-cache '$got', expected '$want'" >&2
    curl -s -i -H "Host: $HOST" "http://127.0.0.1:$port$path" >&2; for f in "$work"/*.log; do echo "== $f" >&2; tail -n 5 "$f" >&2; done; exit 1
  fi
}
for port in "$gw_port" "$nginx_port"; do
  check "$port" /cached/item -; check "$port" /cached/item HIT; check "$port" /bench/item -
done

# One run: prints "<requests/s> <p99 ms>".
measure() {
  local port=$1 path=$2 out
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $HOST" "http://127.0.0.1:$port$path")
  if grep -q 'Non-2xx' <<<"$out"; then echo "non-2xx answers from $port$path" >&2; exit 1; fi
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

targets=(portcullis-cached portcullis-uncached nginx-cached nginx-uncached)
target_port() { [[ $1 == portcullis-* ]] && echo "$gw_port" || echo "$nginx_port"; }
target_path() { [[ $1 == *-uncached ]] && echo /bench/item || echo /cached/item; }
for t in "${targets[@]}"; do
  wrk -t1 -c8 -d1s -H "Host: $HOST" "http://127.0.0.1:$(target_port "$t")$(target_path "$t")" >/dev/null
done

printf '\nOne URL, HTTP/1.1 keep-alive, %s connections, %s per run, %s rounds, %s workers each\n' "$CONNECTIONS" "$DURATION" "$ROUNDS" "$WORKERS"
printf '%-6s %-20s %12s %10s\n' round target 'req/s' 'p99 ms'
declare -A rps p99
for round in $(seq 1 "$ROUNDS"); do
  order=("${targets[@]}")
  (( round % 2 == 0 )) && order=(nginx-uncached nginx-cached portcullis-uncached portcullis-cached)
  for t in "${order[@]}"; do
    read -r r p <<<"$(measure "$(target_port "$t")" "$(target_path "$t")")"
    rps[$t]="${rps[$t]:-} $r"; p99[$t]="${p99[$t]:-} $p"
    printf '%-6s %-20s %12s %10s\n' "$round" "$t" "$r" "$p"
  done
done
declare -A med
printf '\nmedians\n'
for t in "${targets[@]}"; do
  # shellcheck disable=SC2086
  med[$t]=$(median ${rps[$t]})
  # shellcheck disable=SC2086
  printf '  %-20s %12s req/s  p99 %s ms\n' "$t" "${med[$t]}" "$(median ${p99[$t]})"
done
printf '  portcullis cached / portcullis uncached: %s\n' "$(ratio "${med[portcullis-cached]}" "${med[portcullis-uncached]}")"
printf '  portcullis cached / nginx proxy_cache:   %s\n' "$(ratio "${med[portcullis-cached]}" "${med[nginx-cached]}")"
hits=$(curl -s "http://127.0.0.1:$admin_port/metrics" | awk '/^portcullis_cache_requests_total\{filter="default\/bench-cache",result="hit"\}/ {print $2}')
printf '  portcullis cache hits recorded: %s\n' "${hits:-0}"
