#!/usr/bin/env bash
# Installs what building and testing cri-guard needs on Debian/Ubuntu (run as root); idempotent.
# - the real parts the tests and the demo run: containerd, runc, docker-registry
# - the unit and installer checks: systemd (systemd-analyze, systemctl --root), strace,
#   shellcheck, and kubernetes-validate from PyPI (Kubernetes schemas, offline)
# - image building: umoci, busybox-static; the benchmark's plain byte relay: socat
# - a Rust toolchain (rustup) if cargo is missing
set -euo pipefail
pkgs=(containerd runc docker-registry umoci busybox-static socat ca-certificates curl gcc libc6-dev
  systemd strace shellcheck)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  echo "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
fi
