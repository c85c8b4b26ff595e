//! Proxy behaviour that needs an upstream we can script or inspect byte by byte: in-process fake
//! upstreams (see `fakes`). Behaviour against the real containerd is in `tests/e2e.rs`.

mod fakes;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cri_guard::cri;
use cri_guard::proxy::grpc::{Code, Status};
use cri_guard::proxy::intercept::BoxFuture;
use cri_guard::proxy::{AllowAll, Call, Guard, Verdict};
use fakes::*;
use http::HeaderValue;
use prost::Message;

/// A field number no CRI message uses, with a payload: what a newer kubelet might send.
fn with_unknown_field(mut msg: Vec<u8>) -> Vec<u8> {
    // field 999, wire type 2 (length-delimited): key = 999 << 3 | 2 = 7994 = varint [0xBA, 0x3E]
    msg.extend_from_slice(&[0xBA, 0x3E, 5, b'h', b'e', b'l', b'l', b'o']);
    msg
}

/// A relayed request carrying a field unknown to our proto reaches the upstream byte for byte,
/// and the response (body and trailers) comes back byte for byte.
#[tokio::test]
async fn unknown_fields_survive_both_ways() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let msg = with_unknown_field(
        cri::VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec(),
    );
    let body = frame(&msg);

    let (headers, resp, trailers) = raw_call(
        &proxy.path,
        "/runtime.v1.RuntimeService/Version",
        body.clone(),
    )
    .await;

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/runtime.v1.RuntimeService/Version");
    assert_eq!(seen[0].body, body, "request bytes changed on the way");
    assert_eq!(seen[0].headers["te"], "trailers");
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(resp, body, "response bytes changed on the way");
    let trailers = trailers.expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-fake-trailer"], "kept");
}

/// PullImage and CreateContainer pass the intercept point and, when allowed, are forwarded with
/// their original bytes (unknown fields included).
#[tokio::test]
async fn intercepted_calls_forward_original_bytes() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let guard = Arc::new(Counting::default());
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, guard.clone());
    let pull = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: "example.com/a:1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = frame(&with_unknown_field(pull.encode_to_vec()));
    let (_, resp, _) = raw_call(
        &proxy.path,
        "/runtime.v1.ImageService/PullImage",
        body.clone(),
    )
    .await;
    let create = cri::CreateContainerRequest {
        pod_sandbox_id: "p1".into(),
        ..Default::default()
    };
    let body2 = frame(&with_unknown_field(create.encode_to_vec()));
    raw_call(
        &proxy.path,
        "/runtime.v1.RuntimeService/CreateContainer",
        body2.clone(),
    )
    .await;

    assert_eq!(
        guard.calls.load(Ordering::SeqCst),
        2,
        "both calls reached the guard"
    );
    let seen = up.requests();
    assert_eq!(seen[0].body, body);
    assert_eq!(seen[1].body, body2);
    assert_eq!(resp, body);
}

/// A guard that appends a field: the upstream gets the original bytes plus the appended field,
/// and protobuf merge makes the appended value win.
#[tokio::test]
async fn appended_fields_override_and_keep_unknown_fields() {
    struct Pin;
    impl Guard for Pin {
        fn decide<'a>(&'a self, _call: &'a Call) -> BoxFuture<'a, Verdict> {
            let extra = cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: "example.com/a@sha256:00".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            Box::pin(async move { Verdict::ForwardAppended(extra.encode_to_vec().into()) })
        }
    }
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(Pin));
    let pull = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: "example.com/a:1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let original = with_unknown_field(pull.encode_to_vec());
    raw_call(
        &proxy.path,
        "/runtime.v1.ImageService/PullImage",
        frame(&original),
    )
    .await;

    let seen = up.requests();
    let msg = &seen[0].body[5..];
    assert!(msg.starts_with(&original), "original bytes kept in front");
    let merged = cri::PullImageRequest::decode(msg).unwrap();
    assert_eq!(merged.image.unwrap().image, "example.com/a@sha256:00");
    assert_eq!(
        u32::from_be_bytes(seen[0].body[1..5].try_into().unwrap()) as usize,
        msg.len()
    );
}

/// A denial answers with the guard's status and nothing reaches the runtime.
#[tokio::test]
async fn denied_call_never_reaches_upstream() {
    struct Deny;
    impl Guard for Deny {
        fn decide<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Verdict> {
            let msg = format!("SignatureValidationFailed: {}: no signature", call.image());
            Box::pin(async move { Verdict::Deny(Status::new(Code::Unknown, msg)) })
        }
    }
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(Deny));
    let mut client = cri::image_client(&proxy.path);
    let err = client
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: "example.com/a:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert_eq!(
        err.message(),
        "SignatureValidationFailed: example.com/a:1: no signature"
    );
    assert!(
        up.requests().is_empty(),
        "a denied call reached the runtime"
    );
}

/// Undecodable and oversized intercepted requests are refused (fail closed), not forwarded.
#[tokio::test]
async fn malformed_intercepted_requests_fail_closed() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let cfg = cri_guard::config::Config {
        listen: dir.path().join("p.sock"),
        upstream: up.path.clone(),
        max_intercepted_message: 4096,
        ..Default::default()
    };
    let proxy = TestProxy::start_with(&cfg, Arc::new(AllowAll));
    let cases = [
        (Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]), "3"), // invalid protobuf
        (Bytes::from_static(&[1, 0, 0, 0, 1, 0]), "3"),                // compressed
        (Bytes::from_static(&[0, 0]), "3"),                            // truncated
        (frame(&vec![0x0a; 5000]), "8"),                               // over the limit
    ];
    for (body, code) in cases {
        let (headers, _, _) =
            raw_call(&proxy.path, "/runtime.v1.ImageService/PullImage", body).await;
        assert_eq!(headers["grpc-status"], code, "{headers:?}");
    }
    assert!(up.requests().is_empty());
}

/// runtime.v1alpha2 and non-CRI services (e.g. containerd's own API) are refused and never
/// forwarded; an unknown runtime.v1 method is forwarded.
#[tokio::test]
async fn side_doors_refused_unknown_v1_forwarded() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), echo);
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    for path in [
        "/runtime.v1alpha2.ImageService/PullImage",
        "/runtime.v1alpha2.RuntimeService/CreateContainer",
        "/containerd.services.images.v1.Images/Create",
        "/grpc.health.v1.Health/Check",
    ] {
        let (headers, _, _) = raw_call(&proxy.path, path, frame(b"")).await;
        assert_eq!(headers["grpc-status"], "12", "{path}");
        let msg = headers["grpc-message"].to_str().unwrap();
        assert!(msg.starts_with("cri-guard:"), "{msg}");
    }
    let (_, _, h) = raw_call(
        &proxy.path,
        "/runtime.v1alpha2.ImageService/PullImage",
        frame(b""),
    )
    .await;
    assert!(h.is_none());
    assert!(
        up.requests().is_empty(),
        "a refused call reached the runtime"
    );

    let (_, resp, trailers) = raw_call(
        &proxy.path,
        "/runtime.v1.RuntimeService/SomeFutureMethod",
        frame(b"x"),
    )
    .await;
    assert_eq!(resp, frame(b"x"));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(
        up.requests()[0].path,
        "/runtime.v1.RuntimeService/SomeFutureMethod"
    );
}

/// An error status from the runtime, trailers-only, comes back unchanged.
#[tokio::test]
async fn error_status_passes_through() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), |_, _| {
        let mut headers = grpc_headers();
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("image %22x%22 not found"),
        );
        Reply {
            headers,
            frames: vec![],
            trailers: Default::default(),
            delay: Duration::ZERO,
        }
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let err = cri::image_client(&proxy.path)
        .image_status(cri::ImageStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "image \"x\" not found");
}

/// A 3 MiB response in many frames arrives complete and in order (flow control and backpressure
/// across 64 KiB windows).
#[tokio::test]
async fn large_response_arrives_whole() {
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big = Bytes::from(big);
    let reply_body = big.clone();
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), move |_, _| {
        let mut r = echo("", &Bytes::new());
        r.frames = reply_body
            .chunks(100_000)
            .map(Bytes::copy_from_slice)
            .collect();
        r
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let (_, resp, trailers) = raw_call(
        &proxy.path,
        "/runtime.v1.RuntimeService/ListContainers",
        frame(b""),
    )
    .await;
    assert_eq!(resp.len(), big.len());
    assert!(resp == big, "response bytes differ");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

/// Server streaming: events arrive in order, and the upstream ending the stream ends it for the
/// client with status OK.
#[tokio::test]
async fn event_stream_in_order_and_upstream_end() {
    let dir = sock_dir();
    let up = EventsUpstream::start(&dir.path().join("up.sock"));
    let proxy = TestProxy::start(
        &dir.path().join("p.sock"),
        &dir.path().join("up.sock"),
        Arc::new(AllowAll),
    );
    let mut stream = cri::runtime_client(&proxy.path)
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        let ev = cri::ContainerEventResponse {
            container_id: format!("c{i}"),
            created_at: i,
            ..Default::default()
        };
        up.events.send(Ok(ev)).await.unwrap();
    }
    for i in 0..5 {
        let ev = stream.message().await.unwrap().unwrap();
        assert_eq!(ev.container_id, format!("c{i}"));
    }
    drop(up.events);
    assert!(
        stream.message().await.unwrap().is_none(),
        "upstream end must end the client stream"
    );
}

/// Server streaming: a client that cancels its stream cancels the upstream stream too.
#[tokio::test]
async fn event_stream_client_cancel_propagates() {
    let dir = sock_dir();
    let up = EventsUpstream::start(&dir.path().join("up.sock"));
    let proxy = TestProxy::start(
        &dir.path().join("p.sock"),
        &dir.path().join("up.sock"),
        Arc::new(AllowAll),
    );
    let mut stream = cri::runtime_client(&proxy.path)
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    up.events
        .send(Ok(cri::ContainerEventResponse::default()))
        .await
        .unwrap();
    stream.message().await.unwrap().unwrap();
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), up.stream_closed)
        .await
        .expect("upstream stream was not cancelled")
        .unwrap();
}

/// Upstream missing: calls fail fast with Unavailable; once it appears, calls go through without
/// restarting the proxy, on the same client connection.
#[tokio::test]
async fn unavailable_then_reconnects() {
    let dir = sock_dir();
    let up_path = dir.path().join("up.sock");
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up_path, Arc::new(AllowAll));
    let mut client = cri::runtime_client(&proxy.path);
    let started = Instant::now();
    let err = client
        .version(cri::VersionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("cannot reach the container runtime"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(1), "must fail fast");

    let up = EventsUpstream::start(&up_path);
    let v = client
        .version(cri::VersionRequest {
            version: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "fake");
    drop(up);
}

/// Shutdown: the socket file goes away at once, new connections are refused, and a call in flight
/// still completes within the grace period.
#[tokio::test]
async fn shutdown_drains_in_flight_calls() {
    let dir = sock_dir();
    let up = RawUpstream::start(&dir.path().join("up.sock"), |p, b| {
        let mut r = echo(p, b);
        r.delay = Duration::from_millis(400);
        r
    });
    let proxy = TestProxy::start(&dir.path().join("p.sock"), &up.path, Arc::new(AllowAll));
    let path = proxy.path.clone();
    let in_flight = tokio::spawn({
        let path = path.clone();
        async move { raw_call(&path, "/runtime.v1.RuntimeService/Version", frame(b"slow")).await }
    });
    while up.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopping = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!path.exists(), "socket file must be removed at shutdown");
    assert!(tokio::net::UnixStream::connect(&path).await.is_err());
    let (_, body, trailers) = in_flight.await.unwrap();
    assert_eq!(body, frame(b"slow"));
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    stopping.await.unwrap();
}

/// A stale socket file is replaced; a live one (another proxy serving) is not stolen; a regular
/// file in the way is an error.
#[tokio::test]
async fn stale_socket_replaced_live_one_kept() {
    let dir = sock_dir();
    let path = dir.path().join("p.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves a stale socket file
    assert!(path.exists());
    let up = dir.path().join("up.sock");
    let first = TestProxy::start(&path, &up, Arc::new(AllowAll));

    let cfg = cri_guard::config::Config {
        listen: path.clone(),
        upstream: up.clone(),
        ..Default::default()
    };
    let err = cri_guard::proxy::Proxy::bind(&cfg, Arc::new(AllowAll))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("already serving"), "{err}");
    first.shutdown().await;

    let file = dir.path().join("file");
    std::fs::write(&file, "data").unwrap();
    let cfg = cri_guard::config::Config {
        listen: file.clone(),
        upstream: up,
        ..Default::default()
    };
    let err = cri_guard::proxy::Proxy::bind(&cfg, Arc::new(AllowAll))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "data",
        "user data must not be touched"
    );
}

/// Counts decisions and allows.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
}

impl Guard for Counting {
    fn decide<'a>(&'a self, _call: &'a Call) -> BoxFuture<'a, Verdict> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Verdict::Forward })
    }
}
