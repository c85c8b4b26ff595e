#!/usr/bin/env bash
# Installs what building and testing cri-guard needs on Debian/Ubuntu (run as root); idempotent.
# - the real parts the tests and the demo run: containerd, runc, docker-registry
# - image building: umoci, busybox-static; the benchmark's plain byte relay: socat
# - Python's grpcio (a CRI client on gRPC's C core, for tests/grpcio.rs)
# - a Rust toolchain (rustup) if cargo is missing
set -euo pipefail
pkgs=(containerd runc docker-registry umoci busybox-static socat python3 python3-pip ca-certificates curl gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# tests/grpcio.rs drives the CRI with Python's grpcio (gRPC's C core); Debian's python3-grpcio
# is older than the C core's percent-encoded unix-socket authority (1.57+), so take it from PyPI.
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  echo "installing grpcio (pip)"
  python3 -m pip install --quiet grpcio || python3 -m pip install --quiet --break-system-packages grpcio
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
fi
