//! Clients built on gRPC's C core, driven with Python's grpcio and its defaults: on a unix
//! socket it sends the socket path, percent-encoded, as `:authority` (`tmp%2Fcg..%2Fg.sock`).
//! containerd serves such clients; so must the proxy, with the same answers.
//!
//! Needs python3 with grpcio (`scripts/install-deps.sh` installs it with pip).

mod fakes;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cri_guard::cri;
use cri_guard::proxy::AllowAll;
use fakes::*;
use prost::Message;
use support::TestBed;

/// Calls each `method` with the hex-encoded request on `unix:<socket>` using grpcio's defaults
/// (no options: the C core picks the authority) and prints one JSON object per call.
const CLIENT: &str = r#"
import json, sys, grpc
sock = sys.argv[1]
calls = json.load(sys.stdin)
out = []
with grpc.insecure_channel("unix:" + sock) as ch:
    for c in calls:
        md = [tuple(kv) for kv in c.get("metadata", [])]
        try:
            if c.get("stream"):
                call = ch.unary_stream(c["method"])
                msgs = [m.hex() for m in call(bytes.fromhex(c["req"]), timeout=c.get("timeout", 20), metadata=md)]
                out.append({"code": "OK", "resp": msgs})
            else:
                call = ch.unary_unary(c["method"])
                r = call(bytes.fromhex(c["req"]), timeout=60, metadata=md)
                out.append({"code": "OK", "resp": [r.hex()]})
        except grpc.RpcError as e:
            out.append({"code": e.code().name, "details": e.details()})
json.dump(out, sys.stdout)
"#;

/// python3 with grpcio importable, or a panic that says how to get it.
fn python() -> PathBuf {
    let py = support::util::require_bin("python3", "python3");
    let ok = Command::new(&py)
        .args(["-c", "import grpc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 cannot import grpc: install it with `pip install grpcio` (scripts/install-deps.sh does)"
    );
    py
}

/// One call for the Python client.
fn call(method: &str, req: impl Message) -> serde_json::Value {
    serde_json::json!({ "method": method, "req": hex(&req.encode_to_vec()) })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the grpcio client against `socket`; returns its per-call results.
async fn run_grpcio(socket: &Path, calls: &serde_json::Value) -> Vec<serde_json::Value> {
    let py = python();
    let (socket, input) = (socket.to_path_buf(), calls.to_string());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(py)
            .args(["-c", CLIENT])
            .arg(&socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().expect("python3 output")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

/// The CRI through the proxy with grpcio's defaults answers exactly as containerd does
/// directly: Version, Status, PullImage (intercepted), ImageStatus, ListImages,
/// ListContainers, a NotFound error, and the GetContainerEvents stream (Unimplemented on 1.6,
/// a stream that runs until the client's deadline on 2.1).
#[tokio::test]
async fn grpcio_defaults_through_proxy_match_direct() {
    let bed = TestBed::start().await;
    let image = bed.push_image("py", "v1");
    let proxy = TestProxy::start(
        &bed.dir.path().join("g.sock"),
        &bed.containerd_socket(),
        Arc::new(AllowAll),
    );
    let spec = || {
        Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        })
    };
    let mut events = call(
        "/runtime.v1.RuntimeService/GetContainerEvents",
        cri::GetEventsRequest::default(),
    );
    events["stream"] = true.into();
    // containerd 2.1 serves the stream and it never ends: both sides stop at the deadline.
    events["timeout"] = 3.into();
    let calls = serde_json::Value::Array(vec![
        call(
            "/runtime.v1.RuntimeService/Version",
            cri::VersionRequest {
                version: "v1".into(),
            },
        ),
        call(
            "/runtime.v1.RuntimeService/Status",
            cri::StatusRequest { verbose: false },
        ),
        call(
            "/runtime.v1.ImageService/PullImage",
            cri::PullImageRequest {
                image: spec(),
                ..Default::default()
            },
        ),
        call(
            "/runtime.v1.ImageService/ImageStatus",
            cri::ImageStatusRequest {
                image: spec(),
                verbose: false,
            },
        ),
        call(
            "/runtime.v1.ImageService/ListImages",
            cri::ListImagesRequest::default(),
        ),
        call(
            "/runtime.v1.RuntimeService/ListContainers",
            cri::ListContainersRequest::default(),
        ),
        call(
            "/runtime.v1.RuntimeService/ContainerStatus",
            cri::ContainerStatusRequest {
                container_id: "no-such-container".into(),
                verbose: false,
            },
        ),
        events,
    ]);
    let via = run_grpcio(&proxy.path, &calls).await;
    let direct = run_grpcio(&bed.containerd_socket(), &calls).await;
    for (i, (v, d)) in via.iter().zip(&direct).enumerate() {
        if calls[i]["timeout"].is_number() {
            // At a deadline either side may end the stream first: the code is what counts.
            assert_eq!(
                v["code"], d["code"],
                "call {i} ({}) differs",
                calls[i]["method"]
            );
        } else {
            assert_eq!(v, d, "call {i} ({}) differs", calls[i]["method"]);
        }
    }
    let codes: Vec<&str> = via.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "OK",
            "OK",
            "OK",
            "OK",
            "OK",
            "OK",
            "NOT_FOUND",
            match bed.containerd_version() {
                support::ContainerdVersion::V1_6 => "UNIMPLEMENTED",
                _ => "DEADLINE_EXCEEDED",
            }
        ]
    );
    let version =
        cri::VersionResponse::decode(&*decode_hex(via[0]["resp"][0].as_str().unwrap())).unwrap();
    assert_eq!(version.runtime_name, "containerd");
}

/// What reaches the runtime from a grpcio client, read from the bytes a tap in front of a real
/// containerd recorded: the same path, body and metadata (custom metadata included) and the
/// same `:authority` (the socket path, percent-encoded) as the client sent; containerd answers.
#[tokio::test]
async fn grpcio_request_relayed_as_sent() {
    let bed = TestBed::start().await;
    let tap = fakes::tap::Tap::start(&bed.dir.path().join("tap.sock"), &bed.containerd_socket());
    let proxy = TestProxy::start(
        &bed.dir.path().join("p.sock"),
        &tap.path,
        Arc::new(AllowAll),
    );
    let mut c = call(
        "/runtime.v1.RuntimeService/Version",
        cri::VersionRequest {
            version: "v1".into(),
        },
    );
    c["metadata"] = serde_json::json!([["x-agent", "probe-7"]]);
    let calls = serde_json::json!([c.clone(), c]);
    let got = run_grpcio(&proxy.path, &calls).await;
    assert_eq!(got[0]["code"], "OK", "{got:?}");
    assert_eq!(got[1]["code"], "OK", "{got:?}");
    let body = frame(
        &cri::VersionRequest {
            version: "v1".into(),
        }
        .encode_to_vec(),
    );
    let recs = tap.recordings();
    assert_eq!(recs.len(), 1, "one runtime connection");
    let frames = fakes::tap::frames(&recs[0].up, true).expect("well-formed HTTP/2 to the runtime");
    let heads: Vec<_> = frames.iter().filter(|f| f.kind == 1).collect();
    assert_eq!(heads.len(), 2);
    // The socket path, percent-encoded, as gRPC's C core sends it.
    let want = proxy
        .path
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .replace('/', "%2F");
    for h in &heads {
        assert_eq!(
            h.field(":path"),
            Some(&b"/runtime.v1.RuntimeService/Version"[..])
        );
        assert_eq!(h.field("x-agent"), Some(&b"probe-7"[..]));
        assert_eq!(h.field("te"), Some(&b"trailers"[..]));
        assert!(h.field("user-agent").unwrap().starts_with(b"grpc-python/"));
        assert_eq!(h.field(":authority"), Some(want.as_bytes()));
        let data: Vec<u8> = frames
            .iter()
            .filter(|f| f.kind == 0 && f.stream == h.stream)
            .flat_map(|f| f.payload.clone())
            .collect();
        assert_eq!(data, body);
    }
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
