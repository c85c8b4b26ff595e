//! The node installer (`deploy/installer/cri-guard-node.sh`) against a temporary root that looks
//! like a kubeadm node: fresh install, a second run that changes nothing, upgrade, policy
//! update (picked up by a running cri-guard), the kubelet switch and its undo, uninstall back to
//! the same bytes, and refusals that leave the node untouched. Host commands go to a recorder
//! (the real DaemonSet runs them in the host's namespaces with nsenter); enabling and disabling
//! the unit is done for real by `systemctl --root`.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::sign::TestKey;
use support::util::require_bin;

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");
const ENDPOINT: &str = "unix:///run/cri-guard/cri-guard.sock";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const KUBELET_CONFIG: &str = "\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
cgroupDriver: systemd
# written by kubeadm
containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock
kind: KubeletConfiguration
staticPodPath: /etc/kubernetes/manifests
";
const KUBEADM_FLAGS: &str = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n";

/// What one path in the root is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File { mode: u32, content: Vec<u8> },
    Dir { mode: u32 },
    Link(PathBuf),
}

type Snapshot = BTreeMap<PathBuf, Entry>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mode = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&path).unwrap()));
            } else if meta.is_dir() {
                out.insert(rel, Entry::Dir { mode });
                walk(root, &path, out);
            } else {
                let content = std::fs::read(&path).unwrap();
                out.insert(rel, Entry::File { mode, content });
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// The paths where two snapshots differ.
fn differences(a: &Snapshot, b: &Snapshot) -> Vec<PathBuf> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Writes `files` into `dir` as the kubelet writes a ConfigMap volume (`..data` swap).
fn configmap_write(dir: &Path, files: &[(&str, &str)]) {
    static VERSION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    std::fs::create_dir_all(dir).unwrap();
    let n = VERSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ts = format!("..2026_11_30_10_00_00.{n:09}");
    for (name, text) in files {
        let p = dir.join(&ts).join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (name, _) in files {
        let top = name.split('/').next().unwrap();
        if std::fs::symlink_metadata(dir.join(top)).is_err() {
            symlink(format!("..data/{top}"), dir.join(top)).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// A kubeadm-like node under a temp root, the installer's sources (the DaemonSet's image and
/// ConfigMaps), and a recorder for host commands.
struct Node {
    root: tempfile::TempDir,
    src: tempfile::TempDir,
    key: TestKey,
}

impl Node {
    fn new() -> Node {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "usr/lib/systemd/system",
            "usr/local/bin",
            "etc/systemd/system/multi-user.target.wants",
            "etc/containerd",
            "var/lib/kubelet",
            "run",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for unit in ["kubelet", "containerd"] {
            std::fs::write(
                r.join(format!("usr/lib/systemd/system/{unit}.service")),
                format!(
                    "[Unit]\nDescription={unit}\n[Service]\nExecStart=/usr/bin/{unit}\n[Install]\nWantedBy=multi-user.target\n"
                ),
            )
            .unwrap();
        }
        symlink(
            "/usr/lib/systemd/system/containerd.service",
            r.join("etc/systemd/system/multi-user.target.wants/containerd.service"),
        )
        .unwrap();
        std::fs::write(r.join("usr/local/bin/kubectl"), "#!/bin/sh\n").unwrap();
        std::fs::write(r.join("etc/containerd/config.toml"), "version = 2\n").unwrap();
        let cfg = r.join("var/lib/kubelet/config.yaml");
        std::fs::write(&cfg, KUBELET_CONFIG).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(r.join("var/lib/kubelet/kubeadm-flags.env"), KUBEADM_FLAGS).unwrap();

        let src = tempfile::tempdir().unwrap();
        let key = TestKey::p256();
        let node = Node { root, src, key };
        node.set_binary("v1");
        std::fs::copy(
            repo("systemd/cri-guard.service"),
            node.src("cri-guard.service"),
        )
        .unwrap();
        configmap_write(
            &node.src("config"),
            &[(
                "cri-guard.toml",
                "policy = \"/etc/cri-guard/policy/policy.toml\"\n",
            )],
        );
        node.set_policy("default = \"audit\"\n");
        node
    }

    fn src(&self, name: &str) -> PathBuf {
        self.src.path().join(name)
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    /// The binary to install: a stand-in marked `version` (the real binary validates and edits,
    /// as CRI_GUARD_TOOL), so each test root stays small.
    fn set_binary(&self, version: &str) {
        let p = self.src("cri-guard");
        std::fs::write(&p, format!("#!/bin/sh\necho cri-guard {version}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A ConfigMap update of the policy: `rules` plus a key file it names by relative path.
    fn set_policy(&self, policy: &str) {
        configmap_write(
            &self.src("policy"),
            &[
                ("policy.toml", policy),
                ("keys/ci.pub", self.key.public_pem.as_str()),
            ],
        );
    }

    /// Runs the installer with `action`; `set_kubelet` is the explicit switch.
    fn run(&self, action: &str, set_kubelet: bool, offline: bool) -> Output {
        let recorder = self.src("host-exec");
        std::fs::write(&recorder, RECORDER).unwrap();
        std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(repo("deploy/installer/cri-guard-node.sh"))
            .arg("--root")
            .arg(self.root());
        if offline {
            cmd.arg("--offline");
        }
        cmd.arg(action)
            .env("CRI_GUARD_SRC_BIN", self.src("cri-guard"))
            .env("CRI_GUARD_TOOL", BIN)
            .env("CRI_GUARD_SRC_UNIT", self.src("cri-guard.service"))
            .env("CRI_GUARD_SRC_CONFIG", self.src("config/cri-guard.toml"))
            .env("CRI_GUARD_SRC_POLICY", self.src("policy"))
            .env("CRI_GUARD_SET_KUBELET_ENDPOINT", set_kubelet.to_string())
            .env("CRI_GUARD_HOST_EXEC", &recorder)
            .env("RECORDER_ROOT", self.root())
            .env("RECORDER_LOG", self.src("host-exec.log"))
            .env("RECORDER_ACTIVE", self.src("active"))
            .env("TMPDIR", self.src.path());
        let out = cmd.output().unwrap();
        eprintln!(
            "--- {action}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn install(&self, set_kubelet: bool) -> String {
        let out = self.run("install", set_kubelet, false);
        assert!(out.status.success(), "install failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host commands recorded since the last call.
    fn host_commands(&self) -> Vec<String> {
        let log = self.src("host-exec.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_string).collect()
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join(path)).unwrap()
    }
}

/// Stands in for `nsenter -t 1 ... --`: records each command; `systemctl enable/disable/
/// is-enabled` run for real with `--root`; `restart` marks the unit active, `is-active` asks.
const RECORDER: &str = r#"#!/bin/bash
echo "$*" >>"$RECORDER_LOG"
[ "$1" = systemctl ] || exit 0
shift
case "$1" in
  enable|is-enabled) exec systemctl --root="$RECORDER_ROOT" --quiet "$@" ;;
  disable) rm -f "$RECORDER_ACTIVE"; args=(); for a in "$@"; do [ "$a" = --now ] || args+=("$a"); done
           exec systemctl --root="$RECORDER_ROOT" --quiet "${args[@]}" ;;
  is-active) [ -e "$RECORDER_ACTIVE" ] ;;
  restart) [ "$2" != cri-guard.service ] || touch "$RECORDER_ACTIVE" ;;
esac
exit 0
"#;

fn mutating(commands: &[String]) -> Vec<&String> {
    commands
        .iter()
        .filter(|c| !c.contains(" is-enabled ") && !c.contains(" is-active "))
        .collect()
}

/// A fresh install puts every file in place, enables the unit (for itself and the kubelet),
/// starts it before the kubelet is switched and restarted; a second run changes nothing, runs
/// no command that changes anything, and says so.
#[test]
fn fresh_install_then_a_second_run_is_a_no_op() {
    require_bin("systemctl", "systemd");
    let node = Node::new();
    let out = node.install(true);
    let r = node.root();

    let bin = std::fs::metadata(r.join("usr/local/bin/cri-guard")).unwrap();
    assert_eq!(bin.mode() & 0o777, 0o755);
    assert_eq!(
        node.read("usr/local/bin/cri-guard"),
        "#!/bin/sh\necho cri-guard v1\n"
    );
    assert_eq!(
        node.read("etc/systemd/system/cri-guard.service"),
        std::fs::read_to_string(repo("systemd/cri-guard.service")).unwrap()
    );
    assert!(
        node.read("etc/cri-guard/cri-guard.toml")
            .contains("policy = ")
    );
    // The policy, ConfigMap-style, with the key beside it.
    let pdir = r.join("etc/cri-guard/policy");
    let data = std::fs::read_link(pdir.join("..data")).unwrap();
    assert!(data.to_string_lossy().starts_with("..2"), "{data:?}");
    assert_eq!(
        std::fs::read_link(pdir.join("policy.toml")).unwrap(),
        Path::new("..data/policy.toml")
    );
    assert_eq!(
        node.read("etc/cri-guard/policy/policy.toml"),
        "default = \"audit\"\n"
    );
    assert_eq!(
        node.read("etc/cri-guard/policy/keys/ci.pub"),
        node.key.public_pem
    );
    // Enabled for real: wanted by multi-user.target and by the kubelet.
    for wants in ["multi-user.target.wants", "kubelet.service.wants"] {
        let link = r.join(format!("etc/systemd/system/{wants}/cri-guard.service"));
        assert!(
            std::fs::symlink_metadata(&link).is_ok(),
            "{wants} link missing"
        );
    }
    // The kubelet now talks to cri-guard, through both the file and kubeadm's flags.
    let cfg = node.read("var/lib/kubelet/config.yaml");
    assert!(
        cfg.contains(&format!("containerRuntimeEndpoint: {ENDPOINT}\n")),
        "{cfg}"
    );
    assert!(
        cfg.contains(&format!("imageServiceEndpoint: {ENDPOINT}\n")),
        "{cfg}"
    );
    assert!(
        cfg.contains("# written by kubeadm\n"),
        "comments survive: {cfg}"
    );
    assert_eq!(
        std::fs::metadata(r.join("var/lib/kubelet/config.yaml"))
            .unwrap()
            .mode()
            & 0o777,
        0o600,
        "the kubelet config keeps its mode"
    );
    assert!(
        !node
            .read("var/lib/kubelet/kubeadm-flags.env")
            .contains("containerd.sock")
    );
    assert!(
        out.contains("+containerRuntimeEndpoint: unix:///run/cri-guard/cri-guard.sock"),
        "{out}"
    );
    let cmds = node.host_commands();
    let pos = |c: &str| {
        cmds.iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c:?} not run: {cmds:?}"))
    };
    assert!(pos("systemctl daemon-reload") < pos("systemctl enable cri-guard.service"));
    assert!(
        pos("systemctl restart cri-guard.service") < pos("systemctl restart kubelet.service"),
        "the kubelet was switched before cri-guard was up: {cmds:?}"
    );

    let before = snapshot(r);
    let out = node.install(true);
    assert!(out.contains("no changes"), "{out}");
    assert_eq!(differences(&before, &snapshot(r)), Vec::<PathBuf>::new());
    assert_eq!(mutating(&node.host_commands()), Vec::<&String>::new());
}

/// An upgrade (new binary) replaces only the binary and restarts only cri-guard: no daemon
/// reload, no kubelet restart, and the kubelet backup stays the original.
#[test]
fn upgrade_replaces_the_binary_and_restarts_only_cri_guard() {
    require_bin("systemctl", "systemd");
    let node = Node::new();
    node.install(true);
    node.host_commands();
    let before = snapshot(node.root());
    node.set_binary("v2");
    let out = node.install(true);
    assert!(out.contains("installed /usr/local/bin/cri-guard"), "{out}");
    assert_eq!(
        differences(&before, &snapshot(node.root())),
        vec![PathBuf::from("usr/local/bin/cri-guard")]
    );
    assert_eq!(
        node.read("usr/local/bin/cri-guard"),
        "#!/bin/sh\necho cri-guard v2\n"
    );
    assert_eq!(
        mutating(&node.host_commands()),
        vec!["systemctl restart cri-guard.service"]
    );
    assert_eq!(
        node.read("var/lib/cri-guard/installer/backup/var/lib/kubelet/config.yaml"),
        KUBELET_CONFIG
    );
}

/// Kills the child process when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A ConfigMap update reaches the host file by an atomic `..data` swap and a running cri-guard
/// (in front of a real containerd) decides by it: a pull the old policy refuses goes through
/// under the new one. A policy that does not validate never reaches the host.
#[test]
fn policy_update_reaches_the_host_and_the_running_guard() {
    require_bin("systemctl", "systemd");
    let bed = support::TestBed::start_blocking();
    let image = bed.push_image("app", "v1");
    let enforce = format!(
        "default = \"enforce\"\nhostsDir = \"{}\"\n",
        bed.containerd.certs_dir().display()
    );
    let trusted = format!(
        "{enforce}[[rules]]\nname = \"bed\"\nimageReferences = [\"{}/*\"]\nmode = \"skip\"\n",
        bed.registry.addr()
    );
    let node = Node::new();
    node.set_policy(&enforce);
    node.install(false);
    let host_policy = node.root().join("etc/cri-guard/policy/policy.toml");

    let listen = bed.dir.path().join("g.sock");
    let _serving = Killed(
        Command::new(BIN)
            .args(["serve", "--listen"])
            .arg(&listen)
            .arg("--upstream")
            .arg(bed.containerd_socket())
            .arg("--policy")
            .arg(&host_policy)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pull = || {
        rt.block_on(async {
            cri_guard::cri::image_client(&listen)
                .pull_image(cri_guard::cri::PullImageRequest {
                    image: Some(cri_guard::cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
        })
    };
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&listen).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cri-guard did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let denied = pull().unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unknown, "{denied:?}");
    assert!(
        denied.message().starts_with("SignatureValidationFailed"),
        "{denied:?}"
    );

    node.set_policy(&trusted);
    let before = std::fs::read_link(node.root().join("etc/cri-guard/policy/..data")).unwrap();
    let out = node.run("sync-policy", false, false);
    assert!(out.status.success(), "{out:?}");
    let after = std::fs::read_link(node.root().join("etc/cri-guard/policy/..data")).unwrap();
    assert_ne!(before, after);
    assert!(
        !node
            .root()
            .join("etc/cri-guard/policy")
            .join(&before)
            .exists(),
        "old version left"
    );
    assert!(
        std::fs::read_to_string(&host_policy)
            .unwrap()
            .contains("mode = \"skip\"")
    );
    let start = Instant::now();
    while let Err(s) = pull() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not reloaded: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A policy that does not validate: refused, the host keeps the current one.
    let snap = snapshot(node.root());
    node.set_policy("default = \"enforce\"\n[[rules]]\nname = \"x\"\nmode = \"sometimes\"\n");
    let out = node.run("sync-policy", false, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the new policy is not valid"));
    assert_eq!(
        differences(&snap, &snapshot(node.root())),
        Vec::<PathBuf>::new()
    );
    assert!(pull().is_ok(), "the running guard lost the good policy");
    // Unchanged source: a no-op that says so.
    node.set_policy(&trusted);
    let out = node.run("sync-policy", false, false);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no changes"),
        "{out:?}"
    );
    assert_eq!(
        differences(&snap, &snapshot(node.root())),
        Vec::<PathBuf>::new()
    );
}

/// Uninstall after install, policy update and upgrade puts every byte back: the kubelet's
/// files, a cri-guard binary that was there before (restored, not deleted), no leftover
/// directory; the kubelet is back on containerd before cri-guard stops. A second uninstall
/// has nothing to do.
#[test]
fn uninstall_restores_the_node_exactly() {
    require_bin("systemctl", "systemd");
    for offline in [false, true] {
        let node = Node::new();
        // An older, hand-installed binary is on the node already.
        std::fs::write(
            node.root().join("usr/local/bin/cri-guard"),
            "hand-installed\n",
        )
        .unwrap();
        let original = snapshot(node.root());
        let out = node.run("install", true, offline);
        assert!(out.status.success());
        node.set_policy("default = \"enforce\"\n");
        assert!(node.run("sync-policy", true, offline).status.success());
        node.set_binary("v2");
        assert!(node.run("install", true, offline).status.success());
        node.host_commands();

        let out = node.run("uninstall", true, offline);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            differences(&original, &snapshot(node.root())),
            Vec::<PathBuf>::new(),
            "offline={offline}"
        );
        if !offline {
            let cmds = node.host_commands();
            let pos = |c: &str| cmds.iter().position(|x| x == c).unwrap_or(usize::MAX);
            assert!(
                pos("systemctl restart kubelet.service")
                    < pos("systemctl disable --now cri-guard.service"),
                "cri-guard stopped while the kubelet still used it: {cmds:?}"
            );
        }
        let out = node.run("uninstall", true, offline);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("no changes"));
    }
}

/// Turning the switch off restores the kubelet's files exactly (and restarts it) while
/// cri-guard stays installed.
#[test]
fn switch_off_restores_the_kubelet() {
    require_bin("systemctl", "systemd");
    let node = Node::new();
    node.install(true);
    node.host_commands();
    node.install(false);
    assert_eq!(node.read("var/lib/kubelet/config.yaml"), KUBELET_CONFIG);
    assert_eq!(
        node.read("var/lib/kubelet/kubeadm-flags.env"),
        KUBEADM_FLAGS
    );
    assert_eq!(
        mutating(&node.host_commands()),
        vec!["systemctl restart kubelet.service"]
    );
    assert!(node.root().join("usr/local/bin/cri-guard").exists());
}

/// A kubelet configuration that is not valid YAML (or not a KubeletConfiguration): a clear
/// error, exit 1, and nothing on the node changed, not even the guard's own files.
#[test]
fn unparseable_kubelet_config_is_left_untouched() {
    require_bin("systemctl", "systemd");
    for (text, reason) in [
        ("kind: [KubeletConfiguration\n", "not valid YAML"),
        ("apiVersion: v1\nkind: Pod\n", "not a KubeletConfiguration"),
    ] {
        let node = Node::new();
        std::fs::write(node.root().join("var/lib/kubelet/config.yaml"), text).unwrap();
        let before = snapshot(node.root());
        let out = node.run("install", true, false);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/var/lib/kubelet/config.yaml left untouched"),
            "{err}"
        );
        assert!(err.contains(reason), "{err}");
        assert_eq!(
            differences(&before, &snapshot(node.root())),
            Vec::<PathBuf>::new()
        );
        assert_eq!(node.host_commands(), Vec::<String>::new());
    }
}

/// A kubelet configuration edited after install is not overwritten by uninstall: it refuses,
/// names the backup, and changes nothing (cri-guard keeps running for the kubelet).
#[test]
fn uninstall_refuses_to_clobber_later_kubelet_edits() {
    require_bin("systemctl", "systemd");
    let node = Node::new();
    node.install(true);
    let cfg = node.root().join("var/lib/kubelet/config.yaml");
    let edited = format!("{}maxPods: 200\n", node.read("var/lib/kubelet/config.yaml"));
    std::fs::write(&cfg, &edited).unwrap();
    node.host_commands();
    let before = snapshot(node.root());
    let out = node.run("uninstall", false, false);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("changed since") && err.contains("backup/var/lib/kubelet/config.yaml"),
        "{err}"
    );
    assert_eq!(
        differences(&before, &snapshot(node.root())),
        Vec::<PathBuf>::new()
    );
    assert_eq!(mutating(&node.host_commands()), Vec::<&String>::new());
}

/// The script passes shellcheck.
#[test]
fn installer_passes_shellcheck() {
    let shellcheck = require_bin("shellcheck", "shellcheck");
    let out = Command::new(shellcheck)
        .arg(repo("deploy/installer/cri-guard-node.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
