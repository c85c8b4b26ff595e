//! Launch to first answered call: how long after `cri-guard serve` is spawned does its socket
//! accept, and how long until a CRI call made right then is answered, with and without a
//! policy. "Ready" must mean ready (issue 12): the first call must not wait for work that is
//! not needed to answer it.
//!
//! ```text
//! cargo build --release && cargo bench --bench startup            # 30 runs per side
//! cargo build --release && cargo bench --bench startup -- --quick # 8 runs per side
//! ```
//!
//! Each run spawns the release binary (`CRI_GUARD_BIN` overrides it) on a fresh socket in front
//! of one real containerd (the test bed), polls `connect` every 50 us, and sends `Version` on
//! the first connection that is accepted. Sides alternate (no policy, policy, no policy, ...).
//! The policy has the shapes of `deploy/policy.toml`: key and keyless attestors, identity
//! regexes, an attestation with a `matches` condition, namespaced and skip rules (files from
//! `../shared/testdata/cosign-real` when present, else key rules only).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cri_guard::cri;
use prost::Message;
use support::TestBed;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 8 } else { 30 };
    let bin = std::env::var_os("CRI_GUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/cri-guard"));
    if !bin.is_file() {
        eprintln!(
            "startup bench: {} not found; run `cargo build --release` first",
            bin.display()
        );
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(bin, runs));
}

/// A policy file with the shapes of deploy/policy.toml, written into `dir`.
fn write_policy(dir: &Path, registry: &str) -> PathBuf {
    // `../shared` beside the main checkout, or two levels up from a worktree under wt/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = [root.join("../shared"), root.join("../../shared")]
        .into_iter()
        .find(|p| p.is_dir())
        .unwrap_or_else(|| root.join("../shared"))
        .join("testdata/cosign-real");
    let key = shared.join("keys/cosign.pub");
    let trusted_root = shared.join("trust/trusted_root_pgi.json");
    let own_key = dir.join("bench-key.pub");
    std::fs::write(
        &own_key,
        support::sign::TestKey::p256().public_pem.as_bytes(),
    )
    .expect("write key");
    let mut text = format!(
        "default = \"enforce\"\n\
         [[rules]]\nname = \"pause\"\nimageReferences = [\"{registry}/pause:*\"]\nmode = \"skip\"\n\
         [[rules]]\nname = \"team-a\"\nimageReferences = [\"{registry}/team-a/*\"]\n\
         namespaces = [\"team-a\", \"team-a-*\"]\nmode = \"audit\"\n\
         [[rules.attestors]]\nname = \"team-a-key\"\nkey = \"{}\"\n",
        own_key.display()
    );
    if key.is_file() && trusted_root.is_file() {
        text.push_str(&format!(
            "[[rules]]\nname = \"platform\"\nimageReferences = [\"{registry}/platform/*\"]\n\
             [[rules.attestors]]\nname = \"release\"\nkey = \"{key}\"\n\
             [[rules.attestations]]\npredicateType = \"slsaprovenance1\"\n\
             conditions = [{{ path = \"runDetails.builder.id\", matches = \"https://github\\\\.com/example-org/.*\" }}]\n\
             [[rules]]\nname = \"github\"\nimageReferences = [\"ghcr.io/example-org/*\"]\n\
             [[rules.attestors]]\nname = \"workflow\"\nkeyless = {{ issuerRegExp = \"^https://token\\\\.actions\\\\.githubusercontent\\\\.com$\", \
             subjectRegExp = \"^https://github\\\\.com/example-org/[^/]+/\\\\.github/workflows/release\\\\.yml@refs/tags/v\", \
             trustedRoot = \"{root}\" }}\n",
            key = key.display(),
            root = trusted_root.display(),
        ));
    } else {
        println!(
            "(no {}: the policy has key and skip rules only)",
            shared.display()
        );
    }
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).expect("write policy");
    path
}

struct Run {
    ready: Duration,
    answered: Duration,
}

/// Spawns the binary and measures spawn -> accept and spawn -> Version answered.
async fn one_run(bin: &Path, sock: &Path, upstream: &Path, policy: Option<&Path>) -> Run {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(sock)
        .arg("--upstream")
        .arg(upstream)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(p) = policy {
        cmd.arg("--policy").arg(p);
    }
    let start = Instant::now();
    let mut child: Child = cmd.spawn().expect("spawn cri-guard");
    let io = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(sock) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "cri-guard did not start"
        );
        std::thread::sleep(Duration::from_micros(50));
    };
    let ready = start.elapsed();
    io.set_nonblocking(true).unwrap();
    let io = tokio::net::UnixStream::from_std(io).unwrap();
    let (send, conn) = h2::client::handshake(io).await.expect("handshake");
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let req = http::Request::post("http://localhost/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut tx) = send.send_request(req, false).expect("send");
    let msg = cri::VersionRequest {
        version: "v1".into(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    tx.send_data(Bytes::from(body), true).expect("data");
    let (_, mut rx) = resp.await.expect("response").into_parts();
    while let Some(chunk) = rx.data().await {
        let _ = rx
            .flow_control()
            .release_capacity(chunk.expect("data").len());
    }
    let trailers = rx.trailers().await.expect("trailers").expect("status");
    let answered = start.elapsed();
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    conn.abort();
    let _ = child.kill();
    let _ = child.wait();
    Run { ready, answered }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "median {:6.2} ms  p90 {:6.2} ms  max {:6.2} ms",
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 9 / 10).min(v.len() - 1)]),
        ms(v[v.len() - 1])
    )
}

async fn run(bin: PathBuf, runs: usize) {
    let bed = TestBed::start().await;
    let upstream = bed.containerd_socket();
    let policy = write_policy(bed.dir.path(), bed.registry.addr());
    // Warm the page cache and containerd.
    one_run(
        &bin,
        &bed.dir.path().join("w.sock"),
        &upstream,
        Some(&policy),
    )
    .await;
    let mut sides: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (side, p) in [None, Some(policy.as_path())].into_iter().enumerate() {
            let sock = bed.dir.path().join(format!("s{i}-{side}.sock"));
            sides[side].push(one_run(&bin, &sock, &upstream, p).await);
        }
    }
    println!(
        "cri-guard launch to first answered call ({}), {runs} runs per side, interleaved",
        bin.display()
    );
    for (name, runs) in ["no policy", "policy"].iter().zip(&sides) {
        println!(
            "  {name:<10} spawn -> accepts:   {}",
            stats(runs.iter().map(|r| r.ready).collect())
        );
        println!(
            "  {name:<10} spawn -> Version:   {}",
            stats(runs.iter().map(|r| r.answered).collect())
        );
        println!(
            "  {name:<10} accepts -> Version: {}",
            stats(runs.iter().map(|r| r.answered - r.ready).collect())
        );
    }
}
