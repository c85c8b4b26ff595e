//! The frame relay (src/proxy/splice.rs): what it must get right at the HTTP/2 level. HPACK
//! state across thousands of mixed calls against a real containerd (answers compared with
//! direct ones), CONTINUATION and padding, large responses under backpressure, resets, flow
//! control after many bytes the runtime never sees, SETTINGS changes mid-connection, PING and
//! GOAWAY relayed both ways. What reaches the runtime is read from a byte tap and checked frame
//! by frame with an independent decoder.

mod fakes;
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cri_guard::cri;
use cri_guard::proxy::grpc::{Code, Status};
use cri_guard::proxy::intercept::BoxFuture;
use cri_guard::proxy::{AllowAll, Call, Guard, Verdict};
use fakes::rawconn::{RawConn, frame_bytes};
use fakes::tap::{self, Tap};
use fakes::*;
use http::HeaderValue;
use prost::Message;
use support::TestBed;

/// Denies pulls of images whose name contains "denied"; allows everything else.
struct DenySome;

impl Guard for DenySome {
    fn decide<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Verdict> {
        let v = if call.image().contains("denied") {
            Verdict::Deny(Status::new(
                Code::Unknown,
                format!("SignatureValidationFailed: {}: test", call.image()),
            ))
        } else {
            Verdict::Forward
        };
        Box::pin(async move { v })
    }
}

/// Denies everything.
struct DenyAll;

impl Guard for DenyAll {
    fn decide<'a>(&'a self, _call: &'a Call) -> BoxFuture<'a, Verdict> {
        Box::pin(async {
            Verdict::Deny(Status::new(Code::Unknown, "SignatureValidationFailed: x"))
        })
    }
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

fn with_meta<T>(msg: T, i: usize) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    // Values that change per call: the client's encoder indexes them, evicting older entries.
    r.metadata_mut().insert(
        "x-call",
        format!("call-{i}-{}", "v".repeat(i % 97)).parse().unwrap(),
    );
    r.metadata_mut()
        .insert("x-kind", format!("k{}", i % 5).parse().unwrap());
    r
}

/// 2,400 calls on one client connection, 8 at a time, mixing relayed calls (Version,
/// ImageStatus, ListImages, ListContainers, a NotFound error) with kept ones (PullImage allowed
/// and denied, so stream ids reach the runtime with gaps), each with per-call metadata that
/// churns both dynamic tables: every answer equals the direct one, and every byte that reached
/// containerd is well-formed HTTP/2 whose header blocks decode with an independent decoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_calls_keep_hpack_in_step() {
    let bed = TestBed::start().await;
    let image = bed.push_image("mix", "v1");
    let tap = Tap::start(&bed.dir.path().join("tap.sock"), &bed.containerd_socket());
    let proxy = TestProxy::start(
        &bed.dir.path().join("g.sock"),
        &tap.path,
        Arc::new(DenySome),
    );
    let direct = bed.containerd_socket();
    cri::image_client(&direct)
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            ..Default::default()
        })
        .await
        .unwrap();
    let (rt, img) = (
        cri::runtime_client(&proxy.path),
        cri::image_client(&proxy.path),
    );
    let (rt_d, img_d) = (cri::runtime_client(&direct), cri::image_client(&direct));
    let denied = format!("{}/denied:v1", bed.registry.addr());
    for round in 0..300 {
        let mut calls = Vec::new();
        for k in 0..8 {
            let i = round * 8 + k;
            let (mut rt, mut img, mut rt_d, mut img_d) =
                (rt.clone(), img.clone(), rt_d.clone(), img_d.clone());
            let (image, denied) = (image.clone(), denied.clone());
            calls.push(tokio::spawn(async move {
                let via: Result<Vec<u8>, (tonic::Code, String)>;
                let dir: Result<Vec<u8>, (tonic::Code, String)>;
                macro_rules! both {
                    ($c:ident, $d:ident, $m:ident, $req:expr) => {{
                        via = $c
                            .$m(with_meta($req, i))
                            .await
                            .map(|r| r.into_inner().encode_to_vec())
                            .map_err(|s| (s.code(), s.message().to_string()));
                        dir = $d
                            .$m(with_meta($req, i))
                            .await
                            .map(|r| r.into_inner().encode_to_vec())
                            .map_err(|s| (s.code(), s.message().to_string()));
                    }};
                }
                match i % 8 {
                    0 => both!(
                        rt,
                        rt_d,
                        version,
                        cri::VersionRequest {
                            version: format!("v{i}")
                        }
                    ),
                    1 => both!(
                        img,
                        img_d,
                        image_status,
                        cri::ImageStatusRequest {
                            image: spec(&image),
                            verbose: false
                        }
                    ),
                    2 => both!(img, img_d, list_images, cri::ListImagesRequest::default()),
                    3 => both!(
                        rt,
                        rt_d,
                        list_containers,
                        cri::ListContainersRequest::default()
                    ),
                    4 => both!(
                        rt,
                        rt_d,
                        container_status,
                        cri::ContainerStatusRequest {
                            container_id: format!("nope-{i}"),
                            verbose: false
                        }
                    ),
                    5 => {
                        via = img
                            .pull_image(with_meta(
                                cri::PullImageRequest {
                                    image: spec(&denied),
                                    ..Default::default()
                                },
                                i,
                            ))
                            .await
                            .map(|r| r.into_inner().encode_to_vec())
                            .map_err(|s| (s.code(), s.message().to_string()));
                        dir = Err((
                            tonic::Code::Unknown,
                            format!("SignatureValidationFailed: {denied}: test"),
                        ));
                    }
                    6 if i % 48 == 6 => both!(
                        img,
                        img_d,
                        pull_image,
                        cri::PullImageRequest {
                            image: spec(&image),
                            ..Default::default()
                        }
                    ),
                    _ => both!(rt, rt_d, status, cri::StatusRequest { verbose: false }),
                }
                (i, via, dir)
            }));
        }
        for c in calls {
            let (i, via, dir) = c.await.unwrap();
            assert_eq!(via, dir, "call {i} differs");
        }
    }
    let recs = tap.recordings();
    // Two client channels (runtime and image service), each relayed on its own runtime
    // connection, and the image channel's connection for the calls cri-guard kept.
    assert_eq!(recs.len(), 3);
    let mut heads = 0;
    for rec in &recs {
        let up = tap::frames(&rec.up, true).expect("well-formed HTTP/2 to the runtime");
        tap::frames(&rec.down, false).expect("well-formed HTTP/2 from the runtime");
        for f in up.iter().filter(|f| f.kind == 1) {
            heads += 1;
            assert!(
                f.field(":path")
                    .is_some_and(|p| p.starts_with(b"/runtime.v1.")),
                "{f:?}"
            );
            let path = f.field(":path").unwrap();
            assert!(path != b"/runtime.v1.ImageService/PullImage" || f.field("x-call").is_some());
        }
    }
    // Every call but the denied ones (300 of them) reached containerd once.
    assert_eq!(heads, 2400 - 300);
}

/// A request header block split over HEADERS and CONTINUATION, with padding and a priority,
/// and padded DATA: the runtime receives the fields and body as sent; a response whose trailer
/// needs CONTINUATION frames comes back whole.
#[tokio::test]
async fn continuation_padding_and_priority() {
    let dir = sock_dir();
    let big = "t".repeat(40_000);
    let trailer = big.clone();
    let up = RawUpstream::start(&dir.path().join("up.sock"), move |p, b| {
        let mut r = echo(p, b);
        r.trailers
            .insert("x-big", HeaderValue::from_str(&trailer).unwrap());
        r
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let mut c = RawConn::connect(&proxy.path, &[]).await;
    let value = "c".repeat(20_000);
    let block = c.request_block(
        "/runtime.v1.RuntimeService/Version",
        &[("x-long", value.as_str())],
    );
    let (a, b) = block.split_at(9_000);
    let mut payload = vec![7u8]; // pad length
    payload.extend_from_slice(&[0, 0, 0, 0, 9]); // priority: no dependency, weight 9
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0; 7]);
    let body = frame(b"hello");
    let mut data = vec![3u8];
    data.extend_from_slice(&body);
    data.extend_from_slice(&[0; 3]);
    let mut out = frame_bytes(1, 0x8 | 0x20, 1, &payload);
    out.extend(frame_bytes(9, 0x4, 1, b));
    out.extend(frame_bytes(0, 0x8 | 0x1, 1, &data));
    c.send(&out).await;
    c.next_id = 3;
    let resp = c.finish(1).await;
    assert_eq!(resp.status().as_deref(), Some("0"));
    assert_eq!(resp.data, body.to_vec());
    let t = resp.trailers.iter().find(|(n, _)| n == b"x-big").unwrap();
    assert_eq!(t.1, big.as_bytes());
    let seen = up.requests();
    assert_eq!(seen[0].headers["x-long"], value.as_str());
    assert_eq!(seen[0].body, body);
    // The same connection goes on: the next call's block refers to entries of the first.
    let resp = c
        .call(
            "/runtime.v1.RuntimeService/Version",
            &frame(b"again"),
            &[("x-long", value.as_str())],
        )
        .await;
    assert_eq!(resp.data, frame(b"again").to_vec());
    assert_eq!(up.requests()[1].headers["x-long"], value.as_str());
}

/// Streams the client resets mid-response (the runtime still sending) do not disturb the
/// connection: the next calls on it get whole, correct answers.
#[tokio::test]
async fn client_resets_mid_response() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), |_, b| {
        let mut r = echo("", b);
        r.frames = (0..40)
            .map(|i| Bytes::from(vec![i as u8; 50_000]))
            .collect();
        r
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for round in 0..3 {
        let mut bodies = Vec::new();
        for _ in 0..5 {
            let mut send = send.clone().ready().await.unwrap();
            let req =
                http::Request::post("http://localhost/runtime.v1.RuntimeService/ListContainers")
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap();
            let (resp, mut tx) = send.send_request(req, false).unwrap();
            tx.send_data(frame(b""), true).unwrap();
            bodies.push(resp);
        }
        for resp in bodies {
            let mut body = resp.await.unwrap().into_body();
            let first = body.data().await.unwrap().unwrap();
            assert!(!first.is_empty());
            drop(body); // RST_STREAM(CANCEL) while the runtime is still sending
        }
        // Whole answers after the resets, on the same connection.
        for i in 0..4 {
            let mut send = send.clone().ready().await.unwrap();
            let req =
                http::Request::post("http://localhost/runtime.v1.RuntimeService/ListContainers")
                    .header("content-type", "application/grpc")
                    .header("x-round", format!("{round}-{i}"))
                    .body(())
                    .unwrap();
            let (resp, mut tx) = send.send_request(req, false).unwrap();
            tx.send_data(frame(b""), true).unwrap();
            let mut body = resp.await.unwrap().into_body();
            let mut n = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                n += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            assert_eq!(n, 40 * 50_000);
            assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
        }
    }
}

/// 64 PullImage calls of 300 KiB each (19 MB, far past every flow-control window) on one
/// connection, denied: each body arrives whole (stream credit granted as it is buffered), every
/// call is answered, the connection's credit comes back (relayed calls after them go through
/// without a stall), and nothing reached the runtime but those relayed calls.
#[tokio::test]
async fn kept_bytes_beyond_the_windows_do_not_stall() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(DenyAll));
    let io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let pull = cri::PullImageRequest {
        image: spec(&"a".repeat(300 * 1024)),
        ..Default::default()
    };
    let body = frame(&pull.encode_to_vec());
    let run = async {
        for wave in 0..8 {
            let mut waiting = Vec::new();
            for _ in 0..8 {
                let mut send = send.clone().ready().await.unwrap();
                let req = http::Request::post("http://localhost/runtime.v1.ImageService/PullImage")
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap();
                let (resp, mut tx) = send.send_request(req, false).unwrap();
                let body = body.clone();
                waiting.push(tokio::spawn(async move {
                    let mut rest = body;
                    while !rest.is_empty() {
                        tx.reserve_capacity(rest.len());
                        let cap = std::future::poll_fn(|cx| tx.poll_capacity(cx))
                            .await
                            .expect("capacity")
                            .expect("capacity");
                        let part = rest.split_to(cap.min(rest.len()));
                        tx.send_data(part, rest.is_empty()).unwrap();
                    }
                    resp.await
                }));
            }
            for w in waiting {
                let r = w.await.unwrap().expect("answered, not reset");
                assert_eq!(r.headers()["grpc-status"], "2", "wave {wave}");
            }
            let mut send2 = send.clone().ready().await.unwrap();
            let req = http::Request::post("http://localhost/runtime.v1.RuntimeService/Version")
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let (resp, mut tx) = send2.send_request(req, false).unwrap();
            tx.send_data(frame(b"v"), true).unwrap();
            let mut b = resp.await.unwrap().into_body();
            assert_eq!(b.data().await.unwrap().unwrap(), frame(b"v"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("stalled");
    let seen = up.requests();
    assert_eq!(seen.len(), 8);
    assert!(seen.iter().all(|r| r.path.ends_with("/Version")));
    assert_eq!(proxy.stats.intercepted_bytes_buffered(), 0);
}

/// SETTINGS changed mid-connection by the client (HEADER_TABLE_SIZE down to 0 and back up,
/// INITIAL_WINDOW_SIZE down and up, MAX_FRAME_SIZE up): the runtime's encoder follows (its
/// size updates reach the client's decoder through the relay), large responses keep flowing,
/// and every response header block decodes.
#[tokio::test]
async fn settings_change_mid_connection() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), |_, b| {
        let mut r = echo("", b);
        r.frames = vec![Bytes::from(vec![7u8; 200_000])];
        r.trailers.insert(
            "x-n",
            HeaderValue::from_str(&format!("{}", b.len())).unwrap(),
        );
        r
    });
    let tap = Tap::start(&dir.path().join("tap.sock"), &up.path);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &tap.path, Arc::new(AllowAll));
    let mut c = RawConn::connect(&proxy.path, &[(4, 1 << 20)]).await;
    let settings = [
        vec![(1u16, 0u32)],
        vec![(1, 4096), (4, 16_384)],
        vec![(4, 1 << 20), (5, 1 << 20)],
        vec![(1, 256)],
    ];
    for (round, s) in settings.iter().enumerate() {
        for i in 0..5 {
            let body = frame(format!("r{round}-{i}").as_bytes());
            let resp = c
                .call("/runtime.v1.RuntimeService/ListContainers", &body, &[])
                .await;
            assert_eq!(
                resp.status().as_deref(),
                Some("0"),
                "round {round} call {i}"
            );
            assert_eq!(resp.data.len(), 200_000);
        }
        let mut p = Vec::new();
        for (id, v) in s {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        c.send(&frame_bytes(4, 0, 0, &p)).await;
    }
    // The client's settings reached the runtime (capped: MAX_FRAME_SIZE stays 16 KiB).
    let up_frames = tap::frames(&tap.recordings()[0].up, true).unwrap();
    let sent: Vec<(u16, u32)> = up_frames
        .iter()
        .filter(|f| f.kind == 4 && f.flags & 1 == 0)
        .flat_map(|f| {
            f.payload
                .chunks(6)
                .map(|p| {
                    (
                        u16::from_be_bytes([p[0], p[1]]),
                        u32::from_be_bytes(p[2..6].try_into().unwrap()),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(sent.contains(&(1, 0)), "{sent:?}");
    assert!(sent.contains(&(5, 16_384)), "{sent:?}");
    assert!(!sent.iter().any(|(id, v)| *id == 5 && *v > 16_384));
}

/// PING both ways: the client's PING is answered by the runtime (relayed, not answered by
/// cri-guard), and the client's GOAWAY reaches the runtime.
#[tokio::test]
async fn ping_and_client_goaway_relayed() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let tap = Tap::start(&dir.path().join("tap.sock"), &up.path);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &tap.path, Arc::new(AllowAll));
    let mut c = RawConn::connect(&proxy.path, &[]).await;
    let resp = c
        .call("/runtime.v1.RuntimeService/Version", &frame(b"x"), &[])
        .await;
    assert_eq!(resp.status().as_deref(), Some("0"));
    c.send(&frame_bytes(6, 0, 0, b"cri-ping")).await;
    let mut acked = false;
    for _ in 0..50 {
        if c.seen
            .iter()
            .any(|f| f.kind == 6 && f.flags & 1 != 0 && f.payload == b"cri-ping")
        {
            acked = true;
            break;
        }
        c.read_some(Duration::from_millis(100)).await;
    }
    assert!(acked, "no PING ack");
    c.send(&frame_bytes(7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let up_frames = tap::frames(&tap.recordings()[0].up, true).unwrap();
    assert!(
        up_frames
            .iter()
            .any(|f| f.kind == 6 && f.flags & 1 == 0 && f.payload == b"cri-ping")
    );
    assert!(up_frames.iter().any(|f| f.kind == 7));
    let down = tap::frames(&tap.recordings()[0].down, false).unwrap();
    assert!(
        down.iter()
            .any(|f| f.kind == 6 && f.flags & 1 != 0 && f.payload == b"cri-ping")
    );
}

/// The runtime goes away gracefully (GOAWAY) with a kept call in progress: the GOAWAY reaches
/// the client with its last stream id raised over the kept call, the kept call is answered,
/// and a gRPC client's next calls go through on a new connection.
#[tokio::test]
async fn runtime_goaway_relayed() {
    let dir = sock_dir();
    let up_path = dir.path().join("up.sock");
    let listener = tokio::net::UnixListener::bind(&up_path).unwrap();
    let fake = tokio::spawn(async move {
        let mut conns = 0;
        while let Ok((io, _)) = listener.accept().await {
            conns += 1;
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(io).await.unwrap();
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let path = req.uri().path().to_string();
                    let mut tx = respond
                        .send_response(
                            http::Response::builder()
                                .header("content-type", "application/grpc")
                                .body(())
                                .unwrap(),
                            false,
                        )
                        .unwrap();
                    tx.send_data(
                        frame(
                            &cri::VersionResponse {
                                runtime_name: "fake".into(),
                                ..Default::default()
                            }
                            .encode_to_vec(),
                        ),
                        false,
                    )
                    .unwrap();
                    let mut t = http::HeaderMap::new();
                    t.insert("grpc-status", HeaderValue::from_static("0"));
                    tx.send_trailers(t).unwrap();
                    if path.ends_with("/Shutdown") {
                        conn.graceful_shutdown();
                    }
                }
            });
            if conns > 5 {
                break;
            }
        }
    });
    struct Slow;
    impl Guard for Slow {
        fn decide<'a>(&'a self, _: &'a Call) -> BoxFuture<'a, Verdict> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Verdict::Deny(Status::new(
                    Code::Unknown,
                    "SignatureValidationFailed: slow",
                ))
            })
        }
    }
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up_path, Arc::new(Slow));
    let mut c = RawConn::connect(&proxy.path, &[]).await;
    let kept = c
        .start_call(
            "/runtime.v1.ImageService/PullImage",
            &frame(
                &cri::PullImageRequest {
                    image: spec("x"),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            &[],
        )
        .await;
    let r = c
        .call("/runtime.v1.RuntimeService/Shutdown", &frame(b""), &[])
        .await;
    assert_eq!(r.status().as_deref(), Some("0"));
    let kept_answer = c.finish(kept).await;
    assert_eq!(kept_answer.status().as_deref(), Some("2"));
    for _ in 0..20 {
        if c.seen.iter().any(|f| f.kind == 7) {
            break;
        }
        c.read_some(Duration::from_millis(100)).await;
    }
    let goaways: Vec<u32> = c
        .seen
        .iter()
        .filter(|f| f.kind == 7)
        .map(|f| u32::from_be_bytes(f.payload[..4].try_into().unwrap()))
        .collect();
    assert!(!goaways.is_empty(), "GOAWAY relayed");
    assert!(
        goaways.iter().all(|l| *l >= kept),
        "{goaways:?} vs kept {kept}"
    );
    // A gRPC client reconnects by itself.
    let mut rt = cri::runtime_client(&proxy.path);
    for _ in 0..3 {
        let v = rt.version(cri::VersionRequest::default()).await.unwrap();
        assert_eq!(v.into_inner().runtime_name, "fake");
    }
    fake.abort();
}

/// 1,000 containers on a real containerd: ListContainers through the proxy equals the direct
/// answer, also for a client that reads the response slowly (the relay stops reading the
/// runtime while the client's window is closed, then resumes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_containers_with_a_slow_reader() {
    let bed = TestBed::start().await;
    let image = bed.push_image("many", "v1");
    let direct = bed.containerd_socket();
    let mut img = cri::image_client(&direct);
    let pulled = img
        .pull_image(cri::PullImageRequest {
            image: spec(&image),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    let sandbox = support::sandbox_config(&support::unique_name("many"), "default");
    let mut rt = cri::runtime_client(&direct);
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    for batch in 0..125 {
        let mut creating = Vec::new();
        for k in 0..8 {
            let mut rt = rt.clone();
            let cfg =
                support::container_config(&format!("c{}", batch * 8 + k), &pulled, &["/bin/true"]);
            let (pod, sandbox) = (pod.clone(), sandbox.clone());
            creating.push(tokio::spawn(async move {
                rt.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(cfg),
                    sandbox_config: Some(sandbox),
                })
                .await
                .unwrap();
            }));
        }
        for c in creating {
            c.await.unwrap();
        }
    }
    let proxy = TestProxy::start(&bed.dir.path().join("g.sock"), &direct, Arc::new(AllowAll));
    let want = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(want.containers.len(), 1000);
    // containerd lists in no particular order: compare sorted.
    let sorted = |mut r: cri::ListContainersResponse| {
        r.containers.sort_by(|a, b| a.id.cmp(&b.id));
        r
    };
    let want = sorted(want);
    let via = cri::runtime_client(&proxy.path)
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        sorted(via) == want,
        "ListContainers through the proxy differs"
    );
    // A slow reader: 16 KiB windows, credit given back a little at a time.
    let io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post("http://localhost/runtime.v1.RuntimeService/ListContainers")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut tx) = send.send_request(req, false).unwrap();
    tx.send_data(
        frame(&cri::ListContainersRequest::default().encode_to_vec()),
        true,
    )
    .unwrap();
    let mut body = resp.await.unwrap().into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        got.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    assert_eq!(body.trailers().await.unwrap().unwrap()["grpc-status"], "0");
    let decoded = cri::ListContainersResponse::decode(&got[5..]).unwrap();
    assert!(
        sorted(decoded) == want,
        "slow reader's ListContainers differs"
    );
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

/// Large answers read as fast as the client can: the relay's output to the client goes over its
/// high-water mark (both sides are then held back), is written partly, and drains. Two lost
/// wakeups lived there: a side held back was not read again once the flush drained the output,
/// and a partial write registered no waker for the rest (they hung a 1,000-container list on
/// containerd 2.1). 40 calls of 2 MiB each on one connection with large windows: every one is
/// answered whole within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_keep_flowing() {
    const SIZE: usize = 2 << 20;
    let dir = sock_dir();
    let frames: Vec<Bytes> = vec![0x5a_u8; SIZE]
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let up = RawUpstream::start(&dir.path().join("up.sock"), move |_, _| {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Reply {
            headers: grpc_headers(),
            frames: frames.clone(),
            trailers,
            delay: Duration::ZERO,
        }
    });
    let proxy = TestProxy::start(&dir.path().join("g.sock"), &up.path, Arc::new(AllowAll));
    let io = tokio::net::UnixStream::connect(&proxy.path).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(8 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..40 {
        let received = std::sync::atomic::AtomicUsize::new(0);
        let call = async {
            let mut send = send.clone().ready().await.unwrap();
            let req =
                http::Request::post("http://localhost/runtime.v1.RuntimeService/ListContainers")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .unwrap();
            let (resp, mut tx) = send.send_request(req, false).unwrap();
            tx.send_data(
                frame(&cri::ListContainersRequest::default().encode_to_vec()),
                true,
            )
            .unwrap();
            let mut body = resp.await.unwrap().into_body();
            let mut n = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                n += chunk.len();
                received.store(n, std::sync::atomic::Ordering::Relaxed);
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = body.trailers().await.unwrap().unwrap();
            (n, trailers["grpc-status"].clone())
        };
        let got = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .unwrap_or_else(|_| {
                let n = received.load(std::sync::atomic::Ordering::Relaxed);
                panic!("call {i}: {n} of {SIZE} bytes and no end within 20 s: the relay stalled")
            });
        assert_eq!(got, (SIZE, HeaderValue::from_static("0")), "call {i}");
    }
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 section 5.1), first byte flags 0.
fn hpack_int(out: &mut Vec<u8>, prefix: u8, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(v as u8);
        return;
    }
    out.push(max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Request trailers over the header-list bound (64 KiB) on a relayed call are not relayed cut
/// short: the call is reset toward the client (ENHANCE_YOUR_CALM) and toward the runtime, and
/// the connection goes on serving.
#[tokio::test]
async fn oversized_request_trailers_reset_the_call() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let mut c = RawConn::connect(&proxy.path, &[]).await;
    let id = c.next_id;
    c.next_id += 2;
    let block = c.request_block("/runtime.v1.RuntimeService/Version", &[]);
    let mut out = frame_bytes(1, 0x4, id, &block);
    out.extend(frame_bytes(0, 0, id, &frame(b"ping")));
    // The trailers: one 80,000-byte field, a literal without indexing (the client's table is
    // left as it was), over HEADERS and CONTINUATION frames, ending the stream.
    let mut trailers = vec![0x00];
    hpack_int(&mut trailers, 7, 5);
    trailers.extend_from_slice(b"x-big");
    hpack_int(&mut trailers, 7, 80_000);
    trailers.extend(std::iter::repeat_n(b'a', 80_000));
    let chunks: Vec<&[u8]> = trailers.chunks(16_384).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let end_headers = if i + 1 == chunks.len() { 0x4 } else { 0 };
        let (kind, flags) = if i == 0 {
            (1, 0x1 | end_headers)
        } else {
            (9, end_headers)
        };
        out.extend(frame_bytes(kind, flags, id, chunk));
    }
    c.send(&out).await;
    let resp = c.finish(id).await;
    assert_eq!(resp.reset, Some(0xb), "{resp:?}");
    // The connection still serves.
    let next = c
        .start_call("/runtime.v1.RuntimeService/Version", &frame(b"again"), &[])
        .await;
    let resp = c.finish(next).await;
    assert_eq!(resp.status().as_deref(), Some("0"), "{resp:?}");
    assert_eq!(resp.data, frame(b"again"));
}
