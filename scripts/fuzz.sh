#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, libFuzzer through libfuzzer-sys on the stable toolchain: rustc's
# SanitizerCoverage pass, no nightly, no sanitizer runtime) and runs each one for a bounded time.
# A crash, a hang past the per-input timeout, or an out-of-memory stops the run with a non-zero
# exit and the saved input; see docs/fuzzing.md.
#
#   scripts/fuzz.sh                      every target, FUZZ_SECONDS (default 6) each
#   scripts/fuzz.sh TARGET...            those targets
#   FUZZ_SECONDS=3600 scripts/fuzz.sh registry     a long run of one target
#   scripts/fuzz.sh repro TARGET FILE    run one saved input (a crash) and show the panic
#   scripts/fuzz.sh build                build only
#
# Corpora accumulate under $FUZZ_DIR (default fuzz/work, not committed); seeds are written there
# from ../shared at every run (the real cosign/sigstore vectors and CRI requests).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
ROOT=$(pwd)
FUZZ_DIR=${FUZZ_DIR:-$ROOT/fuzz/work}
SECONDS_EACH=${FUZZ_SECONDS:-6}
TRIPLE=$(rustc -vV | awk '/^host:/ {print $2}')
BIN=$ROOT/fuzz/target/$TRIPLE/fuzz/cri-guard-fuzz
TARGETS=(reference policy sig_layer rekor dsse bundle certificate registry proxy)

build() {
  local t0=$SECONDS
  # The coverage flags apply to the target only (--target), not to build scripts or proc macros.
  RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
    cargo build --locked --quiet --manifest-path fuzz/Cargo.toml --profile fuzz \
      --target "$TRIPLE" --target-dir fuzz/target
  echo "fuzz: built in $((SECONDS - t0)) s"
}

if [ ! -d "$ROOT/../shared/testdata" ] && [ -z "${CRI_GUARD_FUZZ_SHARED:-}" ]; then
  if [ -n "${CRI_GUARD_REQUIRE_SHARED:-}" ]; then
    echo "fuzz: ../shared/testdata is absent and CRI_GUARD_REQUIRE_SHARED is set" >&2
    exit 1
  fi
  echo "fuzz: notice: ../shared/testdata is absent; seeds from the real vectors and the signer"
  echo "fuzz: keys are missing, so fuzzing is skipped (set CRI_GUARD_FUZZ_SHARED to run it)"
  exit 0
fi

case "${1:-}" in
  build) build; exit 0 ;;
  repro)
    [ $# -eq 3 ] || { echo "usage: scripts/fuzz.sh repro TARGET FILE" >&2; exit 64; }
    build
    RUST_BACKTRACE=1 CRI_GUARD_FUZZ_TARGET=$2 "$BIN" -runs=1 "$3"
    exit $?
    ;;
esac
if [ $# -gt 0 ]; then TARGETS=("$@"); fi
build

summary=()
failed=0
for t in "${TARGETS[@]}"; do
  work=$FUZZ_DIR/$t
  mkdir -p "$work/corpus" "$work/artifacts"
  rm -rf "$work/seeds"
  CRI_GUARD_FUZZ_TARGET=$t CRI_GUARD_FUZZ_SEEDS=$work/seeds "$BIN" 2>/dev/null
  log=$work/last.log
  # -timeout: one input may take at most 10 s; -rss_limit_mb/-malloc_limit_mb: memory bounds.
  # The fuzzer stops at the first crash and saves the input under artifacts/.
  rm -rf "$work/tmp" && mkdir -p "$work/tmp"
  set +e
  TMPDIR=$work/tmp CRI_GUARD_FUZZ_TARGET=$t "$BIN" -max_total_time="$SECONDS_EACH" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus" "$work/seeds" >"$log" 2>&1
  rc=$?
  set -e
  rm -rf "$work/tmp"
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1 || true)
  cov=$(grep -aoE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  edges=$(grep -aoE 'Loaded 1 modules +\([0-9]+ inline 8-bit counters\)' "$log" | grep -aoE '[0-9]+ inline' | cut -d' ' -f1 || true)
  corpus=$(find "$work/corpus" -type f | wc -l)
  line=$(printf '%-12s execs %-9s %-22s of %s edges, corpus %s' "$t" "${execs:-?}" "${cov:-cov: ?}" "${edges:-?}" "$corpus")
  if [ $rc -ne 0 ]; then
    failed=1
    artifact=$(grep -aoE "Test unit written to [^ ]+" "$log" | tail -1 | cut -d' ' -f5 || true)
    line="$line  FAILED (exit $rc)"
    grep -aE "panicked at|ERROR: libFuzzer|SUMMARY" -A3 "$log" | head -20 || true
    echo "fuzz: $t failed; input: ${artifact:-see $log}"
    echo "fuzz: reproduce with: scripts/fuzz.sh repro $t ${artifact:-FILE}"
  fi
  summary+=("$line")
done
echo "fuzz: ${SECONDS_EACH} s per target"
printf 'fuzz: %s\n' "${summary[@]}"
exit $failed
