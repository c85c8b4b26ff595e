//! Where the test tools that are not on the system's PATH live: cosign 3, crane, the referrers
//! registry launcher (`refreg`), containerd 2.1 and promtool, all under one prefix that
//! `scripts/install-deps.sh` fills. The prefix is `$CRI_GUARD_TESTTOOLS`, else
//! `/opt/cri-guard-testtools`; nothing here changes the PATH of anything but the children we start.

use std::path::PathBuf;

/// Env var naming the tools prefix.
pub const PREFIX_ENV: &str = "CRI_GUARD_TESTTOOLS";
/// The prefix when the env var is unset.
pub const DEFAULT_PREFIX: &str = "/opt/cri-guard-testtools";

/// The tools prefix.
pub fn prefix() -> PathBuf {
    std::env::var_os(PREFIX_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX))
}

/// `<prefix>/<rel>`, or a panic that says how to install it.
pub fn require(rel: &str) -> PathBuf {
    let path = prefix().join(rel);
    assert!(
        path.is_file(),
        "{} not found: run scripts/install-deps.sh (as root) to install the test tools under {} \
         (or point {PREFIX_ENV} at a prefix that has them)",
        path.display(),
        prefix().display()
    );
    path
}

/// Real cosign 3 (Debian's cosign 3.1.1).
pub fn cosign() -> PathBuf {
    require("bin/cosign")
}

/// crane (go-containerregistry 0.20.7).
pub fn crane() -> PathBuf {
    require("bin/crane")
}

/// go-containerregistry's registry with the referrers API (`tools/refreg/main.go`).
pub fn refreg() -> PathBuf {
    require("bin/refreg")
}

/// promtool (from Debian bookworm's prometheus package): checks rule files, lints expositions.
pub fn promtool() -> PathBuf {
    require("bin/promtool")
}

/// The directory with containerd 2.1's `containerd`, `containerd-shim-runc-v2` and `ctr`.
pub fn containerd21_dir() -> PathBuf {
    let dir = prefix().join("containerd-2.1/bin");
    for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        require(&format!("containerd-2.1/bin/{b}"));
    }
    dir
}

/// The exact versions install-deps.sh recorded (for messages and test output).
pub fn versions() -> String {
    std::fs::read_to_string(prefix().join("VERSIONS")).unwrap_or_default()
}
