//! The `proxy` target: raw bytes after the HTTP/2 client preface, written into a running
//! [`Proxy`] (the real listener, connection task, router, intercept decoding and relay) whose
//! guard is a real [`Verifier`] and whose upstream is an in-process HTTP/2 server that echoes
//! each request body back as the response, then `grpc-status: 0`.
//!
//! Every input is one connection: the bytes are written, the write side is closed, and the
//! proxy must close the connection within a bound (a hang is a finding). The policy only names
//! `127.0.0.1:1` (nothing listens there) and a skip rule, so no input sends traffic anywhere
//! but loopback.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cri_guard::config::{Config, Overrides};
use cri_guard::proxy::Proxy;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the proxy may take to close a connection whose client has sent everything.
const CLOSE_BOUND: Duration = Duration::from_secs(20);

const POLICY: &str = r#"
default = "enforce"
[sandbox]
mode = "enforce"
[[rules]]
name = "skip"
imageReferences = ["skip.invalid/*"]
mode = "skip"
[[rules]]
name = "nothing-listens"
imageReferences = ["127.0.0.1:1/*"]
[[rules.attestors]]
name = "k"
key = "KEY"
[fetch]
timeout = "1s"
verifyTimeout = "2s"
"#;

struct State {
    listen: PathBuf,
    _dir: PathBuf,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cri-guard-fuzz-proxy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = dir.join("proxy.sock");
        let upstream = dir.join("upstream.sock");
        let overrides = Overrides {
            listen: Some(listen.display().to_string()),
            upstream: Some(upstream.display().to_string()),
            ..Overrides::default()
        };
        let cfg = Config::parse("fuzz", "max_intercepted_message = \"1MiB\"\n", &overrides)
            .unwrap_or_else(|e| panic!("fuzz proxy config: {e}"));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let up = tokio::net::UnixListener::bind(&upstream).unwrap();
                tokio::spawn(echo_upstream(up));
                let key = super::shared().join("testdata/cosign-real/keys/cosign.pub");
                let text = POLICY.replace("KEY", &key.display().to_string());
                let policy = Policy::parse("fuzz", &text, std::path::Path::new("/"))
                    .unwrap_or_else(|e| panic!("fuzz proxy policy: {e}"));
                let verifier = Verifier::new(policy, Some(upstream.clone())).unwrap();
                let proxy = Proxy::bind(&cfg, Arc::new(verifier)).unwrap();
                ready_tx.send(()).unwrap();
                proxy.run(std::future::pending()).await;
            });
        });
        ready_rx.recv().unwrap();
        State { listen, _dir: dir }
    })
}

/// An upstream CRI runtime stand-in: every request's body comes back as its response.
async fn echo_upstream(listener: tokio::net::UnixListener) {
    loop {
        let Ok((io, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(io).await else {
                return;
            };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut got = Vec::new();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        if got.len() < 1 << 20 {
                            got.extend_from_slice(&chunk);
                        }
                    }
                    let resp = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let Ok(mut send) = respond.send_response(resp, false) else {
                        return;
                    };
                    let _ = send.send_data(Bytes::from(got), false);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let _ = send.send_trailers(trailers);
                });
            }
        });
    }
}

pub(crate) fn proxy(data: &[u8]) {
    let st = state();
    let mut sock = UnixStream::connect(&st.listen).expect("connect to the fuzzed proxy");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(data);
    // The proxy may close early (a protocol error): a failed write is an answer, not a finding.
    let _ = sock.write_all(&input);
    let _ = sock.shutdown(std::net::Shutdown::Write);
    let start = Instant::now();
    let mut buf = [0u8; 16384];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        assert!(
            start.elapsed() < CLOSE_BOUND,
            "the proxy kept the connection open {CLOSE_BOUND:?} after the client finished sending"
        );
    }
}

// ------------------------------------------------------------------------ frames for the seeds

/// An HTTP/2 frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block of literals without indexing (no Huffman coding).
pub fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    fn int(out: &mut Vec<u8>, mut v: usize) {
        if v < 127 {
            out.push(v as u8);
            return;
        }
        out.push(127);
        v -= 127;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }
    let mut out = Vec::new();
    for (k, v) in headers {
        out.push(0);
        int(&mut out, k.len());
        out.extend_from_slice(k.as_bytes());
        int(&mut out, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// SETTINGS, then one unary gRPC call on `stream` to `path` with `message`.
pub fn call(stream: u32, path: &str, message: &[u8]) -> Vec<u8> {
    let mut out = frame(4, 0, 0, &[]);
    out.extend(call_frames(stream, path, message));
    out
}

/// The HEADERS and DATA frames of one unary gRPC call.
pub fn call_frames(stream: u32, path: &str, message: &[u8]) -> Vec<u8> {
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let mut out = frame(1, 4, stream, &headers);
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    out.extend(frame(0, 1, stream, &body));
    out
}
