//! What a client connection needs besides the frame relay ([`super::splice`]): routing by gRPC
//! path, the calls cri-guard keeps (decoded, decided by the [`Guard`], and forwarded on a runtime
//! connection of their own), and opening runtime connections.
//!
//! A kept call's request is buffered by the relay under the bounds here (`max_message`, the
//! shared [`Budget`], the arrival deadline) and handed to [`intercepted`]; its answer goes back
//! to the relay, which writes it to the client. An allowed call is sent on the connection's
//! *side* connection to the runtime (opened on first use, kept for the next kept call), never on
//! the relayed one. A pull whose result must be confirmed runs in a task of its own on a
//! connection of its own, tracked by the proxy: a client that leaves does not stop it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::budget::{Budget, Held, Stats, method_index};
use super::grpc::{self, Code, Status};
use super::hpack::Fields;
use super::intercept::{self, Call, Confirm, Guard, Verdict};
use super::relay::{self, Answer};
use crate::cri;

/// Unknown `runtime.v1` methods remembered to log each once; past this they are forwarded
/// without a log line (one warning says so). Names are kept to their first 256 bytes.
const MAX_UNKNOWN_TRACKED: usize = 256;
const MAX_UNKNOWN_NAME: usize = 256;
/// Flow-control windows of cri-guard's own runtime connections (kept calls): large enough that
/// a response of a kept call is never held up.
const SIDE_STREAM_WINDOW: u32 = 1 << 20;
const SIDE_CONN_WINDOW: u32 = 2 << 20;

/// What every connection task shares.
pub(crate) struct Shared {
    pub upstream: PathBuf,
    pub connect_timeout: Duration,
    pub max_message: usize,
    pub request_timeout: Duration,
    pub max_streams: u32,
    pub budget: Arc<Budget>,
    pub stats: Arc<Stats>,
    pub guard: Arc<dyn Guard>,
    /// Unknown `runtime.v1` methods already logged (each is logged once).
    pub unknown_seen: Mutex<HashSet<String>>,
    /// Work that must finish whatever the client does (confirmed pulls); shutdown waits for it.
    pub detached: TaskTracker,
}

/// A client connection's side connection to the runtime, for the calls cri-guard keeps.
pub(crate) type Side = Arc<Mutex<Option<SendRequest<Bytes>>>>;

/// How a call is handled, from its path alone.
pub(crate) enum Route {
    Relay,
    Intercept(Kind),
    Refuse(Status),
}

pub(crate) fn route(path: &[u8], shared: &Shared) -> Route {
    let kind = match path {
        p if p == intercept::PULL_IMAGE.as_bytes() => Some(Kind::Pull),
        p if p == intercept::CREATE_CONTAINER.as_bytes() => Some(Kind::Create),
        p if p == intercept::RUN_POD_SANDBOX.as_bytes() => Some(Kind::RunSandbox),
        _ => None,
    };
    if let Some(kind) = kind {
        Route::Intercept(kind)
    } else if path.starts_with(cri::V1_PREFIX.as_bytes()) {
        if method_index(path) == cri::KNOWN_METHODS.len() {
            note_unknown(&String::from_utf8_lossy(path), shared);
        }
        Route::Relay
    } else if path.starts_with(cri::V1ALPHA2_PREFIX.as_bytes()) {
        Route::Refuse(Status::new(
            Code::Unimplemented,
            "cri-guard: CRI runtime.v1alpha2 is not served (it would bypass image verification); \
             use a kubelet that speaks runtime.v1 (Kubernetes 1.23 or newer)",
        ))
    } else {
        let path = String::from_utf8_lossy(path);
        Route::Refuse(Status::new(
            Code::Unimplemented,
            format!(
                "cri-guard: only the CRI runtime.v1 API is forwarded; {path} is not (talk to the \
                 runtime's own socket for other APIs)"
            ),
        ))
    }
}

/// Logs an unknown `runtime.v1` method the first time it is seen, remembering a bounded set.
fn note_unknown(path: &str, shared: &Shared) {
    let mut seen = shared
        .unknown_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut end = path.len().min(MAX_UNKNOWN_NAME);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let key = &path[..end];
    if seen.contains(key) {
        return;
    }
    if seen.len() >= MAX_UNKNOWN_TRACKED {
        if seen.len() == MAX_UNKNOWN_TRACKED {
            seen.insert(String::new());
            warn!(
                tracked = MAX_UNKNOWN_TRACKED,
                "many unknown runtime.v1 methods: further ones are forwarded without a log line"
            );
        }
        return;
    }
    seen.insert(key.to_string());
    shared
        .stats
        .unknown_tracked
        .store(seen.len(), Ordering::Relaxed);
    warn!(
        method = %grpc::Text(key),
        "forwarding a runtime.v1 method this cri-guard does not know (newer kubelet?)"
    );
}

/// The status of a runtime that cannot be reached.
pub(crate) fn unreachable(shared: &Shared, e: &dyn std::fmt::Display) -> Status {
    Status::new(
        Code::Unavailable,
        format!(
            "cri-guard: cannot reach the container runtime at {}: {e}; is it running? \
             (calls go through again as soon as it is back)",
            shared.upstream.display()
        ),
    )
}

/// Opens a unix connection to the runtime, within the connect timeout.
pub(crate) async fn connect_socket(shared: Arc<Shared>) -> Result<UnixStream, Status> {
    tokio::time::timeout(
        shared.connect_timeout,
        UnixStream::connect(&shared.upstream),
    )
    .await
    .map_err(|_| unreachable(&shared, &"connect timed out"))?
    .map_err(|e| unreachable(&shared, &e))
}

/// An HTTP/2 client connection to the runtime for kept calls; its driver runs in a task.
async fn connect_h2(shared: &Arc<Shared>) -> Result<SendRequest<Bytes>, Status> {
    let io = connect_socket(shared.clone()).await;
    shared.stats.count_connect(io.is_ok());
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(SIDE_STREAM_WINDOW)
        .initial_connection_window_size(SIDE_CONN_WINDOW)
        .handshake::<_, Bytes>(io?)
        .await
        .map_err(|e| unreachable(shared, &e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "runtime connection for kept calls ended");
        }
    });
    Ok(send)
}

/// The side connection, opened (again) if there is none or it broke.
async fn side_connection(shared: &Arc<Shared>, side: &Side) -> Result<SendRequest<Bytes>, Status> {
    let cached = side.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(send) = cached {
        if let Ok(ready) = send.ready().await {
            return Ok(ready);
        }
    }
    let send = connect_h2(shared).await?;
    *side.lock().unwrap_or_else(|p| p.into_inner()) = Some(send.clone());
    Ok(send)
}

pub(crate) fn too_large(method: &str, max: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!(
            "cri-guard: {method} request larger than {max} bytes refused; raise \
             `max_intercepted_message` in the cri-guard configuration if this is legitimate"
        ),
    )
}

pub(crate) fn over_budget(shared: &Shared, method: &str) -> Status {
    shared
        .stats
        .refused_over_budget
        .fetch_add(1, Ordering::Relaxed);
    Status::new(
        Code::ResourceExhausted,
        format!(
            "cri-guard: {method} refused: PullImage/CreateContainer requests being buffered \
             would exceed `max_intercepted_buffer` ({} bytes across all connections); retry, \
             or raise `max_intercepted_buffer` in the cri-guard configuration",
            shared.budget.max()
        ),
    )
}

pub(crate) fn too_slow(shared: &Shared, method: &str) -> Status {
    shared
        .stats
        .refused_over_deadline
        .fetch_add(1, Ordering::Relaxed);
    Status::new(
        Code::DeadlineExceeded,
        format!(
            "cri-guard: the {method} request did not arrive whole within {:?}; refused \
             (raise `intercepted_request_timeout` in the cri-guard configuration if the \
             client is legitimately this slow)",
            shared.request_timeout
        ),
    )
}

/// The request of a kept call as the `h2` client sends it: the client's fields, in order. An
/// `:authority` the `http` crate refuses (gRPC's C core sends the socket path, percent-encoded)
/// is sent with its other bytes made `_` (the runtime does not use it; docs/upstream.md).
pub(crate) fn request_head(fields: &Fields) -> Result<http::request::Parts, String> {
    let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
    let mut headers = http::HeaderMap::new();
    for i in 0..fields.len() {
        let (name, value) = (fields.name(i), fields.value(i));
        match name {
            b":method" => method = Some(value),
            b":scheme" => scheme = Some(value),
            b":authority" => authority = Some(value),
            b":path" => path = Some(value),
            _ => {
                let name = http::HeaderName::from_bytes(name)
                    .map_err(|_| format!("header name {:?}", String::from_utf8_lossy(name)))?;
                let mut value = http::HeaderValue::from_bytes(value)
                    .map_err(|_| format!("the value of header {name}"))?;
                value.set_sensitive(fields.field(i).never_indexed);
                headers.append(name, value);
            }
        }
    }
    let authority = match authority {
        Some(a) if http::uri::Authority::try_from(a).is_ok() => a.to_vec(),
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'~' | b'-' => b,
                _ => b'_',
            })
            .collect(),
        _ => b"localhost".to_vec(),
    };
    let mut uri = Vec::with_capacity(64);
    uri.extend_from_slice(scheme.unwrap_or(b"http"));
    uri.extend_from_slice(b"://");
    uri.extend_from_slice(&authority);
    uri.extend_from_slice(path.unwrap_or(b"/"));
    let mut req = http::Request::builder()
        .method(method.unwrap_or(b"POST"))
        .uri(uri)
        .body(())
        .map_err(|e| format!("its method, scheme or path ({e})"))?;
    *req.headers_mut() = headers;
    Ok(req.into_parts().0)
}

/// Decodes, decides on and, if allowed, forwards a kept call; the answer is for the client.
pub(crate) async fn intercepted(
    shared: Arc<Shared>,
    side: Side,
    kind: Kind,
    head: http::request::Parts,
    bytes: Bytes,
    held: Held,
) -> Answer {
    let started = Instant::now();
    let method = kind.method();
    let call = match decode(kind, &bytes) {
        Ok(c) => c,
        Err(status) => {
            warn!(method, message = %status.message, "refused undecodable request");
            return Answer::Status(status);
        }
    };
    // The guard writes the call's decision line (and counts it).
    let verdict = shared.guard.decide(&call).await;
    debug!(
        method,
        micros = started.elapsed().as_micros() as u64,
        "intercepted call decided"
    );
    let index = method_index(head.uri.path().as_bytes());
    let answer = match verdict {
        Verdict::Deny(status) => return Answer::Status(status),
        Verdict::Forward => forward(&shared, &side, head, bytes).await,
        Verdict::ForwardAppended(extra) => {
            forward(&shared, &side, head, append_fields(&bytes, &extra)).await
        }
        Verdict::ForwardThen(confirm) => confirmed(head, bytes, held, confirm, &shared).await,
    };
    shared.stats.count_call(index);
    if answer.failed() {
        shared.stats.count_error(index);
    }
    answer
}

async fn forward(
    shared: &Arc<Shared>,
    side: &Side,
    head: http::request::Parts,
    body: Bytes,
) -> Answer {
    match side_connection(shared, side).await {
        Ok(send) => relay::exchange(head, body, send, shared.max_message).await,
        Err(status) => {
            warn!(message = %status.message, "runtime unavailable");
            Answer::Status(status)
        }
    }
}

/// Forwards an allowed pull whose result must be confirmed. The pull and its confirmation run
/// in a task of their own, on an upstream connection of their own, tracked by the proxy (so
/// shutdown waits for them): a client that disconnects or cancels does not stop them, and an
/// image that fails the confirmation is removed whatever the client does (invariant I1).
async fn confirmed(
    head: http::request::Parts,
    bytes: Bytes,
    held: Held,
    confirm: Confirm,
    shared: &Arc<Shared>,
) -> Answer {
    let (tx, rx) = oneshot::channel();
    let task_shared = shared.clone();
    shared.detached.spawn(async move {
        let answer = exchange_to_completion(&task_shared, head, bytes, confirm).await;
        drop(held);
        let _ = tx.send(answer);
    });
    rx.await.unwrap_or_else(|_| {
        Answer::Status(Status::new(
            Code::Internal,
            "cri-guard: the pull's confirmation stopped before it answered",
        ))
    })
}

async fn exchange_to_completion(
    shared: &Arc<Shared>,
    head: http::request::Parts,
    bytes: Bytes,
    confirm: Confirm,
) -> Answer {
    let send = match connect_h2(shared).await {
        Ok(s) => s,
        Err(status) => return Answer::Status(status),
    };
    relay::exchange_confirmed(head, bytes, send, confirm, shared.max_message).await
}

/// Which intercepted method a call is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Pull,
    Create,
    RunSandbox,
}

impl Kind {
    pub(crate) fn method(self) -> &'static str {
        match self {
            Kind::Pull => "PullImage",
            Kind::Create => "CreateContainer",
            Kind::RunSandbox => "RunPodSandbox",
        }
    }
}

fn decode(kind: Kind, body: &Bytes) -> Result<Call, Status> {
    let bad = |e: &dyn std::fmt::Display| {
        Status::new(
            Code::InvalidArgument,
            format!("cri-guard: cannot decode the {}Request: {e}", kind.method()),
        )
    };
    let msg = grpc::unary_message(body).map_err(|e| bad(&e))?;
    match kind {
        Kind::Pull => cri::PullImageRequest::decode(msg).map(|r| Call::Pull(Box::new(r))),
        Kind::Create => cri::CreateContainerRequest::decode(msg).map(|r| Call::Create(Box::new(r))),
        Kind::RunSandbox => {
            cri::RunPodSandboxRequest::decode(msg).map(|r| Call::RunSandbox(Box::new(r)))
        }
    }
    .map_err(|e| bad(&e))
}

/// The framed request with `extra` encoded fields appended to its message.
fn append_fields(framed: &Bytes, extra: &Bytes) -> Bytes {
    let len = framed.len() - 5 + extra.len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    out.extend_from_slice(&framed[5..]);
    out.extend_from_slice(extra);
    out.freeze()
}
