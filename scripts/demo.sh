#!/usr/bin/env bash
# The cri-guard demo (as root): installs the packages, builds, starts a private containerd and
# registry in a temp dir, puts cri-guard in front, runs a pod through it, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bin cri-guard --example demo
CRI_GUARD_BIN="$PWD/target/release/cri-guard" target/release/examples/demo
