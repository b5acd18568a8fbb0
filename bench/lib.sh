# Shared by the load scripts in bench/: `source "$(dirname "$0")/lib.sh"`
# right after `set -euo pipefail`. Moves to the repository root, makes a
# work dir that is removed on exit (KEEP_WORK=1 keeps it) together with
# every process whose pid the script appends to `pids`, and defines the
# helpers below.

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/portcullis-target}/release/portcullis}
WORKERS=${WORKERS:-$(nproc)}
THREADS=${THREADS:-2}
# The reference proxies run without access logs; so does portcullis unless
# asked otherwise (the log would measure the terminal or the disk).
export PORTCULLIS_ACCESS_LOG=${PORTCULLIS_ACCESS_LOG:-off}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n ${KEEP_WORK:-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# A TCP port free on loopback right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Waits (up to 20 s) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 200); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2; return 1
}

# All processes of a proxy: the main one and its children (nginx workers).
proc_tree() { echo "$1"; pgrep -P "$1" || true; }

# CPU time (user + system, clock ticks) the process tree of PID has used.
cpu_ticks() {
  local total=0 p
  for p in $(proc_tree "$1"); do
    [[ -r /proc/$p/stat ]] || continue
    # Fields after "pid (comm) ": the name may contain spaces.
    total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo "$total"
}

# Resident memory (KiB) of the process tree of PID.
rss_kib() {
  local total=0 p
  for p in $(proc_tree "$1"); do
    [[ -r /proc/$p/status ]] || continue
    total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
  done
  echo "$total"
}

# A wrk latency (`850.12us`, `1.20ms`, `2.01s`) in milliseconds.
to_ms() {
  local v=$1
  case "$v" in
    *us) awk -v x="${v%us}" 'BEGIN{printf "%.3f", x/1000}' ;;
    *ms) awk -v x="${v%ms}" 'BEGIN{printf "%.3f", x}' ;;
    *s) awk -v x="${v%s}" 'BEGIN{printf "%.3f", x*1000}' ;;
    *) echo "$v" ;;
  esac
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
