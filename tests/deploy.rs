//! The Kubernetes manifests in deploy/kubernetes/: valid against the Kubernetes schema (offline,
//! with the schemas the `kubernetes-validate` PyPI package bundles), their ConfigMaps hold a
//! configuration and policy cri-guard accepts, and the DaemonSet is wired to the installer
//! script and image as they are.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

/// `python3 -m kubernetes_validate` (the PyPI package bundles the schemas; no network), from
/// the test tools prefix where scripts/install-deps.sh puts it.
fn kubernetes_validate() -> Command {
    let prefix = std::env::var_os("CRI_GUARD_TESTTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/cri-guard-testtools"));
    let python = |args: &[&str]| {
        let mut cmd = Command::new("python3");
        cmd.env("PYTHONPATH", prefix.join("python"))
            .args(["-m", "kubernetes_validate"])
            .args(args);
        cmd
    };
    let probe = python(&["--version"]).output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "kubernetes-validate missing under {}/python: run scripts/install-deps.sh",
        prefix.display()
    );
    python(&[])
}

/// Every manifest passes strict schema validation for the oldest and newest Kubernetes
/// versions we name; a manifest with a mistake does not (so the check can fail).
#[test]
fn manifests_match_the_kubernetes_schema() {
    for version in ["1.28.0", "1.37.0"] {
        let out = kubernetes_validate()
            .args(["--strict", "--quiet", "-k", version])
            .args(manifests())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let ds = std::fs::read_to_string(repo("deploy/kubernetes/40-daemonset.yaml")).unwrap();
    std::fs::write(
        &bad,
        ds.replace("hostPID: true", "hostPID: true\n      hostPid: true"),
    )
    .unwrap();
    let out = kubernetes_validate()
        .args(["--strict", "--quiet"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "an unknown field passed validation");
}

fn load(name: &str) -> Yaml {
    let text = std::fs::read_to_string(repo(&format!("deploy/kubernetes/{name}"))).unwrap();
    let mut docs = YamlLoader::load_from_str(&text).unwrap();
    assert_eq!(docs.len(), 1, "{name}");
    docs.remove(0)
}

/// The shipped configuration and policy are valid, and the configuration reads the policy from
/// where the installer keeps it.
#[test]
fn configmaps_hold_a_valid_configuration_and_policy() {
    let config = load("20-config.yaml")["data"]["cri-guard.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let policy = load("30-policy.yaml")["data"]["policy.toml"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config.contains("policy = \"/etc/cri-guard/policy/policy.toml\"\n"),
        "{config}"
    );
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, &policy).unwrap();
    let config_path = dir.path().join("cri-guard.toml");
    std::fs::write(
        &config_path,
        config.replace(
            "/etc/cri-guard/policy/policy.toml",
            policy_path.to_str().unwrap(),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // What the ConfigMap starts with must not block anything on a fresh cluster.
    let p = cri_guard::verify::policy::Policy::load(&policy_path).unwrap();
    assert_eq!(p.default.as_str(), "audit");
}

/// The DaemonSet runs the installer in daemon mode on the host's root, in the host's PID
/// namespace (for nsenter), with the ConfigMaps where the script looks for them, the kubelet
/// switch off unless asked for, and the image layout the Dockerfile builds.
#[test]
fn daemonset_is_wired_to_the_installer() {
    let ds = load("40-daemonset.yaml");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    assert_eq!(spec["automountServiceAccountToken"].as_bool(), Some(false));
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true));
    let command: Vec<&str> = c["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        [
            "/opt/cri-guard/cri-guard-node.sh",
            "--root",
            "/host",
            "daemon"
        ]
    );
    let env = |name: &str| {
        c["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| e["value"].as_str())
            .map(str::to_string)
    };
    assert_eq!(
        env("CRI_GUARD_SET_KUBELET_ENDPOINT").as_deref(),
        Some("false")
    );
    assert_eq!(env("CRI_GUARD_ACTION").as_deref(), Some("install"));
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let script = std::fs::read_to_string(repo("deploy/installer/cri-guard-node.sh")).unwrap();
    for (volume, path, default) in [
        ("host", "/host", None),
        (
            "config",
            "/etc/cri-guard-config",
            Some("CRI_GUARD_SRC_CONFIG:-/etc/cri-guard-config/cri-guard.toml}"),
        ),
        (
            "policy",
            "/etc/cri-guard-policy",
            Some("CRI_GUARD_SRC_POLICY:-/etc/cri-guard-policy}"),
        ),
    ] {
        assert!(
            mounts.contains(&(volume.to_string(), path.to_string())),
            "{volume} not at {path}: {mounts:?}"
        );
        if let Some(d) = default {
            assert!(script.contains(d), "the script's default is not {d}");
        }
    }
    let dockerfile = std::fs::read_to_string(repo("deploy/installer/Dockerfile")).unwrap();
    for (file, default) in [
        (
            "/opt/cri-guard/cri-guard\n",
            "CRI_GUARD_SRC_BIN:-/opt/cri-guard/cri-guard}",
        ),
        (
            "/opt/cri-guard/cri-guard.service\n",
            "CRI_GUARD_SRC_UNIT:-/opt/cri-guard/cri-guard.service}",
        ),
        ("/opt/cri-guard/cri-guard-node.sh\n", "cri-guard-node.sh"),
    ] {
        assert!(dockerfile.contains(file), "the image lacks {file}");
        assert!(
            script.contains(default),
            "the script does not look for {default}"
        );
    }
}
