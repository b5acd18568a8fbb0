#!/usr/bin/env bash
# AuthPolicy cost: requests/s and p99 through one portcullis process for
# the same echo backend behind four routes: no auth, JWT RS256, JWT ES256,
# API key. wrk at 64 connections; the routes are measured in alternating
# rounds and each auth route is compared with the no-auth route of the same
# round. Target (issue 5): at least 0.85 of the unauthenticated throughput.
# No pass/fail: the machine is shared and noisy, read the ratios.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}

echo_port=$(free_port); gw_port=$(free_port); admin_port=$(free_port)

# Signing keys made for this run; tokens valid for a day.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ec.pem" 2>/dev/null
mkdir -p "$work/config"
WORK=$work GW_PORT=$gw_port ECHO_PORT=$echo_port python3 - <<'PY'
import base64, json, os, subprocess, time

work = os.environ["WORK"]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True).stdout

def der_ints(der):
    """(r, s) of a DER ECDSA signature."""
    assert der[0] == 0x30
    i, out = 2, []
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out.append(int.from_bytes(der[i + 2:i + 2 + n], "big"))
        i += 2 + n
    return out

modulus = bytes.fromhex(openssl("rsa", "-in", f"{work}/rsa.pem", "-modulus", "-noout").decode().strip().split("=")[1])
rsa_jwk = {"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64(modulus), "e": "AQAB"}
point = openssl("pkey", "-in", f"{work}/ec.pem", "-pubout", "-outform", "DER")[-65:]
ec_jwk = {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256", "x": b64(point[1:33]), "y": b64(point[33:])}

claims = {"iss": "https://idp.bench", "aud": "bench", "sub": "bench-user", "exp": int(time.time()) + 86400}
def token(alg, kid, key):
    head = b64(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    sig = openssl("dgst", "-sha256", "-sign", f"{work}/{key}", data=signed)
    if alg == "ES256":
        r, s = der_ints(sig)
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{head}.{body}.{b64(sig)}"

open(f"{work}/rs256.token", "w").write(token("RS256", "rsa", "rsa.pem"))
open(f"{work}/es256.token", "w").write(token("ES256", "ec", "ec.pem"))

config = open("bench/auth-config.yaml").read()
config = (config.replace("__GW_PORT__", os.environ["GW_PORT"])
                .replace("__ECHO_PORT__", os.environ["ECHO_PORT"])
                .replace("__RSA_JWKS__", json.dumps({"keys": [rsa_jwk]}))
                .replace("__EC_JWKS__", json.dumps({"keys": [ec_jwk]})))
open(f"{work}/config/bench.yaml", "w").write(config)
PY
api_key=bench-api-key-0123456789abcdef

"$BIN" echo --listen "127.0.0.1:$echo_port" 2>"$work/echo.log" &
pids+=($!)
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" run --config-dir "$work/config" --bind 127.0.0.1 --admin "127.0.0.1:$admin_port" 2>"$work/portcullis.log" &
pids+=($!)
wait_port "$echo_port"; wait_port "$gw_port"

# One run against a route: prints "<requests/s> <p99 ms>". Any non-2xx
# answer means the credentials were refused: that is an error here.
measure() {
  local host=$1 header=${2:-}
  local args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Host: $host")
  [ -n "$header" ] && args+=(-H "$header")
  local out
  out=$(wrk "${args[@]}" "http://127.0.0.1:$gw_port/bench")
  if grep -q 'Non-2xx' <<<"$out"; then echo "non-2xx answers from $host:" >&2; grep 'Non-2xx' <<<"$out" >&2; exit 1; fi
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")"
}

routes=(none rs256 es256 apikey)
header_for() {
  case "$1" in
    none) echo "" ;;
    rs256) echo "Authorization: Bearer $(cat "$work/rs256.token")" ;;
    es256) echo "Authorization: Bearer $(cat "$work/es256.token")" ;;
    apikey) echo "X-Api-Key: $api_key" ;;
  esac
}
for r in "${routes[@]}"; do
  wrk -t1 -c8 -d1s -H "Host: $r.bench.example.com" -H "$(header_for "$r")" "http://127.0.0.1:$gw_port/bench" >/dev/null
done

printf '\nHTTP/1.1 keep-alive, %s connections, %s per run, %s rounds, %s workers\n' "$CONNECTIONS" "$DURATION" "$ROUNDS" "$WORKERS"
printf '%-6s %-8s %12s %10s %14s\n' round route 'req/s' 'p99 ms' 'vs no auth'
declare -A ratios
for round in $(seq 1 "$ROUNDS"); do
  base=""
  for r in "${routes[@]}"; do
    read -r rps p99 <<<"$(measure "$r.bench.example.com" "$(header_for "$r")")"
    [ "$r" = none ] && base=$rps
    ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN{printf "%.2f", a/b}')
    ratios[$r]="${ratios[$r]:-} $ratio"
    printf '%-6s %-8s %12s %10s %14s\n' "$round" "$r" "$rps" "$p99" "$ratio"
  done
done
for r in rs256 es256 apikey; do
  # shellcheck disable=SC2086
  echo "median throughput ratio $r / no auth: $(median ${ratios[$r]})"
done
