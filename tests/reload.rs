//! Policy reload in the real binary, judged by decisions on real pulls (a real containerd and
//! registry per test): a ConfigMap-style `..data` swap, an in-place write, a rename over the
//! file and SIGHUP each change what is allowed, on a kubelet connection that stays open; a
//! policy that does not load changes nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cri_guard::cri;
use cri_guard::cri::image_service_client::ImageServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::TestBed;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

/// The running binary and every line it logged.
struct Serving {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    fn start(config: &Path, listen: &Path) -> Serving {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cri-guard");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, lines) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(listen).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "cri-guard never served: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Serving { child, log }
    }

    fn lines_with(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits (bounded) until `n` lines contain `needle`.
    async fn wait_lines(&self, needle: &str, n: usize) {
        let start = Instant::now();
        while self.lines_with(needle) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {needle:?} in the log: {:#?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An image client on one connection to `socket`; `connects` counts the connections made (tonic
/// reconnects by itself, so a dropped connection shows as a second one).
fn counting_client(socket: &Path, connects: Arc<AtomicUsize>) -> ImageServiceClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://cri.sock")
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let (socket, connects) = (socket.clone(), connects.clone());
            async move {
                connects.fetch_add(1, Ordering::SeqCst);
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
    ImageServiceClient::new(channel)
}

async fn pull(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<String, tonic::Status> {
    client
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(support::sandbox_config(
                &support::unique_name("rl"),
                "default",
            )),
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

fn is_signature_denial(r: &Result<String, tonic::Status>) -> bool {
    matches!(r, Err(s) if s.code() == tonic::Code::Unknown
        && s.message().starts_with("SignatureValidationFailed: "))
}

/// Pulls until the decision is `allowed` (bounded); returns the last result.
async fn wait_decision(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
    allowed: bool,
) -> Result<String, tonic::Status> {
    let start = Instant::now();
    loop {
        let r = pull(client, image).await;
        if r.is_ok() == allowed || start.elapsed() > Duration::from_secs(10) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn in_store(bed: &TestBed, image: &str) -> bool {
    cri::image_client(bed.containerd_socket())
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .is_some()
}

/// Enforce everything: the bed's unsigned image is denied.
fn deny_all(bed: &TestBed) -> String {
    format!(
        "default = \"enforce\"\nhostsDir = \"{}\"\n",
        bed.containerd.certs_dir().display()
    )
}

/// The bed's registry is trusted without signatures.
fn allow_bed(bed: &TestBed) -> String {
    format!(
        "{}[[rules]]\nname = \"bed\"\nimageReferences = [\"{}/*\"]\nmode = \"skip\"\n",
        deny_all(bed),
        bed.registry.addr()
    )
}

const BAD: &str = "default = \"enforce\"\n[[rules]]\nname = \"broken\"\nmode = \"sometimes\"\n";

/// Writes `dir` as the kubelet's atomic writer writes a ConfigMap volume: the files in a new
/// timestamped directory, a `..data_tmp` link to it renamed over `..data`, the old directory
/// removed; `policy.toml -> ..data/policy.toml` stays the same link throughout.
fn configmap_update(dir: &Path, policy: &str, version: u32) -> PathBuf {
    let ts = format!("..2026_11_30_12_00_{version:02}.{version:09}");
    std::fs::create_dir_all(dir.join(&ts)).unwrap();
    std::fs::write(dir.join(&ts).join("policy.toml"), policy).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::os::unix::fs::symlink(&ts, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let link = dir.join("policy.toml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/policy.toml", &link).unwrap();
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
    dir.join(&ts).join("policy.toml")
}

fn write_config(dir: &Path, bed: &TestBed, policy: &Path, watch: bool) -> (PathBuf, PathBuf) {
    let listen = dir.join("guard.sock");
    let config = dir.join("cri-guard.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nupstream = \"{}\"\npolicy = \"{}\"\npolicy_watch = {watch}\n",
            listen.display(),
            bed.containerd_socket().display(),
            policy.display()
        ),
    )
    .unwrap();
    (config, listen)
}

/// A ConfigMap swap, a refused bad version, an in-place write and a rename over the file, in
/// turn, each decide the next pull; all on one kubelet connection.
#[tokio::test]
async fn file_changes_change_decisions() {
    let bed = TestBed::start().await;
    let image = bed.push_image("app", "v1");
    let policy_dir = bed.dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    configmap_update(&policy_dir, &deny_all(&bed), 1);
    let (config, listen) =
        write_config(bed.dir.path(), &bed, &policy_dir.join("policy.toml"), true);
    let serving = Serving::start(&config, &listen);
    let connects = Arc::new(AtomicUsize::new(0));
    let mut client = counting_client(&listen, connects.clone());

    let r = pull(&mut client, &image).await;
    assert!(is_signature_denial(&r), "{r:?}");
    assert!(
        !in_store(&bed, &image).await,
        "a denied pull reached containerd"
    );

    // 1. ConfigMap update: the registry becomes trusted.
    configmap_update(&policy_dir, &allow_bed(&bed), 2);
    let r = wait_decision(&mut client, &image, true).await;
    assert!(r.is_ok(), "ConfigMap swap not picked up: {r:?}");
    assert!(in_store(&bed, &image).await);
    serving.wait_lines("policy reloaded", 1).await;

    // 2. A bad version: refused once, with one line; the allow policy stays in force.
    let refused = "policy reload refused; the previous policy stays in force";
    let current = configmap_update(&policy_dir, BAD, 3);
    serving.wait_lines(refused, 1).await;
    let r = pull(&mut client, &image).await;
    assert!(r.is_ok(), "a refused policy changed the decision: {r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(serving.lines_with(refused), 1, "the refusal is logged once");
    assert!(
        serving
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(refused) && l.contains("mode")),
        "the refusal names the problem"
    );

    // 3. An editor writing the file in place (through the links): deny again.
    std::fs::write(&current, deny_all(&bed)).unwrap();
    let r = wait_decision(&mut client, &image, false).await;
    assert!(
        is_signature_denial(&r),
        "in-place write not picked up: {r:?}"
    );

    // 4. A new file renamed over it: allow again.
    let tmp = current.with_file_name(".policy.toml.swp");
    std::fs::write(&tmp, allow_bed(&bed)).unwrap();
    std::fs::rename(&tmp, &current).unwrap();
    let r = wait_decision(&mut client, &image, true).await;
    assert!(r.is_ok(), "rename over the file not picked up: {r:?}");

    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "the kubelet's connection was dropped by a reload"
    );
}

/// With file watching off, a changed file changes nothing until SIGHUP, which reloads it.
#[tokio::test]
async fn sighup_reloads() {
    let bed = TestBed::start().await;
    let image = bed.push_image("app", "v1");
    let policy = bed.dir.path().join("policy.toml");
    std::fs::write(&policy, deny_all(&bed)).unwrap();
    let (config, listen) = write_config(bed.dir.path(), &bed, &policy, false);
    let serving = Serving::start(&config, &listen);
    let connects = Arc::new(AtomicUsize::new(0));
    let mut client = counting_client(&listen, connects.clone());
    assert!(is_signature_denial(&pull(&mut client, &image).await));

    std::fs::write(&policy, allow_bed(&bed)).unwrap();
    // Longer than any debounce and poll a watcher would use.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = pull(&mut client, &image).await;
    assert!(is_signature_denial(&r), "reloaded without SIGHUP: {r:?}");

    kill(Pid::from_raw(serving.child.id() as i32), Signal::SIGHUP).unwrap();
    let r = wait_decision(&mut client, &image, true).await;
    assert!(r.is_ok(), "SIGHUP did not reload: {r:?}");
    assert!(in_store(&bed, &image).await);
    assert_eq!(connects.load(Ordering::SeqCst), 1);
}
