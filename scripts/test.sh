#!/usr/bin/env bash
# Runs the whole test suite (as root): unit tests, in-process fake-upstream tests, and tests
# against a real containerd and registries that each test starts and stops in its own temp dir.
# Then the containerd matrix: every test file that starts a real test bed runs again against
# containerd 2.1 (the first pass uses the system's containerd 1.6).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cat "${CRI_GUARD_TESTTOOLS:-/opt/cri-guard-testtools}/VERSIONS"

t0=$SECONDS
CRI_GUARD_CONTAINERD=1.6 cargo test --locked --lib --bins --tests
echo "test.sh: whole suite on containerd 1.6 in $((SECONDS - t0)) s"

# Test files with a real bed: those that start a TestBed, directly or through tests/guarded.
bed_tests=()
for f in tests/*.rs; do
  if grep -qE 'TestBed::start|Guarded::start' "$f"; then
    bed_tests+=(--test "$(basename "$f" .rs)")
  fi
done
t0=$SECONDS
echo "test.sh: containerd 2.1:${bed_tests[*]//--test/}"
CRI_GUARD_CONTAINERD=2.1 cargo test --locked "${bed_tests[@]}"
echo "test.sh: real-containerd tests on containerd 2.1 in $((SECONDS - t0)) s"
