#!/usr/bin/env bash
# Installs what building and testing cri-guard needs on Debian bookworm (run as root); idempotent,
# and fast (about a second) when everything is present.
#
# System packages (apt, bookworm):
# - the real parts the tests and the demo run: containerd 1.6, runc, docker-registry 2.8
# - the unit and installer checks: systemd (systemd-analyze, systemctl --root), strace,
#   shellcheck, and kubernetes-validate from PyPI (Kubernetes schemas, offline)
# - image building: umoci, busybox-static; the benchmark's plain byte relay: socat
# - Python's grpcio (a CRI client on gRPC's C core, for tests/grpcio.rs)
# - the fuzz targets (scripts/fuzz.sh): g++ builds libFuzzer (libfuzzer-sys) from source
# - a Rust toolchain (rustup) if cargo is missing
#
# Test tools under one project-owned prefix, $CRI_GUARD_TESTTOOLS (default /opt/cri-guard-testtools),
# never installed into dpkg and never put on the system's PATH (tests find them by that prefix):
# - bin/cosign, bin/crane          Debian sid's cosign and crane .debs, extracted (`dpkg -x`)
# - containerd-2.1/bin/            containerd, containerd-shim-runc-v2, ctr from sid's containerd 2.1
#                                  (the system's runc 1.1 serves as its runtime)
# - bin/refreg                     tools/refreg/main.go (go-containerregistry's registry with the
#                                  referrers API), built offline from sid's
#                                  golang-github-google-go-containerregistry-dev with
#                                  bookworm-backports' Go 1.23 (extracted under the prefix too)
# - bin/promtool                   from bookworm's prometheus .deb, extracted (only promtool is
#                                  kept; the server is never installed or started): checks the
#                                  alert rules in deploy/ and lints the /metrics exposition
# - VERSIONS                       the exact package versions in use
# Packages from other suites come through a private apt configuration under the prefix (its own
# sources, lists, cache and status), so the system's apt sources and package state stay as they are.
# Versions are pinned below; when the archive moves on, the error names the version it has now.
set -euo pipefail

PREFIX=${CRI_GUARD_TESTTOOLS:-/opt/cri-guard-testtools}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# Pinned package versions (suite: package=version).
COSIGN_DEB="cosign=3.1.1-2"                                                 # sid
CRANE_DEB="crane=0.20.7+ds1-5"                                              # sid
GGCR_DEV_DEB="golang-github-google-go-containerregistry-dev=0.20.7+ds1-5"   # sid
CONTAINERD2_DEB="containerd=2.1.9+ds1-5"                                    # sid
GO_DEBS="golang-1.23-go=1.23.5-1~bpo12+1 golang-1.23-src=1.23.5-1~bpo12+1"  # bookworm-backports
PROMETHEUS_DEB="prometheus=2.42.0+ds-5+deb12u1"                             # bookworm

log() { printf '[install-deps %s] %s\n' "$(date +%T)" "$*" >&2; }

# ---------------------------------------------------------------------------------------- system
pkgs=(containerd runc docker-registry umoci busybox-static socat ca-certificates curl gcc libc6-dev
  g++ systemd strace shellcheck python3 python3-pip)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
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
  log "installing the Rust toolchain with rustup"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
fi

# ------------------------------------------------------------------------------- test tools prefix
mkdir -p "$PREFIX"/{bin,pkg,stamps,debs,containerd-2.1/bin}
# Several worktrees may run this at once: one installer at a time per prefix.
exec 9>"$PREFIX/.lock"
if ! flock -w 900 9; then
  echo "install-deps: another install holds $PREFIX/.lock for more than 15 minutes" >&2
  exit 1
fi
# kubernetes-validate (PyPI; bundles the Kubernetes schemas, works offline) goes under the test
# tools prefix, not into the system's Python (Debian's is externally managed): tests put
# $PREFIX/python on PYTHONPATH.
if ! PYTHONPATH="$PREFIX/python" python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  python3 -m pip --version >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  log "installing kubernetes-validate 1.37.0 (PyPI) under $PREFIX/python"
  python3 -m pip install --quiet --disable-pip-version-check --target "$PREFIX/python" \
    kubernetes-validate==1.37.0
fi

stamp_ok() { [ "$(cat "$PREFIX/stamps/$1" 2>/dev/null)" = "$2" ]; }
stamp_set() { printf '%s\n' "$2" > "$PREFIX/stamps/$1"; }

# The private apt configuration: sid and bookworm-backports from the system's Debian mirror.
private_apt() {
  local a=$PREFIX/apt mirror
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/etc/sources.list.d" "$a/etc/preferences.d"
  cat > "$a/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main
EOF
  touch "$a/status"
  cat > "$a/apt.conf" <<EOF
Dir::Etc::SourceList "$a/etc/sources.list";
Dir::Etc::SourceParts "$a/etc/sources.list.d";
Dir::Etc::Preferences "$a/etc/preferences";
Dir::Etc::PreferencesParts "$a/etc/preferences.d";
Dir::State::Lists "$a/lists";
Dir::State::status "$a/status";
Dir::Cache "$a/cache";
Debug::NoLocking "true";
APT::Sandbox::User "root";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
EOF
  log "private apt: update (sid, bookworm-backports)"
  APT_CONFIG=$a/apt.conf apt-get update -qq
}

# fetch PKG=VERSION: downloads that .deb into $PREFIX/debs (once) and echoes its path.
fetch() {
  local spec=$1 name=${1%%=*} version=${1#*=} deb
  deb=$(ls "$PREFIX/debs/${name}_"*.deb 2>/dev/null | grep -F "_${version/:/%3a}_" | head -1 || true)
  if [ -z "$deb" ]; then
    if ! (cd "$PREFIX/debs" && APT_CONFIG=$PREFIX/apt/apt.conf apt-get download -qq "$spec" >&2); then
      local now
      now=$(APT_CONFIG=$PREFIX/apt/apt.conf apt-cache madison "$name" 2>/dev/null | awk -F'|' '{gsub(/ /,"",$2); gsub(/^ +| +$/,"",$3); print $2" ("$3")"}' | paste -sd, -)
      echo "install-deps: cannot download $spec; the archive now has: ${now:-nothing}." >&2
      echo "install-deps: update the pinned version in scripts/install-deps.sh (and docs/testbed.md)." >&2
      exit 1
    fi
    deb=$(ls "$PREFIX/debs/${name}_"*.deb | grep -F "_${version/:/%3a}_" | head -1)
  fi
  echo "$deb"
}

# extract PKG=VERSION: unpacks the .deb into $PREFIX/pkg/<name> (replacing what was there) and
# removes the downloaded file.
extract() {
  local name=${1%%=*} deb
  deb=$(fetch "$1")
  rm -rf "$PREFIX/pkg/$name"
  dpkg -x "$deb" "$PREFIX/pkg/$name"
  rm -f "$deb"
}

T0=$SECONDS
REFREG_KEY="$(sha256sum "$ROOT/tools/refreg/main.go" | cut -c1-16) $GGCR_DEV_DEB $GO_DEBS"
if ! stamp_ok cosign "$COSIGN_DEB" || ! stamp_ok crane "$CRANE_DEB" \
   || ! stamp_ok containerd-2.1 "$CONTAINERD2_DEB" || ! stamp_ok refreg "$REFREG_KEY"; then
  private_apt
fi

if ! stamp_ok cosign "$COSIGN_DEB"; then
  log "cosign: $COSIGN_DEB (sid)"
  extract "$COSIGN_DEB"
  ln -sfn "$PREFIX/pkg/cosign/usr/bin/cosign" "$PREFIX/bin/cosign"
  "$PREFIX/bin/cosign" version >/dev/null
  stamp_set cosign "$COSIGN_DEB"
fi

if ! stamp_ok crane "$CRANE_DEB"; then
  log "crane: $CRANE_DEB (sid)"
  extract "$CRANE_DEB"
  ln -sfn "$PREFIX/pkg/crane/usr/bin/crane" "$PREFIX/bin/crane"
  "$PREFIX/bin/crane" --help >/dev/null
  stamp_set crane "$CRANE_DEB"
fi

if ! stamp_ok containerd-2.1 "$CONTAINERD2_DEB"; then
  log "containerd 2.1: $CONTAINERD2_DEB (sid)"
  extract "$CONTAINERD2_DEB"
  for b in containerd containerd-shim-runc-v2 ctr; do
    ln -sfn "$PREFIX/pkg/containerd/usr/bin/$b" "$PREFIX/containerd-2.1/bin/$b"
  done
  "$PREFIX/containerd-2.1/bin/containerd" --version >/dev/null
  stamp_set containerd-2.1 "$CONTAINERD2_DEB"
fi

# refreg: rebuilt when its source, the library or Go changes. Go and the library source are
# needed only for the build (about 450 MB unpacked): they are removed afterwards.
if ! stamp_ok refreg "$REFREG_KEY"; then
  log "go: $GO_DEBS (bookworm-backports)"
  rm -rf "$PREFIX/pkg/go"
  for spec in $GO_DEBS; do
    deb=$(fetch "$spec")
    dpkg -x "$deb" "$PREFIX/pkg/go"
    rm -f "$deb"
  done
  log "go-containerregistry source: $GGCR_DEV_DEB (sid)"
  extract "$GGCR_DEV_DEB"
  log "refreg: building tools/refreg/main.go (GOPATH mode, offline)"
  gopath=$PREFIX/gopath
  rm -rf "$gopath"
  mkdir -p "$gopath/src/github.com/google" "$gopath/src/refreg"
  ln -s "$PREFIX/pkg/golang-github-google-go-containerregistry-dev/usr/share/gocode/src/github.com/google/go-containerregistry" \
    "$gopath/src/github.com/google/go-containerregistry"
  cp "$ROOT/tools/refreg/main.go" "$gopath/src/refreg/main.go"
  (cd "$gopath/src/refreg" && env -u GOFLAGS -u GOROOT GO111MODULE=off GOPATH="$gopath" GOPROXY=off \
     GOTOOLCHAIN=local GOTELEMETRY=off GOCACHE="$PREFIX/gocache" CGO_ENABLED=0 \
     "$PREFIX/pkg/go/usr/lib/go-1.23/bin/go" build -trimpath -o "$PREFIX/bin/refreg.new" .)
  mv "$PREFIX/bin/refreg.new" "$PREFIX/bin/refreg"
  rm -rf "$gopath" "$PREFIX/gocache" "$PREFIX/pkg/go" "$PREFIX/pkg/golang-github-google-go-containerregistry-dev"
  stamp_set refreg "$REFREG_KEY"
fi

# promtool: from the system's own suite (bookworm), downloaded with the system's apt and
# extracted; the package itself is not installed (it would start a Prometheus server).
if ! stamp_ok promtool "$PROMETHEUS_DEB"; then
  log "promtool: $PROMETHEUS_DEB (bookworm)"
  name=${PROMETHEUS_DEB%%=*}
  if ! (cd "$PREFIX/debs" && apt-get download -qq "$PROMETHEUS_DEB" >&2 2>/dev/null); then
    apt-get update -qq
    (cd "$PREFIX/debs" && apt-get download -qq "$PROMETHEUS_DEB" >&2) || {
      echo "install-deps: cannot download $PROMETHEUS_DEB; the archive now has: $(apt-cache madison prometheus | awk -F'|' '{gsub(/ /,"",$2); print $2}' | paste -sd, -)." >&2
      echo "install-deps: update the pinned version in scripts/install-deps.sh." >&2
      exit 1
    }
  fi
  deb=$(ls "$PREFIX/debs/${name}_"*.deb | head -1)
  rm -rf "$PREFIX/pkg/prometheus.tmp" "$PREFIX/pkg/promtool"
  dpkg -x "$deb" "$PREFIX/pkg/prometheus.tmp"
  mkdir -p "$PREFIX/pkg/promtool"
  mv "$PREFIX/pkg/prometheus.tmp/usr/bin/promtool" "$PREFIX/pkg/promtool/promtool"
  rm -rf "$PREFIX/pkg/prometheus.tmp" "$deb"
  ln -sfn "$PREFIX/pkg/promtool/promtool" "$PREFIX/bin/promtool"
  "$PREFIX/bin/promtool" --version >/dev/null 2>&1
  stamp_set promtool "$PROMETHEUS_DEB"
fi

cat > "$PREFIX/VERSIONS.new" <<EOF
# Test tools under $PREFIX (written by scripts/install-deps.sh)
cosign          $COSIGN_DEB (Debian sid)
crane           $CRANE_DEB (Debian sid)
containerd-2.1  $CONTAINERD2_DEB (Debian sid); runc: system $(dpkg-query -W -f='${Version}' runc 2>/dev/null)
promtool        $PROMETHEUS_DEB (Debian bookworm), promtool only
refreg          tools/refreg/main.go on $GGCR_DEV_DEB (Debian sid), built with $GO_DEBS (bookworm-backports)
containerd-1.6  system $(dpkg-query -W -f='${Version}' containerd 2>/dev/null)
docker-registry system $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null)
EOF
mv "$PREFIX/VERSIONS.new" "$PREFIX/VERSIONS"
if [ $((SECONDS - T0)) -gt 1 ]; then
  log "test tools ready under $PREFIX in $((SECONDS - T0)) s"
fi
