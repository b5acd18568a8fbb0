# Shared helpers for the e2e scripts. Source, don't run.
# shellcheck shell=bash

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$E2E_DIR/.." && pwd)"
# Built binaries live outside the checkout so that every clone on the machine
# (and CI's fresh clone) shares them; they are keyed by the pins.
E2E_CACHE="${E2E_CACHE:-/var/tmp/portcullis-e2e}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/portcullis-target}"

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[e2e %s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; exit 1; }

# now_ms: monotonic-ish wall clock in milliseconds.
now_ms() { date +%s%3N; }

# phase NAME CMD...: run CMD, print the wall time of the phase.
PHASE_TIMES=()
phase() {
  local name=$1; shift
  local t0; t0=$(now_ms)
  log "phase $name: start"
  local rc=0
  "$@" || rc=$?
  local dt=$(( $(now_ms) - t0 ))
  local secs="$((dt / 1000)).$(( (dt % 1000) / 100 ))"
  PHASE_TIMES+=("$(printf '%-30s %8ss  %s' "$name" "$secs" "$([ $rc = 0 ] && echo ok || echo FAILED)")")
  log "phase $name: $([ $rc = 0 ] && echo done || echo FAILED) in ${secs}s"
  return $rc
}
print_phase_times() {
  local l
  echo "---- e2e phase wall times ----" >&2
  for l in "${PHASE_TIMES[@]}"; do echo "  $l" >&2; done
}

# wait_for DESC TIMEOUT_S CMD...: poll CMD every 0.2s until it succeeds.
wait_for() {
  local desc=$1 timeout=$2; shift 2
  local deadline=$(( $(now_ms) + timeout * 1000 ))
  until "$@" >/dev/null 2>&1; do
    if (( $(now_ms) > deadline )); then
      log "timed out after ${timeout}s waiting for: $desc"
      return 1
    fi
    sleep 0.2
  done
}

# Heavy builds share 2 cores with everything else.
NICE=(nice -n 15)

# The extended features we claim, comma-separated (supported-features.txt).
claimed_features() { grep -v '^#' "$E2E_DIR/supported-features.txt" | grep -v '^$' | paste -sd, -; }
