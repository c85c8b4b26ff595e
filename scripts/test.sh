#!/usr/bin/env bash
# Runs the whole test suite (as root): unit tests, in-process fake-upstream tests, and tests
# against a real containerd and registry that each test starts and stops in its own temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo test --locked --lib --bins --tests
