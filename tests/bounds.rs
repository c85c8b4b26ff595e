//! The proxy's bounds (issue 10 item 5): what a local peer can make cri-guard hold is limited,
//! and going over a limit is a refusal that names it, never an allow. Proven with the process's
//! memory and the proxy's counters, not log lines.

mod fakes;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cri_guard::config::Config;
use cri_guard::cri;
use cri_guard::proxy::AllowAll;
use fakes::*;
use http::Request;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// VmRSS and VmHWM (peak) of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Binary(Child);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the cri-guard binary with `config` (TOML) and waits until its socket accepts.
fn start_binary(dir: &Path, config: &str, listen: &Path) -> Binary {
    let cfg = dir.join("guard.toml");
    std::fs::File::create(&cfg)
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cri-guard"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--log-level", "error"])
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
    Binary(child)
}

/// The case: 40 PullImage streams on one connection, each sending a large body that
/// never ends. Before: the process grew by every byte sent (22 -> 668 MiB). Now the bodies
/// share one budget: the process grows by at most about the budget, the streams past it are
/// refused with ResourceExhausted naming `max_intercepted_buffer`, the ones within it are
/// refused with DeadlineExceeded naming `intercepted_request_timeout` when their time is up,
/// and nothing reaches the runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_stay_within_the_buffer_budget() {
    const MIB: usize = 1 << 20;
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let listen = dir.path().join("g.sock");
    let guard = start_binary(
        dir.path(),
        &format!(
            "listen = \"{}\"\nupstream = \"{}\"\nmax_intercepted_message = \"4MiB\"\n\
             max_intercepted_buffer = \"16MiB\"\nintercepted_request_timeout = \"3s\"\n",
            listen.display(),
            up.path.display()
        ),
        &listen,
    );
    let pid = guard.0.id();
    let io = tokio::net::UnixStream::connect(&listen).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (rss_before, _) = rss_kib(pid);

    // Each stream announces a 4 MiB message and sends all but its last byte.
    let streams = 40;
    let mut responses = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..streams {
        let mut send = send.clone().ready().await.unwrap();
        let req = Request::post("http://localhost/runtime.v1.ImageService/PullImage")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        let mut body = vec![0u8; 4 * MIB - 1];
        body[1..5].copy_from_slice(&((4 * MIB - 5) as u32).to_be_bytes());
        let _ = tx.send_data(Bytes::from(body), false);
        responses.push(resp);
        senders.push(tx);
    }
    let mut codes = Vec::new();
    for resp in responses {
        let r = tokio::time::timeout(Duration::from_secs(30), resp)
            .await
            .expect("every stream is answered");
        let headers = r.expect("a response, not a reset").into_parts().0.headers;
        codes.push((
            headers["grpc-status"].to_str().unwrap().to_string(),
            headers["grpc-message"].to_str().unwrap().to_string(),
        ));
    }
    let (_, peak) = rss_kib(pid);
    drop(senders);
    let over_budget = codes
        .iter()
        .filter(|(c, m)| c == "8" && m.contains("`max_intercepted_buffer`"))
        .count();
    let too_slow = codes
        .iter()
        .filter(|(c, m)| c == "4" && m.contains("`intercepted_request_timeout`"))
        .count();
    assert_eq!(over_budget + too_slow, streams, "{codes:?}");
    assert!((1..=4).contains(&too_slow), "{codes:?}");
    let grown_mib = (peak.saturating_sub(rss_before)) as f64 / 1024.0;
    eprintln!(
        "cri-guard RSS {rss_before} KiB before, peak {peak} KiB; codes: {over_budget} over budget, {too_slow} too slow"
    );
    assert!(
        grown_mib < 16.0 + 24.0,
        "cri-guard grew by {grown_mib:.1} MiB for a 16 MiB budget (from {rss_before} KiB)"
    );
    assert_eq!(up.max_in_flight(), 0, "a refused call reached the runtime");
    assert!(up.requests().is_empty());
}

/// With `max_streams_per_connection = 8`, a gRPC client with 30 calls in flight on one
/// connection has at most 8 of them in progress (the rest wait their turn, and all succeed).
/// The client has read the proxy's SETTINGS (as grpc-go does before it calls: tonic does not
/// wait, so the first call here stands in for that).
#[tokio::test]
async fn streams_per_connection_queue_in_a_grpc_client() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), |p, b| {
        let mut r = echo(p, b);
        r.delay = Duration::from_millis(200);
        r
    });
    let cfg = Config {
        listen: dir.path().join("p.sock"),
        upstream: up.path.clone(),
        max_streams_per_connection: 8,
        ..Config::default()
    };
    let proxy = TestProxy::start_with(&cfg, Arc::new(AllowAll));
    let mut client = cri::runtime_client(&proxy.path);
    client
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    let calls = (0..30).map(|i| {
        let mut c = client.clone();
        async move {
            c.version(cri::VersionRequest {
                version: format!("v{i}"),
            })
            .await
        }
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(up.requests().len(), 31);
    assert!(
        up.max_in_flight() <= 8,
        "{} calls in flight on one connection",
        up.max_in_flight()
    );
}

/// A peer that ignores the advertised limit and opens 30 streams at once gets the 22 past the
/// limit refused (RST_STREAM REFUSED_STREAM, before anything is read or forwarded).
#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), |p, b| {
        let mut r = echo(p, b);
        r.delay = Duration::from_secs(2);
        r
    });
    let cfg = Config {
        listen: dir.path().join("p.sock"),
        upstream: up.path.clone(),
        max_streams_per_connection: 8,
        ..Config::default()
    };
    let proxy = TestProxy::start_with(&cfg, Arc::new(AllowAll));
    let mut io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let path = b"/runtime.v1.RuntimeService/Version";
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    for i in 0..30u32 {
        let id = 2 * i + 1;
        out.extend_from_slice(&(block.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[1, 0x4]); // HEADERS, END_HEADERS (the body never comes)
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&block);
    }
    io.write_all(&out).await.unwrap();
    let mut refused = 0;
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused < 22 && Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(1), io.read(&mut chunk))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        buf.extend_from_slice(&chunk[..n]);
        refused = 0;
        let mut i = 0;
        while i + 9 <= buf.len() {
            let len = u32::from_be_bytes([0, buf[i], buf[i + 1], buf[i + 2]]) as usize;
            if i + 9 + len > buf.len() {
                break;
            }
            // RST_STREAM with REFUSED_STREAM (0x7).
            if buf[i + 3] == 3 && len == 4 && buf[i + 9..i + 13] == [0, 0, 0, 7] {
                refused += 1;
            }
            i += 9 + len;
        }
    }
    assert_eq!(refused, 22);
    // The 8 accepted streams are waiting for their bodies; none was forwarded past 8.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(up.max_in_flight() <= 8);
}

/// 2,000 distinct unknown runtime.v1 methods with long names: each is forwarded, and the set
/// remembered to log each once stays at its bound (before: +75 MiB that stayed).
#[tokio::test]
async fn unknown_method_set_is_bounded() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let long = "x".repeat(4000);
    for i in 0..2000 {
        let mut send = send.clone().ready().await.unwrap();
        let req = Request::post(format!(
            "http://localhost/runtime.v1.RuntimeService/Future{i}{long}"
        ))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        tx.send_data(frame(&cri::VersionRequest::default().encode_to_vec()), true)
            .unwrap();
        let (parts, mut body) = resp.await.unwrap().into_parts();
        assert_eq!(parts.status, 200);
        while let Some(chunk) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.unwrap().len());
        }
        assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    }
    assert_eq!(up.requests().len(), 2000);
    assert_eq!(proxy.stats.unknown_methods_tracked(), 256);
}

/// One echo call on an h2 connection; the echoed body, or the error that ended it (a refused
/// connection's GOAWAY).
async fn echo_call(send: &h2::client::SendRequest<Bytes>) -> Result<Bytes, h2::Error> {
    let mut send = send.clone().ready().await?;
    let req = Request::post("http://localhost/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut tx) = send.send_request(req, false)?;
    tx.send_data(frame(b"ping"), true)?;
    let mut body = resp.await?.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        got.extend_from_slice(&chunk?);
    }
    Ok(Bytes::from(got))
}

/// With `max_connections = 8`, eight client connections are served; the next ones get the
/// server preface and a GOAWAY (ENHANCE_YOUR_CALM) naming the setting, and are closed. A peer
/// that opens 1,000 more and keeps its ends open holds nothing in cri-guard (RSS stays within
/// a few MiB) and nothing reaches the runtime for them. Once a served connection closes, a new
/// one is served again.
#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let listen = dir.path().join("g.sock");
    let guard = start_binary(
        dir.path(),
        &format!(
            "listen = \"{}\"\nupstream = \"{}\"\nmax_connections = 8\n",
            listen.display(),
            up.path.display()
        ),
        &listen,
    );
    let pid = guard.0.id();
    // start_binary's readiness probe connected once; let the proxy see that one close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut served = Vec::new();
    for _ in 0..8 {
        let io = tokio::net::UnixStream::connect(&listen).await.unwrap();
        let (send, conn) = h2::client::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        assert_eq!(echo_call(&send).await.unwrap(), frame(b"ping"));
        served.push((send, conn));
    }
    let requests = up.requests().len();
    let (rss_before, _) = rss_kib(pid);

    // The ninth: the preface and a GOAWAY, then the end of the stream.
    let mut io = tokio::net::UnixStream::connect(&listen).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut got))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    assert!(got.len() >= 9 + 17, "{got:?}");
    assert_eq!((got[3], got[4]), (4, 0), "SETTINGS first: {got:?}");
    let goaway = &got[9..];
    assert_eq!(goaway[3], 7, "then GOAWAY: {got:?}");
    assert_eq!(&goaway[13..17], &0xbu32.to_be_bytes(), "ENHANCE_YOUR_CALM");
    let text = String::from_utf8_lossy(&goaway[17..]);
    assert!(text.contains("`max_connections`"), "{text}");

    // A thousand more, kept open by the peer: each refused, none held.
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(std::os::unix::net::UnixStream::connect(&listen).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_after, _) = rss_kib(pid);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 64,
        "cri-guard holds {fds} file descriptors with 8 connections served"
    );
    let grown_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    assert!(
        grown_mib < 4.0,
        "cri-guard grew by {grown_mib:.1} MiB for refused connections"
    );
    assert_eq!(
        up.requests().len(),
        requests,
        "a refused connection reached the runtime"
    );
    drop(held);

    // A served connection closes; a new one is served.
    let (send, conn) = served.pop().unwrap();
    drop(send);
    conn.abort();
    let started = Instant::now();
    loop {
        let io = tokio::net::UnixStream::connect(&listen).await.unwrap();
        if let Ok((send, conn)) = h2::client::handshake(io).await {
            tokio::spawn(conn);
            // Refused (GOAWAY) until cri-guard has seen the close; then served.
            if let Ok(Ok(body)) =
                tokio::time::timeout(Duration::from_secs(2), echo_call(&send)).await
            {
                assert_eq!(body, frame(b"ping"));
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no connection served after one of the eight closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
