#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each.
#
#   FUZZ_SECONDS=30 (per target)  FUZZ_TARGETS="jwt compile" (default: all)
#
# Installs what it needs, once: cargo-fuzz (cached in ~/.cargo/bin) and a
# C++ compiler for libFuzzer (scripts/install-deps.sh fuzz). Works with only
# the stable toolchain: cargo fuzz passes -Z flags, which stable accepts
# with RUSTC_BOOTSTRAP=1 (the same compiler that builds the gateway, so the
# build is the one CI tests). The checked-in corpus (fuzz/corpus/TARGET)
# seeds each run and is not modified; new inputs go to a scratch directory.
# A crash fails the script and leaves the input in fuzz/artifacts/TARGET:
# turn it into a regression test in the normal test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
bash scripts/install-deps.sh fuzz

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# Own target dir: instrumented builds must not evict the normal ones.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-/var/tmp/portcullis-target}/fuzz}"
export RUSTC_BOOTSTRAP=1
# Safe Rust: libFuzzer's coverage and panic detection are what matter; the
# address sanitizer would double the build for little. FUZZ_SANITIZER=address
# to use it anyway.
sanitizer=${FUZZ_SANITIZER:-none}

targets=${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list)}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "[fuzz] building:" $targets >&2
for target in $targets; do
  if ! cargo fuzz build --fuzz-dir fuzz -s "$sanitizer" "$target" >"$scratch/build.log" 2>&1; then
    tail -n 40 "$scratch/build.log" >&2
    echo "[fuzz] build of $target failed" >&2
    exit 1
  fi
done

failed=()
for target in $targets; do
  mkdir -p "$scratch/$target" "fuzz/corpus/$target"
  log="$scratch/$target.log"
  echo "[fuzz] $target: ${seconds}s" >&2
  if cargo fuzz run --fuzz-dir fuzz -s "$sanitizer" "$target" \
      "$scratch/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo "?")
    echo "[fuzz] $target: ok, $runs runs, coverage $cov" >&2
  else
    echo "[fuzz] $target: FAILED" >&2
    tail -n 40 "$log" >&2
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[fuzz] crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "[fuzz] all targets ok" >&2
