//! Invariant I1 whatever the client does: after an allowed pull, cri-guard checks the digest
//! containerd actually stored and removes it if it fails the policy. That check (and the
//! removal) must finish even when the client disconnects or cancels while it runs.
//!
//! Set-up: a real containerd and registry; the tag moves to an unsigned image after cri-guard
//! verified (and cached) the signed one, so containerd stores the unsigned digest. cri-guard's
//! own registry traffic goes through a gate (the policy's `hostsDir` points at it) that holds
//! the confirmation's signature fetch until the client is gone.

mod fakes;
mod guarded;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cri_guard::cri;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;
use fakes::gate::Gate;
use fakes::{TestProxy, frame};
use guarded::{enforce_rule, in_store, pull_via};
use http::Request;
use prost::Message;
use support::TestBed;
use support::sign::{self, TestKey};

/// How the client goes away while the confirmation runs.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Closes its connection (the kubelet restarting, a killed agent).
    Disconnect,
    /// Resets the call's stream (a cancelled context) and keeps the connection.
    Cancel,
}

/// Runs the moved-tag pull, has the client leave while the confirmation is held, and returns
/// whether the unsigned digest is still in containerd's store afterwards.
async fn unsigned_left_in_store(leave: Leave) -> bool {
    let bed = TestBed::start().await;
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "test-key");
    let reg = bed.registry.addr().to_string();
    let gate = Gate::start(reg.clone()).await;
    // cri-guard reaches the registry through the gate; containerd goes straight to it.
    let hosts = bed.dir.path().join("gate.d");
    std::fs::create_dir_all(hosts.join(&reg)).unwrap();
    std::fs::write(
        hosts.join(&reg).join("hosts.toml"),
        format!(
            "server = \"http://{0}\"\n[host.\"http://{0}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            gate.addr
        ),
    )
    .unwrap();
    let policy_path = bed.dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        format!(
            "default = \"enforce\"\nhostsDir = \"{}\"\n{}",
            hosts.display(),
            enforce_rule(&bed, &key_path)
        ),
    )
    .unwrap();
    let verifier = Verifier::new(
        Policy::load(&policy_path).expect("policy"),
        Some(bed.containerd_socket()),
    )
    .unwrap();
    let proxy = TestProxy::start(
        &bed.dir.path().join("guard.sock"),
        &bed.containerd_socket(),
        Arc::new(verifier),
    );
    let csock = bed.containerd_socket();

    // v1 signed and pulled: cri-guard caches v1 -> d1 as verified.
    let (image, d1) = bed.registry.push("moving", "v1", None);
    sign::sign_image(&reg, None, "moving", &d1, &key);
    pull_via(&proxy.path, &image, "default", None)
        .await
        .expect("signed pull");
    cri::image_client(&csock)
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    // The tag moves to an unsigned image; cri-guard still has v1 -> d1.
    let (_, d2) = bed.registry.push("moving", "v1", Some("unsigned"));
    assert_ne!(d1, d2);
    let stored_d2 = format!("{reg}/moving@{d2}");
    gate.arm(&format!("sha256-{}", d2.trim_start_matches("sha256:")));

    // The client: its own connection, driven by a task we can stop.
    let io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let body = frame(
        &cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(support::sandbox_config(
                &support::unique_name("p"),
                "default",
            )),
        }
        .encode_to_vec(),
    );
    let req = Request::post("http://localhost/runtime.v1.ImageService/PullImage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut tx) = send.send_request(req, false).unwrap();
    tx.send_data(body, true).unwrap();

    // containerd has pulled d2 and cri-guard is checking it: the gate holds its fetch.
    tokio::time::timeout(Duration::from_secs(60), gate.held.notified())
        .await
        .expect("the confirmation never fetched the new digest's signature");
    assert!(gate.holding.load(Ordering::SeqCst));
    assert!(
        in_store(&csock, &stored_d2).await,
        "containerd should hold d2 now"
    );
    match leave {
        Leave::Disconnect => {
            drop(response);
            drop(tx);
            drop(send);
            conn_task.abort();
            let _ = conn_task.await;
        }
        Leave::Cancel => {
            tx.send_reset(h2::Reason::CANCEL);
            drop(response);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = gate.release.send(true);

    // The confirmation finishes on its own and removes d2.
    for _ in 0..100 {
        if !in_store(&csock, &stored_d2).await {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    in_store(&csock, &image).await || in_store(&csock, &stored_d2).await
}

/// A client that closes its connection during the post-pull confirmation: the confirmation
/// still runs, and the unsigned image does not stay in containerd's store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_confirmation_still_removes_unsigned() {
    assert!(
        !unsigned_left_in_store(Leave::Disconnect).await,
        "the unsigned image stayed in the store after the client disconnected"
    );
}

/// A client that cancels its PullImage during the confirmation: same outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_confirmation_still_removes_unsigned() {
    assert!(
        !unsigned_left_in_store(Leave::Cancel).await,
        "the unsigned image stayed in the store after the client cancelled"
    );
}
