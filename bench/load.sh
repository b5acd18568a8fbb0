#!/usr/bin/env bash
# Load benchmark: Portcullis next to nginx and HAProxy (Debian packages) in
# front of the same echo backend, each with the same number of workers /
# threads. For HTTP/1.1 keep-alive at several connection counts (wrk) and
# HTTP/2 cleartext (h2load) it prints requests/s, p50/p99/p99.9 latency and
# CPU seconds spent by the proxy per 100k requests, and the ratios against
# the better reference. Then memory: Portcullis RSS idle, after load, and
# with 10,000 HTTPRoutes loaded.
#
# No pass/fail: the machine is shared and noisy. Proxies are measured in
# alternating order within each round, and the median of the rounds is
# what the summary compares.
#
#   DURATION=10s ROUNDS=3 CONNECTIONS_LIST="1 64 512" WORKERS=2 bench/load.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS_LIST=${CONNECTIONS_LIST:-1 64 512}
H2_CONNECTIONS=${H2_CONNECTIONS:-64}
H2_STREAMS=${H2_STREAMS:-10}
ROUNDS=${ROUNDS:-3}
ROUTES_FOR_MEMORY=${ROUTES_FOR_MEMORY:-10000}
PROXIES=(portcullis nginx haproxy)
# nginx and HAProxy run without access logs; so does portcullis (lib.sh).

# Clock ticks per second, for cpu_ticks (lib.sh).
CLK_TCK=$(getconf CLK_TCK)

echo_port=$(free_port); admin_port=$(free_port)
declare -A port h2port pid
for p in "${PROXIES[@]}"; do port[$p]=$(free_port); h2port[$p]=$(free_port); done

"$BIN" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" &
pids+=($!)

# Portcullis serves h1 and h2c (prior knowledge) on one port; the second
# port is a second listener of the same Gateway.
mkdir -p "$work/config"
sed -e "s/__GW_PORT__/${port[portcullis]}/" -e "s/__ECHO_PORT__/$echo_port/" bench/config.yaml >"$work/config/bench.yaml"
python3 - "$work/config/bench.yaml" "${port[portcullis]}" "${h2port[portcullis]}" <<'PY'
import sys
path, port, h2 = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
first = "    protocol: HTTP\n    port: %s\n" % port
text = text.replace(first, first + "  - name: h2\n    protocol: HTTP\n    port: %s\n" % h2, 1)
open(path, "w").write(text)
PY
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/config" --bind 127.0.0.1 --admin "127.0.0.1:$admin_port" 2>"$work/portcullis.log" &
pid[portcullis]=$!; pids+=($!)

cat >"$work/nginx.conf" <<NGINX
worker_processes $WORKERS;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream echo { server 127.0.0.1:$echo_port; keepalive 256; }
  server {
    listen 127.0.0.1:${port[nginx]};
    listen 127.0.0.1:${h2port[nginx]} http2;
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
pid[nginx]=$!; pids+=($!)

cat >"$work/haproxy.cfg" <<HAPROXY
global
  nbthread $WORKERS
  maxconn 8000
defaults
  mode http
  option forwardfor
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:${port[haproxy]}
  bind 127.0.0.1:${h2port[haproxy]} proto h2
  default_backend echo
backend echo
  server echo 127.0.0.1:$echo_port
HAPROXY
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" &
pid[haproxy]=$!; pids+=($!)

wait_port "$echo_port"
for p in "${PROXIES[@]}"; do wait_port "${port[$p]}"; wait_port "${h2port[$p]}"; done
idle_rss=$(rss_kib "${pid[portcullis]}")

HOST='bench.example.com'
# One wrk run against PROXY with C connections; prints
# "<rps> <p50 ms> <p99 ms> <p99.9 ms> <cpu s per 100k> <errors>".
measure_h1() {
  local proxy=$1 c=$2 before after out
  local threads=$THREADS; (( c < threads )) && threads=$c
  before=$(cpu_ticks "${pid[$proxy]}")
  out=$(wrk -t"$threads" -c"$c" -d"$DURATION" -s bench/latency.lua -H "Host: $HOST" "http://127.0.0.1:${port[$proxy]}/bench")
  after=$(cpu_ticks "${pid[$proxy]}")
  awk -v ticks=$((after - before)) -v hz="$CLK_TCK" '$1=="RESULT" {
      rps = $2 / ($7 / 1e6)
      printf "%.0f %.3f %.3f %.3f %.2f %d\n", rps, $4/1000, $5/1000, $6/1000, (ticks/hz) / ($2/100000), $3
    }' <<<"$out"
}
# One h2load run (HTTP/2 cleartext, prior knowledge); prints
# "<rps> <mean ms> - - <cpu s per 100k> <errors>" (h2load has no percentiles).
measure_h2() {
  local proxy=$1 before after out
  before=$(cpu_ticks "${pid[$proxy]}")
  out=$(h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -t"$THREADS" -D "${DURATION%s}" -H ":authority: $HOST" "http://127.0.0.1:${h2port[$proxy]}/bench" 2>&1)
  after=$(cpu_ticks "${pid[$proxy]}")
  awk -v ticks=$((after - before)) -v hz="$CLK_TCK" '
    /^finished in/ { gsub(",", ""); rps = $4 }
    /^requests:/ { done = $8; failed = $10 + $12 + $14 }
    /^time for request:/ { mean = $6 }
    END {
      ms = mean; if (ms ~ /us$/) { sub(/us$/, "", ms); ms /= 1000 } else if (ms ~ /ms$/) { sub(/ms$/, "", ms) } else if (ms ~ /s$/) { sub(/s$/, "", ms); ms *= 1000 }
      printf "%.0f %.3f - - %.2f %d\n", rps, ms, (done > 0 ? (ticks/hz) / (done/100000) : 0), failed
    }' <<<"$out"
}

# Warm-up: connections pools and caches of all three.
for p in "${PROXIES[@]}"; do
  wrk -t1 -c8 -d2s -H "Host: $HOST" "http://127.0.0.1:${port[$p]}/bench" >/dev/null
done

scenarios=()
for c in $CONNECTIONS_LIST; do scenarios+=("h1:$c"); done
scenarios+=("h2:$H2_CONNECTIONS")

printf '\n%s workers each, same echo backend, %s per run, %s rounds (median shown)\n' "$WORKERS" "$DURATION" "$ROUNDS"
printf '%-14s %-11s %10s %9s %9s %10s %12s %7s\n' scenario proxy 'req/s' 'p50 ms' 'p99 ms' 'p99.9 ms' 'cpu s/100k' errors
summary=()
for s in "${scenarios[@]}"; do
  kind=${s%%:*}; c=${s#*:}
  declare -A rps=() p50=() p99=() p999=() cpu=() errs=()
  for round in $(seq 1 "$ROUNDS"); do
    # Alternate the order so background load hits every proxy alike.
    order=("${PROXIES[@]}"); (( round % 2 == 0 )) && order=(haproxy nginx portcullis)
    for p in "${order[@]}"; do
      if [[ $kind == h1 ]]; then line=$(measure_h1 "$p" "$c"); else line=$(measure_h2 "$p"); fi
      read -r a b d e f g <<<"$line"
      rps[$p]+="$a "; p50[$p]+="$b "; p99[$p]+="$d "; p999[$p]+="$e "; cpu[$p]+="$f "; errs[$p]+="$g "
    done
  done
  label=$([[ $kind == h1 ]] && echo "http/1.1 c=$c" || echo "h2c c=$c m=$H2_STREAMS")
  declare -A med_rps=() med_p99=()
  for p in "${PROXIES[@]}"; do
    # shellcheck disable=SC2086
    med_rps[$p]=$(median ${rps[$p]}); med_p99[$p]=$(median ${p99[$p]})
    # shellcheck disable=SC2086
    printf '%-14s %-11s %10s %9s %9s %10s %12s %7s\n' "$label" "$p" "${med_rps[$p]}" "$(median ${p50[$p]})" \
      "${med_p99[$p]}" "$(median ${p999[$p]})" "$(median ${cpu[$p]})" "$(awk '{s=0; for (i=1;i<=NF;i++) s+=$i; print s}' <<<"${errs[$p]}")"
  done
  best=nginx; (( $(awk -v a="${med_rps[haproxy]}" -v b="${med_rps[nginx]}" 'BEGIN{print (a>b)}') )) && best=haproxy
  ratio=$(awk -v a="${med_rps[portcullis]}" -v b="${med_rps[$best]}" 'BEGIN{printf "%.2f", a/b}')
  p99_ratio=$( [[ ${med_p99[portcullis]} == - ]] && echo - || awk -v a="${med_p99[portcullis]}" -v b="${med_p99[$best]}" 'BEGIN{printf "%.2f", (b>0 ? a/b : 0)}')
  summary+=("$(printf '%-22s throughput %5s x %-8s p99 %5s x' "$label" "$ratio" "$best" "$p99_ratio")")
  unset rps p50 p99 p999 cpu errs med_rps med_p99
done

printf '\nportcullis vs the better reference (targets: throughput >= 1.00x, p99 <= 1.10x)\n'
printf '  %s\n' "${summary[@]}"

loaded_rss=$(rss_kib "${pid[portcullis]}")

# Memory with many routes: a second Portcullis with ROUTES_FOR_MEMORY
# HTTPRoutes (one hostname each) on one Gateway.
mkdir -p "$work/many"
many_port=$(free_port); many_admin=$(free_port)
python3 - "$work/many/routes.yaml" "$many_port" "$echo_port" "$ROUTES_FOR_MEMORY" <<'PY'
import sys
path, port, echo, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
docs = [f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: many, namespace: default}}
spec:
  gatewayClassName: portcullis
  listeners: [{{name: http, protocol: HTTP, port: {port}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec: {{ports: [{{name: http, port: 80, targetPort: {echo}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{name: http, port: {echo}}}]
endpoints: [{{addresses: ["127.0.0.1"]}}]
"""]
for i in range(n):
    docs.append(f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: many}}]
  hostnames: [h{i}.example.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api/v{i % 7}}}}}, {{headers: [{{name: x-tenant, value: t{i}}}]}}]
    backendRefs: [{{name: echo, port: 80}}]
""")
open(path, "w").write("---\n".join(docs))
PY
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/many" --bind 127.0.0.1 --admin "127.0.0.1:$many_admin" 2>"$work/many.log" &
many_pid=$!; pids+=($!)
wait_port "$many_port"
served=0
for _ in $(seq 1 600); do
  if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: h$((ROUTES_FOR_MEMORY - 1)).example.com" "http://127.0.0.1:$many_port/api/v$(((ROUTES_FOR_MEMORY - 1) % 7))/x") == 200 ]]; then served=1; break; fi
  sleep 0.1
done
(( served )) || echo "the last of $ROUTES_FOR_MEMORY routes was not served" >&2
wrk -t1 -c8 -d2s -H "Host: h1.example.com" "http://127.0.0.1:$many_port/api/v1/x" >/dev/null
many_rss=$(rss_kib "$many_pid")

printf '\nportcullis memory (targets: idle <= 30 MiB, %s routes <= 60 MiB)\n' "$ROUTES_FOR_MEMORY"
awk -v a="$idle_rss" -v b="$loaded_rss" -v c="$many_rss" -v n="$ROUTES_FOR_MEMORY" 'BEGIN {
  printf "  idle %.1f MiB, after the load above %.1f MiB, with %d routes (after traffic) %.1f MiB\n", a/1024, b/1024, n, c/1024 }'
printf '  nginx after load %.1f MiB, haproxy after load %.1f MiB (all processes)\n' \
  "$(awk -v x="$(rss_kib "${pid[nginx]}")" 'BEGIN{print x/1024}')" "$(awk -v x="$(rss_kib "${pid[haproxy]}")" 'BEGIN{print x/1024}')"
