//! Faults with real parts (issue 12): containerd killed mid-pull and during a
//! GetContainerEvents stream, and cri-guard itself restarted (SIGTERM, SIGKILL) while a
//! kubelet-like client keeps calling. Clients get errors, never a hang or an allow that should
//! not be; cri-guard (or its successor) serves again once the part is back; no half-finished
//! pull leaves an unverified image behind.

mod fakes;
mod guarded;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cri_guard::cri;
use cri_guard::proxy::AllowAll;
use fakes::gate::Gate;
use fakes::{EventsUpstream, TestProxy};
use guarded::{Guarded, enforce_rule, in_store, policy_text, pull_via, write_policy};
use support::TestBed;
use support::sign::{self, TestKey};

/// The digest of the first layer of `name:tag` in the registry at `reg`.
fn first_layer(reg: &str, name: &str, tag: &str) -> String {
    let m = support::util::http(
        reg,
        "GET",
        &format!("/v2/{name}/manifests/{tag}"),
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )],
        b"",
    )
    .expect("manifest");
    let v: serde_json::Value = serde_json::from_slice(&m.body).expect("manifest JSON");
    v["layers"][0]["digest"]
        .as_str()
        .expect("a layer")
        .to_string()
}

/// Points containerd's (and, through the policy's `hostsDir`, cri-guard's) access to `reg`
/// at `via` ("host:port"); containerd reads this on every pull.
fn route_registry(bed: &TestBed, reg: &str, via: &str) {
    let dir = bed.containerd.certs_dir().join(reg);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{via}\"\n\n[host.\"http://{via}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n"
        ),
    )
    .unwrap();
}

/// containerd is killed while it pulls an allowed image: the pull fails with an error (no
/// hang), cri-guard keeps serving and, once containerd is back, answers on the same client; the
/// half-finished pull left no image; the next pull of the image succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_mid_pull() {
    let mut g = Guarded::start(enforce_rule).await;
    let reg = g.bed.registry.addr().to_string();
    let (image, digest) = g.push_signed("slowpull", "v1");
    let gate = Gate::start(reg.clone()).await;
    gate.arm(&first_layer(&reg, "slowpull", "v1"));
    route_registry(&g.bed, &reg, &gate.addr);

    let proxy_path = g.proxy.path.clone();
    let pulling = {
        let (p, i) = (proxy_path.clone(), image.clone());
        tokio::spawn(async move { pull_via(&p, &i, "default", None).await })
    };
    tokio::time::timeout(Duration::from_secs(60), gate.held.notified())
        .await
        .expect("containerd never fetched the image layer");
    tokio::task::block_in_place(|| g.bed.containerd.kill());
    let err = tokio::time::timeout(Duration::from_secs(20), pulling)
        .await
        .expect("the pull hung after containerd died")
        .unwrap()
        .expect_err("a pull whose runtime died cannot succeed");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{err:?}"
    );
    let _ = gate.release.send(true);

    // cri-guard is still there: calls fail cleanly while containerd is down...
    let mut rt = cri::runtime_client(&proxy_path);
    let down = rt.version(cri::VersionRequest::default()).await;
    assert_eq!(down.unwrap_err().code(), tonic::Code::Unavailable);
    // ...and go through again once it is back, on the same client.
    tokio::task::block_in_place(|| g.bed.containerd.start_again());
    rt.version(cri::VersionRequest::default())
        .await
        .expect("served again after containerd came back");
    let csock = g.bed.containerd_socket();
    assert!(
        !in_store(&csock, &image).await,
        "half-finished pull left the tag"
    );
    assert!(
        !in_store(&csock, &format!("{reg}/slowpull@{digest}")).await,
        "half-finished pull left the digest"
    );
    pull_via(&proxy_path, &image, "default", None)
        .await
        .expect("the next pull succeeds");
    assert!(in_store(&csock, &image).await);
}

/// containerd (2.1, which serves GetContainerEvents) killed while a client follows the event
/// stream through cri-guard: the stream ends with an error instead of hanging, and after the
/// restart a new stream and other calls work through the same cri-guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_during_event_stream() {
    if support::skip_on_containerd(
        support::containerd::ContainerdVersion::V1_6,
        "containerd 1.6 answers GetContainerEvents Unimplemented; see upstream_dies_mid_stream",
    ) {
        return;
    }
    let mut bed = TestBed::start().await;
    let proxy = TestProxy::start(
        &bed.dir.path().join("g.sock"),
        &bed.containerd_socket(),
        Arc::new(AllowAll),
    );
    let mut rt = cri::runtime_client(&proxy.path);
    // containerd sends the stream's headers only with the first event (docs/cri-notes.md):
    // open it in a task, then make an event.
    let opening = {
        let mut rt = rt.clone();
        tokio::spawn(async move {
            rt.get_container_events(cri::GetEventsRequest::default())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sandbox = support::sandbox_config(&support::unique_name("ev"), "default");
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(sandbox),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox");
    let mut events = tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .expect("the stream never started")
        .unwrap()
        .expect("2.1 serves the event stream")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(30), events.message())
        .await
        .expect("an event")
        .expect("stream ok")
        .expect("not ended");
    tokio::task::block_in_place(|| bed.containerd.kill());
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the event stream hung after containerd died");
    assert!(ended.is_err(), "{ended:?}");
    tokio::task::block_in_place(|| bed.containerd.start_again());
    rt.version(cri::VersionRequest::default())
        .await
        .expect("served again");
    // A new stream opens (its headers come with the first event; a new sandbox makes one).
    let reopening = {
        let mut rt = rt.clone();
        tokio::spawn(async move {
            rt.get_container_events(cri::GetEventsRequest::default())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(support::sandbox_config(
            &support::unique_name("ev2"),
            "default",
        )),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox after the restart");
    tokio::time::timeout(Duration::from_secs(30), reopening)
        .await
        .expect("no new stream after the restart")
        .unwrap()
        .expect("a new stream after the restart");
}

/// The same on any containerd, with a fake upstream whose connection drops mid-stream after
/// one event: the client's stream ends with Unavailable (not a clean end, not a hang), and the
/// proxy serves the next upstream.
#[tokio::test]
async fn upstream_dies_mid_stream() {
    use prost::Message;
    let dir = fakes::sock_dir();
    let up_path = dir.path().join("up.sock");
    let listener = tokio::net::UnixListener::bind(&up_path).unwrap();
    let (die, dead) = tokio::sync::oneshot::channel::<()>();
    let fake = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(io).await.unwrap();
        let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
        let mut tx = respond
            .send_response(
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap(),
                false,
            )
            .unwrap();
        let event = fakes::frame(
            &cri::ContainerEventResponse {
                container_id: "c1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        tx.send_data(event, false).unwrap();
        // Keep the connection going until told to die, then drop it without a word.
        tokio::select! {
            _ = dead => {}
            _ = std::future::poll_fn(|cx| conn.poll_closed(cx)) => {}
        }
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up_path, Arc::new(AllowAll));
    let mut rt = cri::runtime_client(&proxy.path);
    let mut events = rt
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.message().await.unwrap().unwrap().container_id, "c1");
    let _ = die.send(());
    fake.await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the stream hung after the upstream died");
    let err = ended.expect_err("a broken stream must not end cleanly");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    std::fs::remove_file(&up_path).unwrap();
    let _up2 = EventsUpstream::start(&up_path);
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .expect("served by the new upstream");
    assert_eq!(v.into_inner().runtime_name, "fake");
}

struct Guard(Child);

impl Guard {
    fn start(listen: &Path, upstream: &Path, policy: &Path) -> Guard {
        let child = Command::new(env!("CARGO_BIN_EXE_cri-guard"))
            .args(["serve", "--listen"])
            .arg(listen)
            .arg("--upstream")
            .arg(upstream)
            .arg("--policy")
            .arg(policy)
            .args(["--shutdown-grace", "2s", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cri-guard");
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(listen).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "cri-guard did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Guard(child)
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a kubelet-like client saw for one call.
#[derive(Debug)]
enum Seen {
    Ok,
    Denied,
    Failed(tonic::Code),
}

/// One round of the client: Version, a pull of the unsigned image, a pull of the signed one;
/// each call must end within 10 s.
async fn round(socket: &Path, unsigned: &str, signed: &str) -> [Seen; 3] {
    let limit = Duration::from_secs(10);
    let seen = |r: Result<(), tonic::Status>| match r {
        Ok(()) => Seen::Ok,
        Err(s) if s.message().starts_with("SignatureValidationFailed") => Seen::Denied,
        Err(s) => Seen::Failed(s.code()),
    };
    let version = tokio::time::timeout(
        limit,
        cri::runtime_client(socket).version(cri::VersionRequest::default()),
    )
    .await
    .expect("Version hung")
    .map(drop);
    let bad = tokio::time::timeout(limit, pull_via(socket, unsigned, "default", None))
        .await
        .expect("PullImage hung")
        .map(drop);
    let good = tokio::time::timeout(limit, pull_via(socket, signed, "default", None))
        .await
        .expect("PullImage hung")
        .map(drop);
    [seen(version), seen(bad), seen(good)]
}

/// cri-guard stopped with SIGTERM, then with SIGKILL (leaving its socket file), and started
/// again each time while a client keeps calling: during each gap calls fail at once with
/// Unavailable-like errors (no hang), after each restart they work again, the unsigned image
/// is denied every time it gets an answer and never reaches containerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_restarted_while_client_calls() {
    let bed = TestBed::start().await;
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "test-key");
    let policy = write_policy(
        bed.dir.path(),
        &policy_text(&bed, &enforce_rule(&bed, &key_path)),
    );
    let reg = bed.registry.addr().to_string();
    let (signed, d) = bed.registry.push("restart-ok", "v1", None);
    sign::sign_image(&reg, None, "restart-ok", &d, &key);
    let (unsigned, _) = bed.registry.push("restart-bad", "v1", None);
    let listen = bed.dir.path().join("guard.sock");
    let csock = bed.containerd_socket();
    let mut guard = Guard::start(&listen, &csock, &policy);

    let mut log: Vec<(&str, [Seen; 3])> = Vec::new();
    for stop in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        log.push(("up", round(&listen, &unsigned, &signed).await));
        guard.signal(stop);
        log.push(("gap", round(&listen, &unsigned, &signed).await));
        guard = Guard::start(&listen, &csock, &policy);
        log.push(("again", round(&listen, &unsigned, &signed).await));
    }
    drop(guard);
    for (phase, seen) in &log {
        match phase {
            &"gap" => assert!(
                seen.iter()
                    .all(|s| matches!(s, Seen::Failed(tonic::Code::Unavailable))),
                "during the gap: {log:?}"
            ),
            _ => assert!(
                matches!(seen, [Seen::Ok, Seen::Denied, Seen::Ok]),
                "{phase}: {log:?}"
            ),
        }
    }
    assert!(
        !in_store(&csock, &unsigned).await,
        "the unsigned image reached containerd"
    );
    assert!(in_store(&csock, &signed).await);
}
