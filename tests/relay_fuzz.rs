//! Property tests of the frame relay: arbitrary bytes from either side (random frames of every
//! type, valid and mutated header blocks, random lengths, flags and stream ids) never panic
//! cri-guard and never reach the other side malformed. What the other side received is checked
//! frame by frame and its header blocks decoded with an independent decoder (loona-hpack).
//! Deterministic (seeded xorshift), so a failure names its case.

mod fakes;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cri_guard::cri;
use cri_guard::proxy::AllowAll;
use fakes::rawconn::frame_bytes;
use fakes::tap::{self, Tap};
use fakes::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Only panics in the proxy's tasks (tokio's worker threads), not a test's assertion.
        let thread = std::thread::current();
        if thread
            .name()
            .is_some_and(|n| n.starts_with("tokio-runtime-worker"))
        {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        default(info);
    }));
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const PATHS: [&str; 4] = [
    "/runtime.v1.RuntimeService/Version",
    "/runtime.v1.ImageService/PullImage",
    "/runtime.v1alpha2.RuntimeService/Version",
    "/runtime.v1.RuntimeService/ListContainers",
];

/// A random frame sequence as a peer might send it: mostly plausible, often broken.
fn frames(rng: &mut Rng, enc: &mut loona_hpack::Encoder<'static>, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if request && rng.below(4) > 0 {
        // Mostly start with a well-formed call, so later frames meet a relayed stream.
        let block = enc.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", PATHS[rng.below(4) as usize].as_bytes()),
            (b"content-type", b"application/grpc"),
        ]);
        out.extend(frame_bytes(1, 4, 1, &block));
        out.extend(frame_bytes(0, 1, 1, &frame(b"x")));
    } else if !request && rng.below(4) > 0 {
        let block = enc.encode(vec![
            (&b":status"[..], &b"200"[..]),
            (b"content-type", b"application/grpc"),
        ]);
        out.extend(frame_bytes(1, 4, 1, &block));
        out.extend(frame_bytes(6, 0, 0, b"pingpong"));
    }
    for _ in 0..rng.below(12) + 1 {
        let stream = [0u32, 1, 1, 3, 5, 2, rng.below(1 << 31) as u32][rng.below(7) as usize];
        let flags = [0u8, 1, 4, 5, 8, 0x20, 0x2d, rng.next() as u8][rng.below(8) as usize];
        let kind = [0u8, 1, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 0x42][rng.below(14) as usize];
        let mut payload = match kind {
            1 | 9 if rng.below(3) > 0 => {
                let path = PATHS[rng.below(4) as usize];
                let fields: Vec<(&[u8], &[u8])> = if request {
                    vec![
                        (b":method", b"POST"),
                        (b":scheme", b"http"),
                        (b":path", path.as_bytes()),
                        (b"content-type", b"application/grpc"),
                    ]
                } else {
                    vec![(b":status", b"200"), (b"grpc-status", b"0")]
                };
                enc.encode(fields)
            }
            0 => {
                let n = rng.below(40) as usize;
                frame(&rng.bytes(n)).to_vec()
            }
            4 => {
                let ids = [1u16, 2, 3, 4, 5, 6, 9];
                let mut p = Vec::new();
                for _ in 0..rng.below(4) {
                    p.extend_from_slice(&ids[rng.below(7) as usize].to_be_bytes());
                    p.extend_from_slice(&(rng.below(70_000) as u32).to_be_bytes());
                }
                p
            }
            8 => (rng.below(100_000) as u32).to_be_bytes().to_vec(),
            _ => {
                let n = rng.below(20) as usize;
                rng.bytes(n)
            }
        };
        // Sometimes break it: flip a byte, cut it, or pad it with garbage.
        match rng.below(6) {
            0 if !payload.is_empty() => {
                let i = rng.below(payload.len() as u64) as usize;
                payload[i] ^= 1 << rng.below(8);
            }
            1 => payload.truncate(rng.below(payload.len() as u64 + 1) as usize),
            2 => {
                let n = rng.below(8) as usize;
                payload.extend(rng.bytes(n))
            }
            _ => {}
        }
        out.extend(frame_bytes(kind, flags, stream, &payload));
        if rng.below(40) == 0 {
            // A frame header announcing more than the limit.
            out.extend_from_slice(&[0x01, 0x00, 0x00, 0, 0, 0, 0, 0, 1]);
        }
    }
    out
}

/// Arbitrary client bytes: no panic, the proxy keeps serving, and everything that reached the
/// runtime parses as HTTP/2 with decodable header blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_client_bytes() {
    count_panics();
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let tap = Tap::start(&dir.path().join("tap.sock"), &up.path);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &tap.path, Arc::new(AllowAll));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..400 {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = if rng.below(10) > 0 {
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
        } else {
            rng.bytes(24)
        };
        bytes.extend(frames(&mut rng, &mut enc, true));
        let mut io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
        let _ = io.write_all(&bytes).await;
        let mut sink = vec![0u8; 65536];
        let _ = tokio::time::timeout(Duration::from_millis(30), async {
            while let Ok(n) = io.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panic in case {case}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut relayed_heads = 0;
    for (i, rec) in tap.recordings().iter().enumerate() {
        match tap::frames(&rec.up, true) {
            Ok(f) => relayed_heads += f.iter().filter(|f| f.kind == 1).count(),
            Err(e) => panic!("connection {i} reached the runtime malformed: {e}"),
        }
    }
    eprintln!("{relayed_heads} request header blocks relayed");
    assert!(relayed_heads > 20, "the cases hardly reach the runtime");
    let v = cri::runtime_client(&proxy.path)
        .version(cri::VersionRequest::default())
        .await;
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// Arbitrary runtime bytes (after the client opened a relayed call): no panic, and everything
/// the client received parses as HTTP/2 with decodable header blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_runtime_bytes() {
    count_panics();
    let dir = sock_dir();
    let up_path = dir.path().join("up.sock");
    let listener = tokio::net::UnixListener::bind(&up_path).unwrap();
    let (cases_tx, mut cases_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let fake = tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let Some(bytes) = cases_rx.recv().await else {
                break;
            };
            let (mut r, mut w) = io.into_split();
            let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut sink = vec![0u8; 65536];
                let mut total = 0;
                let mut seen_tx = Some(seen_tx);
                while let Ok(n) = r.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                    total += n;
                    // Preface + SETTINGS (24 + 15) then the request: answer after it.
                    if total > 60 {
                        if let Some(tx) = seen_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            });
            let _ = tokio::time::timeout(Duration::from_millis(200), seen_rx).await;
            let _ = w.write_all(&bytes).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up_path, Arc::new(AllowAll));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut relayed = 0;
    for case in 0..300 {
        let mut enc = loona_hpack::Encoder::new();
        let mut bytes = Vec::new();
        if rng.below(4) > 0 {
            bytes.extend(frame_bytes(4, 0, 0, &[]));
        }
        bytes.extend(frames(&mut rng, &mut enc, false));
        cases_tx.send(bytes).await.unwrap();
        let mut io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
        let mut req = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        req.extend(frame_bytes(4, 0, 0, &[]));
        let block = loona_hpack::Encoder::new().encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", PATHS[3].as_bytes()),
            (b"content-type", b"application/grpc"),
        ]);
        req.extend(frame_bytes(1, 4, 1, &block));
        req.extend(frame_bytes(0, 1, 1, &frame(b"")));
        io.write_all(&req).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let _ = tokio::time::timeout(Duration::from_millis(60), async {
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        match tap::frames(&got, false) {
            // PINGs and their acks, and response HEADERS, come only from the runtime here.
            Ok(f) => {
                relayed += f
                    .iter()
                    .filter(|f| {
                        f.kind == 6 || (f.kind == 1 && f.field("grpc-status") == Some(b"0"))
                    })
                    .count()
            }
            Err(e) => panic!("case {case}: the client received something malformed: {e}"),
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "panic in case {case}");
    }
    eprintln!("{relayed} runtime frames relayed");
    assert!(relayed > 20, "the cases hardly reach the client");
    fake.abort();
}
