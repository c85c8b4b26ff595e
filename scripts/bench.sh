#!/usr/bin/env bash
# The one benchmark report: starts the real test bed (each bench starts its own: registry,
# containerd, cri-guard's release binary, socat) and prints one table, every row measured in the
# same run as its baseline, with the target it meets; saves it in docs/benchmarks.md with the
# machine it ran on. Run it as root on a quiet machine (each table says how much CPU other
# processes used); a MISS is reported, never a failure.
#
#   scripts/bench.sh              full run (passthrough on containerd 1.6 and 2.1, verification,
#                                 CreateContainer, launch to first call, a 120 s soak)
#   scripts/bench.sh --quick      smoke run (fewer iterations, 30 s soak); not for docs
#   SOAK_SECONDS=3600 scripts/bench.sh     a longer soak
#
# Each bench's own output (its detailed tables) goes to target/bench-logs/<bench>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
quick=()
soak=${SOAK_SECONDS:-120}
if [ "${1:-}" = "--quick" ]; then
  quick=(--quick)
  soak=${SOAK_SECONDS:-30}
fi
t0=$SECONDS
scripts/install-deps.sh
logs=target/bench-logs
mkdir -p "$logs"
results=$(mktemp /tmp/cri-guard-bench.XXXXXX.jsonl)
trap 'rm -f "$results"' EXIT
export CRI_GUARD_BENCH_RESULTS=$results

echo "bench.sh: building (release binary and benches)"
cargo build --locked --release --quiet
cargo bench --locked --no-run --quiet 2>/dev/null || cargo bench --locked --no-run
tb=$SECONDS

run() { # name, then the command
  local name=$1 t=$SECONDS
  shift
  echo "bench.sh: $name ..."
  if ! "$@" >"$logs/$name.log" 2>&1; then
    echo "bench.sh: $name failed; its log: $logs/$name.log" >&2
    tail -20 "$logs/$name.log" >&2
    exit 1
  fi
  echo "bench.sh: $name done in $((SECONDS - t)) s"
}
run passthrough-1.6 env CRI_GUARD_CONTAINERD=1.6 cargo bench --locked --quiet --bench passthrough -- "${quick[@]}"
run passthrough-2.1 env CRI_GUARD_CONTAINERD=2.1 cargo bench --locked --quiet --bench passthrough -- "${quick[@]}"
run verify cargo bench --locked --quiet --bench verify -- "${quick[@]}"
run create cargo bench --locked --quiet --bench create -- "${quick[@]}"
run startup cargo bench --locked --quiet --bench startup -- "${quick[@]}"
run soak cargo bench --locked --quiet --bench soak -- --seconds "$soak"

out=docs/benchmarks.md
if [ ${#quick[@]} -gt 0 ]; then
  out=$logs/benchmarks-quick.md
  cp docs/benchmarks.md "$out"
fi
echo "bench.sh: measured in $((SECONDS - tb)) s after a $((tb - t0)) s build; the report:"
echo
cargo bench --locked --quiet --bench report -- "$results" "$out" "$((SECONDS - t0))"
