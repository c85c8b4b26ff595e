//! Verification through the real `cri-guard` binary: a private registry's credentials (I6),
//! `cri-guard verify`, and policy validation by `check-config`.

mod fakes;
mod guarded;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cri_guard::cri;
use guarded::{in_store, pull_via};
use support::sign::{self, TestKey};
use support::{Registry, TestBed};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

/// Kills the server if a test fails before stopping it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bed: &TestBed, policy: &Path, log: &Path, level: &str) -> (Serving, PathBuf) {
    let socket = bed.dir.path().join("guard.sock");
    let child = Command::new(BIN)
        .args(["serve", "--listen", socket.to_str().unwrap(), "--upstream"])
        .arg(bed.containerd_socket())
        .arg("--policy")
        .arg(policy)
        .args(["--log-level", level])
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "cri-guard did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (Serving(child), socket)
}

fn policy_for(bed: &TestBed, registry: &str, key: &Path) -> PathBuf {
    let path = bed.dir.path().join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "hostsDir = \"{}\"\n[[rules]]\nname = \"r\"\nimageReferences = [\"{registry}/*\"]\n\
             [[rules.attestors]]\nname = \"ci\"\nkey = \"{}\"\n",
            bed.containerd.certs_dir().display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

/// A private registry (htpasswd): the kubelet's credentials in PullImageRequest.auth are used for
/// the signature fetches, a pull without them is denied, and the secret appears nowhere in the
/// log, even at trace level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_registry_credentials_used_never_logged() {
    const USER: &str = "alice";
    const PASSWORD: &str = "s3cret-Pa55-do-not-log";
    let bed = TestBed::start().await;
    let private = Registry::with_htpasswd(&bed.dir.path().join("private"), USER, PASSWORD);
    bed.containerd.trust_registry(private.addr());
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "ci");
    let (image, digest) = private.push("secret-app", "v1", None);
    sign::sign_image(
        private.addr(),
        Some((USER, PASSWORD)),
        "secret-app",
        &digest,
        &key,
    );
    let policy = policy_for(&bed, private.addr(), &key_path);
    let log = bed.dir.path().join("guard.log");
    let (serving, socket) = serve(&bed, &policy, &log, "trace");

    let denied = pull_via(&socket, &image, "default", None)
        .await
        .expect_err("no credentials: denied");
    assert_eq!(denied.code(), tonic::Code::Unknown);
    assert!(
        denied.message().contains("credentials"),
        "{}",
        denied.message()
    );
    assert!(!in_store(&bed.containerd_socket(), &image).await);

    let auth = cri::AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    pull_via(&socket, &image, "default", Some(auth))
        .await
        .expect("credentials given: allowed");
    assert!(in_store(&bed.containerd_socket(), &image).await);

    drop(serving);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("decision method=\"PullImage\""),
        "the log is empty?\n{text}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    assert!(!text.contains(PASSWORD), "the password is in the log");
    assert!(
        !text.contains(&basic),
        "the Basic credentials are in the log"
    );
}

/// `cri-guard verify` gives the proxy's decision: exit 0 and ALLOW for a signed image, exit 1 and
/// DENY with the reason for an unsigned one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_command() {
    let bed = TestBed::start().await;
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "ci");
    let (signed, d) = bed.registry.push("cli-signed", "v1", None);
    sign::sign_image(bed.registry.addr(), None, "cli-signed", &d, &key);
    let (unsigned, _) = bed.registry.push("cli-unsigned", "v1", None);
    let policy = policy_for(&bed, bed.registry.addr(), &key_path);

    let run = |images: &[&str]| {
        Command::new(BIN)
            .arg("verify")
            .arg("--policy")
            .arg(&policy)
            .args(images)
            .output()
            .unwrap()
    };
    let ok = run(&[&signed]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{ok:?}");
    assert!(out.starts_with(&format!("ALLOW {signed} ({d})")), "{out}");
    assert!(out.contains("signed by ci"), "{out}");

    let bad = run(&[&signed, &unsigned]);
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        out.contains(&format!("DENY  {unsigned}")) && out.contains("no signature found"),
        "{out}"
    );
}

/// check-config validates the policy a configuration names, and a policy given with --policy,
/// reporting every problem (exit 64).
#[test]
fn check_config_validates_policies() {
    let dir = tempfile::Builder::new()
        .prefix("cg")
        .tempdir_in("/tmp")
        .unwrap();
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "default = \"maybe\"\n[[rules]]\nname = \"x\"\nimageReferences = [\"a/*\"]\n[[rules.attestors]]\nname = \"k\"\nkey = \"nope.pub\"\n",
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("policy = \"{}\"\n", policy.display())).unwrap();
    for args in [
        vec!["check-config", config.to_str().unwrap()],
        vec!["check-config", "--policy", policy.to_str().unwrap()],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("2 problems"), "{err}");
        assert!(err.contains("`default` = \"maybe\""), "{err}");
        assert!(err.contains("nope.pub"), "{err}");
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policy.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--policy", shipped.to_str().unwrap()])
        .output()
        .unwrap();
    // The example names key and trust files an operator provides; everything else in it must
    // be valid.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .all(|l| l.contains("cannot read key file")
                || l.contains("cannot read trustedRoot file")),
        "{err}"
    );
}
