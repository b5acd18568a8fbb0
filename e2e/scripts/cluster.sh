#!/usr/bin/env bash
# The e2e cluster: etcd, kube-apiserver, kube-controller-manager and the node
# agent, all state under one directory.
#
#   cluster.sh up STATE_DIR     start (STATE_DIR must be empty or absent); writes STATE_DIR/env
#   cluster.sh down STATE_DIR   stop everything started by `up`, remove pod namespaces and the bridge
#   cluster.sh restart STATE_DIR COMPONENT   restart etcd, kube-apiserver, kube-controller-manager or node-agent
#
# Needs root (network namespaces, a bridge). Clients: `source STATE_DIR/env`
# gives KUBECONFIG, E2E_BIN (kubectl etc.) and the addresses below.
#
# Addresses (all inside 198.18.0.0/15, on a bridge only this harness uses):
#   198.18.0.1        host end of the bridge: API server, kubelet API
#   198.18.0.0/16     pod addresses
#   198.19.0.0/17     Service ClusterIPs (proxied by the node agent)
#   198.19.128.0/17   LoadBalancer ingress addresses (proxied by the node agent)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BRIDGE=pcbr0
GATEWAY=198.18.0.1
POD_CIDR=198.18.0.0/16
SVC_CIDR=198.19.0.0/17
LB_CIDR=198.19.128.0/17
NODE_NAME=e2e-node
CURRENT="$E2E_CACHE/current-cluster"   # state dir of the running cluster, for stale cleanup

# free_ports N: N distinct free TCP ports (all held open until all are picked).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start NAME LOGFILE CMD...: background process, pid recorded for `down`,
# command line recorded for `restart`.
start() {
  local name=$1 logf=$2; shift 2
  printf '%s\0' "$@" >"$STATE/cmd.$name"
  # fd 9 is e2e.sh's machine-wide lock: long-lived children must not hold it.
  "$@" >>"$logf" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$name $pid" >>"$STATE/pids"
  log "started $name (pid $pid), log: $logf"
}

alive() { # alive NAME: the recorded process still runs
  local pid; pid=$(awk -v n="$1" '$1==n {print $2}' "$STATE/pids" | tail -1)
  [[ -n $pid ]] && running "$pid"
}

# wait_up NAME TIMEOUT CMD...: like wait_for, but fails fast if NAME died.
wait_up() {
  local name=$1 timeout=$2; shift 2
  local deadline=$(( $(now_ms) + timeout * 1000 ))
  until "$@" >/dev/null 2>&1; do
    alive "$name" || { log "$name exited during start-up"; tail_log "$name"; return 1; }
    if (( $(now_ms) > deadline )); then
      log "$name not ready after ${timeout}s"; tail_log "$name"; return 1
    fi
    sleep 0.2
  done
}

tail_log() {
  local f="$STATE/logs/$1.log"
  [[ -f $f ]] && { echo "----- last lines of $f -----" >&2; tail -n 40 "$f" >&2; echo "-----" >&2; }
  return 0
}

ensure_deps() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
      apt-get update >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
    fi
  fi
  [[ $(id -u) == 0 ]] || die "the e2e cluster needs root (network namespaces, a bridge)"
}

# Removes what a cluster (this one, or one whose runner was killed) left behind.
net_cleanup() {
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^pc-' || true); do
    local pids; pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

# running PID: exists and is not a zombie (PID 1 here may reap orphans late).
running() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ -n $st && $st != Z ]]
}

stop_recorded() { # stop every process in STATE/pids, newest first
  local dir=$1
  [[ -f $dir/pids ]] || return 0
  local name pid
  tac "$dir/pids" | while read -r name pid; do
    running "$pid" || continue
    local t0; t0=$(now_ms)
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    if running "$pid"; then
      log "$name (pid $pid) did not stop in 10s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name in $(( $(now_ms) - t0 )) ms"
  done
  : >"$dir/pids.stopped"; mv "$dir/pids" "$dir/pids.stopped"
}

gen_certs() {
  local d=$STATE/pki
  mkdir -p "$d"
  (
    cd "$d"
    # EC P-256 keys: an order of magnitude faster to generate than RSA.
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
    openssl req -x509 "${ec[@]}" -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=portcullis-e2e-ca \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    sign() { # sign NAME SUBJ [SANS]
      openssl req "${ec[@]}" -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      local ext="keyUsage=critical,digitalSignature,keyEncipherment"$'\n'"extendedKeyUsage=${4:-clientAuth}"
      [[ -n ${3:-} ]] && ext+=$'\n'"subjectAltName=$3"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 -extfile <(echo "$ext") 2>/dev/null
      rm -f "$1.csr"
    }
    sign apiserver /CN=kube-apiserver \
      "IP:$GATEWAY,IP:127.0.0.1,IP:${SVC_CIDR%.0/*}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      serverAuth
    sign admin "/O=system:masters/CN=e2e-admin"
    # The controller manager runs with one identity for every controller.
    sign controller-manager "/O=system:masters/CN=system:kube-controller-manager"
    sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    sign kubelet "/CN=$NODE_NAME" "IP:$GATEWAY,DNS:$NODE_NAME" serverAuth
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null
    openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "certificate generation failed"
  [[ -s $d/kubelet.crt && -s $d/sa.pub ]] || die "certificate generation failed (see $d)"
}

kubeconfig() { # kubeconfig FILE CERTNAME
  local b64ca b64c b64k
  b64ca=$(base64 -w0 <"$STATE/pki/ca.crt"); b64c=$(base64 -w0 <"$STATE/pki/$2.crt"); b64k=$(base64 -w0 <"$STATE/pki/$2.key")
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://$GATEWAY:$API_PORT", certificate-authority-data: "$b64ca"}
users:
- name: $2
  user: {client-certificate-data: "$b64c", client-key-data: "$b64k"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $2, namespace: default}
current-context: e2e
KC
}

up() {
  STATE=$1
  ensure_deps
  mkdir -p "$STATE/logs" "$E2E_CACHE"
  STATE=$(cd "$STATE" && pwd)
  [[ -e $STATE/pids ]] && die "$STATE already has a running cluster (cluster.sh down $STATE first)"
  # A cluster whose runner was killed before `down`: stop it now.
  if [[ -L $CURRENT ]]; then
    local old; old=$(readlink "$CURRENT")
    if [[ -f $old/pids ]]; then log "stopping a stale cluster from $old"; stop_recorded "$old"; fi
    rm -f "$CURRENT"
  fi
  net_cleanup
  ln -s "$STATE" "$CURRENT"
  : >"$STATE/pids"

  BIN=$("$E2E_DIR/scripts/build-tools.sh")
  AGENT="$CARGO_TARGET_DIR/release/e2e-node-agent"
  [[ -x $AGENT ]] || die "node agent not built ($AGENT): run make -C e2e build"

  # The bridge first: the API server listens on its address.
  ip link add "$BRIDGE" type bridge
  ip addr add "$GATEWAY/15" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  gen_certs
  local etcd_port etcd_peer kcm_port kubelet_port
  read -r etcd_port etcd_peer kcm_port API_PORT kubelet_port <<<"$(free_ports 5)"

  start etcd "$STATE/logs/etcd.log" "$BIN/etcd" --name e2e --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level warn
  wait_up etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

  local pki=$STATE/pki
  start kube-apiserver "$STATE/logs/kube-apiserver.log" "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$GATEWAY" --advertise-address "$GATEWAY" --secure-port "$API_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode RBAC \
    --service-cluster-ip-range "$SVC_CIDR" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --allow-privileged=true --profiling=false --v=1
  wait_up kube-apiserver 90 curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$GATEWAY:$API_PORT/readyz"

  kubeconfig "$STATE/admin.kubeconfig" admin
  kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  cat >"$STATE/env" <<ENV
export KUBECONFIG=$STATE/admin.kubeconfig
export E2E_STATE=$STATE
export E2E_BIN=$BIN
export E2E_API=https://$GATEWAY:$API_PORT
export E2E_POD_CIDR=$POD_CIDR
export E2E_LB_CIDR=$LB_CIDR
export PATH=$BIN:\$PATH
ENV
  export KUBECONFIG=$STATE/admin.kubeconfig

  local controllers=(
    deployment-controller replicaset-controller statefulset-controller daemonset-controller
    job-controller cronjob-controller ttl-after-finished-controller disruption-controller
    endpoints-controller endpointslice-controller endpointslice-mirroring-controller
    namespace-controller serviceaccount-controller serviceaccount-token-controller
    root-ca-certificate-publisher-controller garbage-collector-controller pod-garbage-collector-controller
    service-cidr-controller
  )
  start kube-controller-manager "$STATE/logs/kube-controller-manager.log" "$BIN/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --controllers "$(IFS=,; echo "${controllers[*]}")" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=false --leader-elect=false \
    --service-cluster-ip-range "$SVC_CIDR" --allocate-node-cidrs=false --v=1
  wait_up kube-controller-manager 60 curl -skf "https://127.0.0.1:$kcm_port/healthz"

  local portcullis="$CARGO_TARGET_DIR/release/portcullis" echo_basic
  echo_basic=$("$E2E_DIR/scripts/build-echo.sh")
  mkdir -p "$STATE/node"
  # Images -> local binaries. The conformance base manifests also run CoreDNS
  # (for UDPRoute, not in our profiles); every pod there must be Ready, so it
  # gets an idle stand-in that answers nothing.
  cat >"$STATE/node-agent.json" <<JSON
{
  "nodeName": "$NODE_NAME",
  "stateDir": "$STATE/node",
  "bridge": "$BRIDGE",
  "gateway": "$GATEWAY",
  "podCidr": "$POD_CIDR",
  "lbCidr": "$LB_CIDR",
  "proxyClusterIps": true,
  "apiserverHost": "$GATEWAY",
  "apiserverPort": $API_PORT,
  "kubeletPort": $kubelet_port,
  "kubeletCert": "$pki/kubelet.crt",
  "kubeletKey": "$pki/kubelet.key",
  "images": [
    {"prefix": "portcullis", "binary": "$portcullis", "aliases": ["/portcullis", "/usr/local/bin/portcullis"]},
    {"prefix": "ghcr.io/portcullis/portcullis", "binary": "$portcullis", "aliases": ["/portcullis", "/usr/local/bin/portcullis"]},
    {"prefix": "gcr.io/k8s-staging-gateway-api/echo-basic", "binary": "$echo_basic", "readyPorts": [3000, 8443]},
    {"prefix": "registry.k8s.io/gateway-api/echo-basic", "binary": "$echo_basic", "readyPorts": [3000, 8443]},
    {"prefix": "registry.k8s.io/coredns/coredns", "binary": "$(command -v sleep)", "replaceArgs": ["infinity"]},
    {"prefix": "e2e.local/host", "binary": "$(command -v sh)"}
  ]
}
JSON
  RUST_LOG=${E2E_AGENT_LOG:-info} start node-agent "$STATE/logs/node-agent.log" "$AGENT" "$STATE/node-agent.json"
  wait_up node-agent 30 "$BIN/kubectl" get node "$NODE_NAME"
  wait_up node-agent 30 "$BIN/kubectl" wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  # The namespace controller and the service-account controller must be working
  # before anything is created: the default ServiceAccount shows both.
  wait_up kube-controller-manager 60 "$BIN/kubectl" -n default get serviceaccount default
  log "cluster up: $("$BIN/kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') at https://$GATEWAY:$API_PORT (state $STATE)"
}

down() {
  STATE=$1
  [[ -d $STATE ]] || return 0
  stop_recorded "$STATE"
  net_cleanup
  [[ -L $CURRENT && $(readlink "$CURRENT") == "$STATE" ]] && rm -f "$CURRENT"
  log "cluster down"
}

# restart STATE NAME: stop one component (SIGTERM, SIGKILL after 10 s) and
# start it again with the same command line; waits until it serves again.
# For tests of API server restarts, controller failover and the like.
restart() {
  STATE=$1; local name=$2
  [[ -f $STATE/cmd.$name ]] || die "no component $name in $STATE"
  local pid; pid=$(awk -v n="$name" '$1==n {print $2}' "$STATE/pids" | tail -1)
  if [[ -n $pid ]] && running "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do running "$pid" || break; sleep 0.1; done
    running "$pid" && kill -KILL "$pid"
  fi
  local -a cmd; mapfile -d '' -t cmd <"$STATE/cmd.$name"
  # Forget the old pid (it may be reused by an unrelated process later).
  grep -v "^$name " "$STATE/pids" >"$STATE/pids.new" || true; mv "$STATE/pids.new" "$STATE/pids"
  if [[ $name == node-agent ]]; then export RUST_LOG=${E2E_AGENT_LOG:-info}; fi
  echo "----- restarted $(date -u +%FT%TZ) -----" >>"$STATE/logs/$name.log"
  start "$name" "$STATE/logs/$name.log" "${cmd[@]}"
  source "$STATE/env"
  case $name in
    kube-apiserver) wait_up kube-apiserver 90 kubectl get --raw /readyz ;;
    etcd) wait_up etcd 30 bash -c "kubectl get --raw /readyz/etcd" ;;
    *) sleep 1; alive "$name" || die "$name exited after restart" ;;
  esac
  log "$name restarted"
}

case "${1:-}" in
  up) up "${2:?state dir}" ;;
  down) down "${2:?state dir}" ;;
  restart) restart "${2:?state dir}" "${3:?component: etcd, kube-apiserver, kube-controller-manager or node-agent}" ;;
  *) die "usage: cluster.sh up|down STATE_DIR | restart STATE_DIR COMPONENT" ;;
esac
