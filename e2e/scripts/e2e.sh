#!/usr/bin/env bash
# `make e2e`: build what the cluster needs (cached), start the cluster,
# install the Gateway API CRDs, run the smoke test (then, as they land, our
# own e2e tests and the conformance suite), and tear everything down, even on
# failure. Prints the wall time of each phase.
#
# E2E_KEEP=1 keeps the cluster running afterwards (stop it with
#   scripts/cluster.sh down <state dir>, printed at the end).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
S="$E2E_DIR/scripts"

STATE=$(mktemp -d /tmp/portcullis-e2e.XXXXXX)
T0=$(now_ms)
ok=0
# Each phase's stderr is also kept in $PHASE_LOGS/NAME.log, so that the
# summary the CI log ends with can repeat why a phase failed.
PHASE_LOGS=$(mktemp -d /tmp/portcullis-e2e-phases.XXXXXX)
FAILED_PHASE=""
# run NAME CMD...: a phase whose stderr is teed to its log.
run() {
  local name=$1; shift
  local logf="$PHASE_LOGS/${name//[^A-Za-z0-9_.-]/_}.log"
  if ! phase "$name" tee_stderr "$logf" "$@"; then
    FAILED_PHASE=$name
    return 1
  fi
}
tee_stderr() { # tee_stderr FILE CMD...: CMD's stderr to FILE and to stderr
  local f=$1; shift
  { "$@" 2>&1 1>&3 3>&- | tee -a "$f" >&2; } 3>&1
}
# The lines that say why a phase failed: its ERROR lines, timeouts, test
# failures; else its last lines.
why_failed() {
  local f="$PHASE_LOGS/${1//[^A-Za-z0-9_.-]/_}.log" lines
  [[ -f $f ]] || return 0
  lines=$(grep -E 'ERROR|timed out|FAILED|panicked|^error|test result: FAILED' "$f" | tail -n 6 || true)
  [[ -n $lines ]] || lines=$(tail -n 4 "$f")
  printf '%s\n' "$lines" | cut -c1-300 | sed 's/^/      /' >&2
}
finish() {
  local rc=$?
  set +e
  if [[ $ok != 1 ]]; then
    log "FAILED (exit $rc): logs of every component follow (state kept in $STATE)"
    for f in "$STATE"/logs/*.log; do
      [[ -f $f ]] || continue
      echo "----- tail of $f -----" >&2; tail -n 30 "$f" >&2
    done
  fi
  if [[ ${E2E_KEEP:-0} == 1 && $ok == 1 ]]; then
    log "cluster kept running: source $STATE/env; stop it with $S/cluster.sh down $STATE"
  else
    phase teardown "$S/cluster.sh" down "$STATE"
    [[ $ok == 1 ]] && rm -rf "$STATE"
  fi
  print_phase_times
  if [[ -n $FAILED_PHASE ]]; then
    echo "  phase $FAILED_PHASE failed:" >&2
    why_failed "$FAILED_PHASE"
    echo "  (its whole output: $PHASE_LOGS/)" >&2
  elif [[ $ok == 1 ]]; then
    rm -rf "$PHASE_LOGS"
  fi
  local dt=$(( $(now_ms) - T0 ))
  printf '  %-30s %8ss  %s\n' total "$((dt / 1000)).$(( (dt % 1000) / 100 ))" "$([[ $ok == 1 ]] && echo ok || echo FAILED)" >&2
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# One cluster per machine at a time (the bridge and addresses are fixed).
mkdir -p "$E2E_CACHE"
exec 9>"$E2E_CACHE/cluster.lock"
if ! flock -n 9; then
  holders=$(for p in /proc/[0-9]*; do
    # not this script nor its own subshells
    [[ ${p#/proc/} == "$$" ]] && continue
    [[ $(awk '/^PPid:/ {print $2}' "$p/status" 2>/dev/null) == "$$" ]] && continue
    if ls -l "$p/fd" 2>/dev/null | grep -q "$E2E_CACHE/cluster.lock"; then
      echo "${p#/proc/}($(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-60))"
    fi
  done | tr '\n' ' ' || true)
  log "waiting for another e2e run to finish (lock $E2E_CACHE/cluster.lock held by pids: ${holders:-?})"
  flock -w 900 9 || die "another e2e cluster has been running on this machine for 15 minutes (lock $E2E_CACHE/cluster.lock)"
fi

run build-k8s "$S/build-tools.sh" >/dev/null
run build-echo "$S/build-echo.sh" >/dev/null
run build-agent "$S/build-agent.sh" >/dev/null
run cluster-up "$S/cluster.sh" up "$STATE"
source "$STATE/env"
run crds "$S/install-crds.sh"
run smoke "$S/smoke.sh"
# Our own end-to-end tests: every executable tests/*.sh, in name order, each
# a phase, with the cluster env (KUBECONFIG, kubectl on PATH, E2E_STATE).
# E2E_TESTS narrows them by name (a glob: `30-*`; `none` runs none, e.g.
# for a narrowed conformance run).
for t in "$E2E_DIR"/tests/${E2E_TESTS:-*}.sh; do
  [[ -x $t ]] || continue
  run "test:$(basename "$t" .sh)" "$t"
done
# The Gateway API conformance suite against our controller (report in
# reports/). On by default; E2E_CONFORMANCE=0 skips it for a quick run.
if [[ ${E2E_CONFORMANCE:-1} == 1 ]]; then
  run deploy-controller "$S/deploy-controller.sh"
  run conformance "$S/conformance.sh"
fi
ok=1
