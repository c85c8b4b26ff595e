#!/usr/bin/env bash
# cri-guard-node.sh: installs cri-guard on a node as a systemd service, keeps its policy in sync,
# and removes it again, restoring the node exactly. The DaemonSet in deploy/kubernetes/ runs it in
# a privileged container with the host's / mounted at /host; tests run it against a temp root.
#
#   cri-guard-node.sh [--root DIR] [--offline] install | uninstall | sync-policy | daemon
#
#   install      copy the binary, unit, configuration and policy onto the host; enable and
#                (re)start the unit when something it runs changed; with
#                CRI_GUARD_SET_KUBELET_ENDPOINT=true, point the kubelet at cri-guard (backing up
#                the original) and restart the kubelet; with it false, undo that if done before.
#                Safe to repeat: a run that finds nothing to do changes nothing and says so.
#   uninstall    restore the kubelet's files byte for byte, stop and disable the unit, remove
#                every file and directory install created and put back any it replaced.
#   sync-policy  validate the policy source and, if it differs, swap it in atomically (a new
#                ..<timestamp> directory and a `..data` link renamed over the old one, as the
#                kubelet does for ConfigMap volumes); cri-guard notices and reloads it.
#   daemon       what the DaemonSet's container runs: $CRI_GUARD_ACTION (install or uninstall),
#                then, after an install, repeat it every $CRI_GUARD_SYNC_INTERVAL seconds so
#                ConfigMap updates reach the host; touches $CRI_GUARD_READY_FILE when done.
#
# --root DIR     the host's root (default: $CRI_GUARD_ROOT or /). Every host path is under it.
# --offline      DIR is not a running system: enable/disable the unit with `systemctl --root`,
#                and only print the start/restart commands a live node would get.
#
# Host commands (systemctl) run through $CRI_GUARD_HOST_EXEC, by default
# `nsenter --target 1 --mount --uts --ipc --net --pid --`: the host's PID 1 namespaces, so the
# host's own systemctl talks to the host's systemd (the DaemonSet sets hostPID: true).
# Tests replace it with a recorder. Everything else is read from the environment:
#   CRI_GUARD_SRC_BIN       the binary to install      (/opt/cri-guard/cri-guard)
#   CRI_GUARD_TOOL          the binary that validates and edits here (default: CRI_GUARD_SRC_BIN)
#   CRI_GUARD_SRC_UNIT      the unit                   (/opt/cri-guard/cri-guard.service)
#   CRI_GUARD_SRC_CONFIG    cri-guard.toml             (/etc/cri-guard-config/cri-guard.toml)
#   CRI_GUARD_SRC_POLICY    the policy directory, e.g. a ConfigMap volume: policy.toml and the
#                           files it names by relative path          (/etc/cri-guard-policy)
#   CRI_GUARD_SET_KUBELET_ENDPOINT  true: point the kubelet at cri-guard            (false)
#   CRI_GUARD_ENDPOINT      the kubelet's new endpoint (unix:///run/cri-guard/cri-guard.sock)
#   CRI_GUARD_KUBELET_CONFIG  KubeletConfiguration     (/var/lib/kubelet/config.yaml)
#   CRI_GUARD_KUBELET_FLAGS   kubeadm's flags file, edited when present
#                                                      (/var/lib/kubelet/kubeadm-flags.env)
# Exit codes: 0 done (or nothing to do), 1 refused or failed (the message says why; what was
# checked before changing anything leaves the node untouched), 2 usage.
set -euo pipefail

ROOT=${CRI_GUARD_ROOT:-/}
OFFLINE=${CRI_GUARD_OFFLINE:-false}
SRC_BIN=${CRI_GUARD_SRC_BIN:-/opt/cri-guard/cri-guard}
TOOL=${CRI_GUARD_TOOL:-$SRC_BIN}
SRC_UNIT=${CRI_GUARD_SRC_UNIT:-/opt/cri-guard/cri-guard.service}
SRC_CONFIG=${CRI_GUARD_SRC_CONFIG:-/etc/cri-guard-config/cri-guard.toml}
SRC_POLICY=${CRI_GUARD_SRC_POLICY:-/etc/cri-guard-policy}
SET_KUBELET=${CRI_GUARD_SET_KUBELET_ENDPOINT:-false}
ENDPOINT=${CRI_GUARD_ENDPOINT:-unix:///run/cri-guard/cri-guard.sock}
KUBELET_CONFIG=${CRI_GUARD_KUBELET_CONFIG:-/var/lib/kubelet/config.yaml}
KUBELET_FLAGS=${CRI_GUARD_KUBELET_FLAGS:-/var/lib/kubelet/kubeadm-flags.env}
HOST_EXEC=${CRI_GUARD_HOST_EXEC:-nsenter --target 1 --mount --uts --ipc --net --pid --}
SYNC_INTERVAL=${CRI_GUARD_SYNC_INTERVAL:-10}
READY_FILE=${CRI_GUARD_READY_FILE:-/tmp/cri-guard-node.ready}

# Where things go on the host (under ROOT).
UNIT_NAME=cri-guard.service
BIN=/usr/local/bin/cri-guard
UNIT=/etc/systemd/system/$UNIT_NAME
CONFIG=/etc/cri-guard/cri-guard.toml
POLICY_DIR=/etc/cri-guard/policy
STATE=/var/lib/cri-guard/installer
# Later: the metrics listener. It is configured in cri-guard.toml; nothing here changes for it.

log() { echo "cri-guard-node: $*"; }
fail() { echo "cri-guard-node: error: $*" >&2; exit 1; }
usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ACTION=
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --offline) OFFLINE=true; shift ;;
    -h|--help) usage ;;
    install|uninstall|sync-policy|daemon) [ -z "$ACTION" ] || usage; ACTION=$1; shift ;;
    *) echo "cri-guard-node: unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$ACTION" ] || usage
[ -d "$ROOT" ] || fail "root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd -P)
case "$SET_KUBELET" in true|false) ;; *) fail "CRI_GUARD_SET_KUBELET_ENDPOINT must be true or false, not '$SET_KUBELET'" ;; esac

# A host path under ROOT.
h() { if [ "$ROOT" = / ]; then printf '%s' "$1"; else printf '%s%s' "$ROOT" "$1"; fi; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cri-guard-node.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
CHANGES=0
QUIET_NOOP=false
changed() { CHANGES=$((CHANGES + 1)); log "$*"; }

# --- host commands -------------------------------------------------------------------------------
host_systemctl() {
  if [ "$OFFLINE" = true ]; then
    case "$1" in
      enable|disable|is-enabled) systemctl --root="$ROOT" --quiet "$@" ;;
      is-active) return 0 ;;
      *) log "offline: a live node would run: systemctl $*" ;;
    esac
  else
    # shellcheck disable=SC2086 # HOST_EXEC is a command prefix, split on purpose
    $HOST_EXEC systemctl "$@"
  fi
}

# --- state: what install created and what it replaced ---------------------------------------------
created_list() { h "$STATE/created"; }
is_created() { [ -f "$(created_list)" ] && grep -qxF -- "$1" "$(created_list)"; }
record_created() { is_created "$1" || echo "$1" >>"$(created_list)"; }
backup_of() { h "$STATE/backup$1"; }
written_of() { h "$STATE/written$1.sha256"; }
owned() { is_created "$1" || [ -e "$(backup_of "$1")" ] || [ -L "$(backup_of "$1")" ]; }

# mkdir -p that records each directory it makes (host path; recorded relative to ROOT).
mkdir_recorded() {
  local dir=$1 missing=() d
  d=$dir
  while [ ! -d "$(h "$d")" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
  for d in "${missing[@]}"; do
    mkdir -m 0755 "$(h "$d")"
    # The state directory may not exist yet while it is being made: remember, write later.
    PENDING_DIRS+=("$d")
  done
  flush_pending
}
PENDING_DIRS=()
flush_pending() {
  if [ -d "$(h "$STATE")" ]; then
    local d
    for d in "${PENDING_DIRS[@]}"; do record_created "$d"; done
    PENDING_DIRS=()
  fi
}

init_state() {
  if [ ! -d "$(h "$STATE")" ]; then
    mkdir_recorded "$STATE"
    chmod 0700 "$(h "$STATE")"
  fi
}

# Saves the original of a host file we are about to replace, once.
backup() {
  local path=$1 b
  b=$(backup_of "$path")
  if [ ! -e "$b" ] && [ ! -L "$b" ]; then
    mkdir -p "$(dirname "$b")"
    cp -a "$(h "$path")" "$b"
  fi
}

# Installs file $1 at host path $2 with mode $3, atomically (copy beside it, rename over it).
# Sets INSTALLED=true when something changed.
install_file() {
  local src=$1 path=$2 mode=$3 dst
  dst=$(h "$path")
  INSTALLED=false
  if [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
    return 0
  fi
  if [ -e "$dst" ] || [ -L "$dst" ]; then
    owned "$path" || backup "$path"
  else
    mkdir_recorded "$(dirname "$path")"
    record_created "$path"
  fi
  cp "$src" "$dst.cri-guard-new"
  chmod "$mode" "$dst.cri-guard-new"
  mv -f "$dst.cri-guard-new" "$dst"
  INSTALLED=true
  changed "installed $path"
}

# Puts host path $1 back as it was before install: the backup, or nothing.
restore_or_remove() {
  local path=$1 b dst
  b=$(backup_of "$path")
  dst=$(h "$path")
  if [ -e "$b" ] || [ -L "$b" ]; then
    rm -rf "$dst.cri-guard-new"
    cp -a "$b" "$dst.cri-guard-new"
    mv -fT "$dst.cri-guard-new" "$dst"
    rm -rf "$b"
    changed "restored $path"
  elif is_created "$path" && { [ -e "$dst" ] || [ -L "$dst" ]; }; then
    rm -rf "$dst"
    changed "removed $path"
  fi
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- the policy --------------------------------------------------------------------------------
# Copies the policy source (following a ConfigMap volume's links, skipping its `..` entries) to
# $WORK/policy and validates it with the binary that will run it.
stage_policy() {
  [ -d "$SRC_POLICY" ] || fail "policy source $SRC_POLICY is not a directory"
  [ -f "$SRC_POLICY/policy.toml" ] || fail "policy source $SRC_POLICY has no policy.toml"
  rm -rf "$WORK/policy"
  mkdir "$WORK/policy"
  local entry
  for entry in "$SRC_POLICY"/* "$SRC_POLICY"/.[!.]*; do
    [ -e "$entry" ] || continue
    cp -rL "$entry" "$WORK/policy/"
  done
  local out
  if ! out=$("$TOOL" check-config --policy "$WORK/policy/policy.toml" 2>&1); then
    fail "the new policy is not valid; the node keeps its current one:
$out"
  fi
}

# Validates cri-guard.toml together with the staged policy (its `policy` line pointed there).
check_config() {
  [ -f "$SRC_CONFIG" ] || fail "configuration $SRC_CONFIG not found"
  sed -E "s|^[[:space:]]*policy[[:space:]]*=.*|policy = \"$WORK/policy/policy.toml\"|" \
    "$SRC_CONFIG" >"$WORK/cri-guard.toml"
  local out
  if ! out=$("$TOOL" check-config "$WORK/cri-guard.toml" 2>&1); then
    fail "the configuration $SRC_CONFIG is not valid:
$out"
  fi
  if ! grep -qE "^[[:space:]]*policy[[:space:]]*=[[:space:]]*\"$POLICY_DIR/policy.toml\"" "$SRC_CONFIG"; then
    log "warning: $SRC_CONFIG does not set policy = \"$POLICY_DIR/policy.toml\"; the synced policy is not the one cri-guard uses"
  fi
}

# Swaps the staged policy in, if it differs from the one on the host.
apply_policy() {
  local dir current ts name
  dir=$(h "$POLICY_DIR")
  if [ -d "$dir" ] && [ ! -L "$dir/..data" ] && ! owned "$POLICY_DIR"; then
    fail "$POLICY_DIR exists and was not made by this installer; move it away first"
  fi
  if [ -L "$dir/..data" ] && diff -r -q "$WORK/policy" "$dir/..data/" >/dev/null 2>&1; then
    return 0
  fi
  if [ ! -d "$dir" ]; then
    mkdir_recorded "$POLICY_DIR"
  fi
  ts="..$(date -u +%Y_%m_%d_%H_%M_%S).$(date -u +%N)"
  rm -rf "$dir/..staging"
  cp -a "$WORK/policy" "$dir/..staging"
  chmod -R go-w "$dir/..staging"
  mv -T "$dir/..staging" "$dir/$ts"
  current=$(readlink "$dir/..data" 2>/dev/null || true)
  ln -sfn "$ts" "$dir/..data_tmp"
  mv -fT "$dir/..data_tmp" "$dir/..data"
  local entry
  shopt -s nullglob dotglob
  for entry in "$dir/$ts"/*; do
    name=${entry##*/}
    [ -L "$dir/$name" ] || ln -s "..data/$name" "$dir/$name"
  done
  for entry in "$dir"/*; do
    name=${entry##*/}
    case "$name" in ..*) continue ;; esac
    [ -e "$dir/..data/$name" ] || rm -f "$dir/$name"
  done
  shopt -u nullglob dotglob
  if [ -n "$current" ] && [ "$current" != "$ts" ]; then rm -rf "${dir:?}/$current"; fi
  changed "policy updated ($POLICY_DIR/..data -> $ts)"
}

# --- the kubelet -------------------------------------------------------------------------------
# Plans the kubelet edits into $WORK/kubelet/<n>.new; fails (changing nothing) if a file can't
# be edited safely.
KUBELET_FILES=()
plan_kubelet() {
  KUBELET_FILES=()
  mkdir -p "$WORK/kubelet"
  local cfg flags out
  cfg=$(h "$KUBELET_CONFIG")
  flags=$(h "$KUBELET_FLAGS")
  if [ "$SET_KUBELET" = true ]; then
    [ -f "$cfg" ] || fail "kubelet configuration $KUBELET_CONFIG not found (set CRI_GUARD_KUBELET_CONFIG)"
    if ! out=$("$TOOL" kubelet-endpoint --endpoint "$ENDPOINT" "$cfg" 2>&1 >"$WORK/kubelet/config.new"); then
      fail "cannot point the kubelet at cri-guard: $KUBELET_CONFIG left untouched: ${out#cri-guard: }"
    fi
    KUBELET_FILES+=("$KUBELET_CONFIG:config")
    if [ -f "$flags" ]; then
      if ! out=$("$TOOL" kubelet-endpoint --flags --endpoint "$ENDPOINT" "$flags" 2>&1 >"$WORK/kubelet/flags.new"); then
        fail "cannot point the kubelet at cri-guard: $KUBELET_FLAGS left untouched: ${out#cri-guard: }"
      fi
      KUBELET_FILES+=("$KUBELET_FLAGS:flags")
    fi
  else
    check_kubelet_restorable
  fi
}

# Every kubelet file we changed must still be as we wrote it, or restoring would lose edits
# made since; refuse (changing nothing) if not.
check_kubelet_restorable() {
  local path
  for path in "$KUBELET_CONFIG" "$KUBELET_FLAGS"; do
    [ -e "$(backup_of "$path")" ] || continue
    if [ ! -f "$(h "$path")" ] || [ "$(sha "$(h "$path")")" != "$(cat "$(written_of "$path")")" ]; then
      fail "$path changed since cri-guard-node.sh pointed it at cri-guard; not restoring it over those changes. \
The original is at $STATE/backup$path: restore it by hand, then run again"
    fi
  done
}

# Writes the planned kubelet edits (backing up the originals once); sets KUBELET_CHANGED.
apply_kubelet() {
  local entry path kind dst
  for entry in "${KUBELET_FILES[@]}"; do
    path=${entry%:*}
    kind=${entry##*:}
    dst=$(h "$path")
    if cmp -s "$WORK/kubelet/$kind.new" "$dst"; then continue; fi
    backup "$path"
    cp -p "$dst" "$dst.cri-guard-new"
    cat "$WORK/kubelet/$kind.new" >"$dst.cri-guard-new"
    mv -f "$dst.cri-guard-new" "$dst"
    mkdir -p "$(dirname "$(written_of "$path")")"
    sha "$dst" >"$(written_of "$path")"
    KUBELET_CHANGED=true
    changed "kubelet: $path now points at $ENDPOINT (original saved in $STATE/backup$path):"
    diff -u --label "$path (before)" --label "$path (after)" "$(backup_of "$path")" "$dst" | sed 's/^/    /' || true
  done
}

# Puts back every kubelet file we changed; sets KUBELET_CHANGED.
restore_kubelet() {
  local path
  for path in "$KUBELET_CONFIG" "$KUBELET_FLAGS"; do
    [ -e "$(backup_of "$path")" ] || continue
    restore_or_remove "$path"
    rm -f "$(written_of "$path")"
    KUBELET_CHANGED=true
  done
}

# --- actions -----------------------------------------------------------------------------------
lock() {
  exec 9<"$ROOT"
  flock -w 120 9 || fail "another cri-guard-node.sh holds the lock on $ROOT"
}

do_install() {
  # Check everything first: a refusal here leaves the node exactly as it was.
  [ -x "$SRC_BIN" ] || fail "binary $SRC_BIN not found or not executable"
  [ -x "$TOOL" ] || fail "binary $TOOL not found or not executable"
  [ -f "$SRC_UNIT" ] || fail "unit $SRC_UNIT not found"
  stage_policy
  check_config
  plan_kubelet

  init_state
  local restart=false reload=false
  install_file "$SRC_BIN" "$BIN" 0755
  [ "$INSTALLED" = false ] || restart=true
  install_file "$SRC_UNIT" "$UNIT" 0644
  [ "$INSTALLED" = false ] || { restart=true; reload=true; }
  install_file "$SRC_CONFIG" "$CONFIG" 0644
  [ "$INSTALLED" = false ] || restart=true
  apply_policy
  if [ "$reload" = true ]; then host_systemctl daemon-reload; fi
  if ! host_systemctl is-enabled "$UNIT_NAME" >/dev/null 2>&1; then
    host_systemctl enable "$UNIT_NAME"
    changed "enabled $UNIT_NAME"
  fi
  if [ "$restart" = true ] || ! host_systemctl is-active --quiet "$UNIT_NAME"; then
    # Type=notify: this returns once cri-guard's socket accepts calls with the policy loaded.
    host_systemctl restart "$UNIT_NAME" || fail "$UNIT_NAME did not start; see: journalctl -u $UNIT_NAME"
    [ "$OFFLINE" = true ] || log "(re)started $UNIT_NAME"
  fi
  KUBELET_CHANGED=false
  if [ "$SET_KUBELET" = true ]; then apply_kubelet; else restore_kubelet; fi
  if [ "$KUBELET_CHANGED" = true ]; then
    host_systemctl restart kubelet.service || fail "the kubelet did not restart; see: journalctl -u kubelet"
    [ "$OFFLINE" = true ] || log "restarted kubelet.service"
  fi
  [ "$CHANGES" -gt 0 ] || [ "$QUIET_NOOP" = true ] || log "no changes: cri-guard is installed and up to date"
}

do_sync_policy() {
  [ -L "$(h "$POLICY_DIR")/..data" ] || fail "no policy installed at $POLICY_DIR; run install first"
  stage_policy
  apply_policy
  [ "$CHANGES" -gt 0 ] || log "no changes: the policy on the node is current"
}

do_uninstall() {
  if [ ! -d "$(h "$STATE")" ]; then
    log "no changes: not installed (no $STATE)"
    return 0
  fi
  check_kubelet_restorable
  KUBELET_CHANGED=false
  restore_kubelet
  if [ "$KUBELET_CHANGED" = true ]; then
    host_systemctl restart kubelet.service || fail "the kubelet did not restart; see: journalctl -u kubelet"
    [ "$OFFLINE" = true ] || log "restarted kubelet.service (back on its original runtime endpoint)"
  fi
  if [ -e "$(h "$UNIT")" ]; then
    if [ "$OFFLINE" = true ]; then
      host_systemctl disable "$UNIT_NAME" || true
      host_systemctl stop "$UNIT_NAME"
    else
      host_systemctl disable --now "$UNIT_NAME" || fail "could not stop and disable $UNIT_NAME"
    fi
    changed "stopped and disabled $UNIT_NAME"
  fi
  local path
  for path in "$BIN" "$UNIT" "$CONFIG"; do restore_or_remove "$path"; done
  if is_created "$POLICY_DIR"; then rm -rf "$(h "$POLICY_DIR")"; changed "removed $POLICY_DIR"; fi
  host_systemctl daemon-reload
  # Directories we made, deepest first; the state directory (and its own parents) last.
  local dirs=()
  mapfile -t dirs < <(tac "$(created_list)")
  local state_dirs=()
  for path in "${dirs[@]}"; do
    case "$STATE/" in "$path"/*) state_dirs+=("$path"); continue ;; esac
    if [ -d "$(h "$path")" ]; then rmdir "$(h "$path")" 2>/dev/null || true; fi
  done
  rm -rf "$(h "$STATE")"
  for path in "${state_dirs[@]}"; do
    [ "$path" = "$STATE" ] && continue
    rmdir "$(h "$path")" 2>/dev/null || true
  done
  log "uninstalled"
}

do_daemon() {
  local action=${CRI_GUARD_ACTION:-install}
  trap 'exit 0' TERM INT
  rm -f "$READY_FILE"
  case "$action" in
    install)
      while true; do
        # Say "no changes" once, not every interval.
        if ( lock; do_install ); then touch "$READY_FILE"; QUIET_NOOP=true; else rm -f "$READY_FILE"; QUIET_NOOP=false; fi
        sleep "$SYNC_INTERVAL" & wait $!
      done ;;
    uninstall)
      until ( lock; do_uninstall ); do sleep "$SYNC_INTERVAL" & wait $!; done
      touch "$READY_FILE"
      log "uninstalled; delete the DaemonSet now"
      while true; do sleep 3600 & wait $!; done ;;
    *) fail "CRI_GUARD_ACTION must be install or uninstall, not '$action'" ;;
  esac
}

case "$ACTION" in
  install) lock; do_install ;;
  uninstall) lock; do_uninstall ;;
  sync-policy) lock; do_sync_policy ;;
  daemon) do_daemon ;;
esac
