#!/usr/bin/env bash
# The cri-guard demo, the whole tutorial in one command (as root, on Debian/Ubuntu): installs the
# packages and test tools, builds cri-guard, then runs examples/demo.rs: a private containerd and
# registry in a temp dir, cosign 3 signing and attesting, the node installer on a temp root,
# cri-guard in front of containerd, pods through it, audit, metrics and the decision log.
# Exits non-zero if any outcome differs from the expected one; cleans up after itself.
#
#   scripts/demo.sh            debug build (shares the test build; about a minute when built)
#   scripts/demo.sh --release  release build (what a node runs; a clean build takes minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
profile=debug
flags=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  flags=(--release)
fi
cargo build --locked --quiet "${flags[@]}" --bin cri-guard --example demo
CRI_GUARD_BIN="$PWD/target/$profile/cri-guard" "target/$profile/examples/demo"
