//! One downstream connection: a single task that drives the kubelet's HTTP/2 connection, its own
//! upstream connection to the runtime, and every call in flight on them.
//!
//! Keeping all of that in one task (calls are futures in a `FuturesUnordered`, not spawned tasks)
//! means a call costs no task hand-offs: on a single-threaded runtime a unary call wakes the
//! process twice, once for the request and once for the response.
//!
//! The upstream connection is opened on the first call that needs it and dropped when it breaks;
//! the next call opens a new one, so a restarted runtime is picked up without a restart of
//! cri-guard. While the runtime is unreachable, calls fail at once with `Unavailable`.

use std::collections::HashSet;
use std::future::poll_fn;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::RecvStream;
use h2::client::SendRequest;
use h2::server::SendResponse;
use http::Request;
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::budget::{Budget, Held, Stats};
use super::grpc::{self, Code, Status};
use super::intercept::{self, BoxFuture, Call, Confirm, Guard, Verdict};
use super::relay::{self, Body};
use super::socket;
use crate::cri;
use crate::metrics::METRICS;

/// How long a draining connection with no calls in flight stays open.
const IDLE_CLOSE: Duration = Duration::from_millis(100);
/// Largest header list (decoded) a client may send in one request. gRPC metadata of CRI
/// clients is well under 1 KiB; h2's default (16 MiB) times the streams of a connection would
/// be an unbounded amount of memory. h2 refuses a larger list.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Unknown `runtime.v1` methods remembered to log each once; past this they are forwarded
/// without a log line (one warning says so). Names are kept to their first 256 bytes.
const MAX_UNKNOWN_TRACKED: usize = 256;
const MAX_UNKNOWN_NAME: usize = 256;

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

struct Upstream {
    send: SendRequest<Bytes>,
    conn: h2::client::Connection<socket::Socket, Bytes>,
}

/// How a call is handled, from its path alone.
enum Route {
    Relay,
    Intercept,
    Refuse(Status),
}

fn route(path: &str, shared: &Shared) -> Route {
    if path == intercept::PULL_IMAGE
        || path == intercept::CREATE_CONTAINER
        || path == intercept::RUN_POD_SANDBOX
    {
        Route::Intercept
    } else if path.starts_with(cri::V1_PREFIX) {
        if !cri::KNOWN_METHODS.contains(&path) {
            note_unknown(path, shared);
        }
        Route::Relay
    } else if path.starts_with(cri::V1ALPHA2_PREFIX) {
        Route::Refuse(Status::new(
            Code::Unimplemented,
            "cri-guard: CRI runtime.v1alpha2 is not served (it would bypass image verification); \
             use a kubelet that speaks runtime.v1 (Kubernetes 1.23 or newer)",
        ))
    } else {
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
        method = key,
        "forwarding a runtime.v1 method this cri-guard does not know (newer kubelet?)"
    );
}

/// Serves one downstream connection until it closes, or until shutdown has drained it.
pub(crate) async fn serve(
    io: UnixStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let io = match socket::Socket::downstream(io) {
        Ok(s) => s,
        Err(e) => return debug!(error = %e, "cannot set up the downstream socket"),
    };
    let mut server = match h2::server::Builder::new()
        .max_concurrent_streams(shared.max_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(io)
        .await
    {
        Ok(s) => s,
        Err(e) => return debug!(error = %e, "downstream handshake failed"),
    };
    let mut upstream: Option<Upstream> = None;
    let mut calls: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
    let mut draining = *shutdown.borrow();
    if draining {
        server.graceful_shutdown();
    }
    loop {
        tokio::select! {
            biased;
            Some(()) = calls.next(), if !calls.is_empty() => {}
            res = drive(&mut upstream) => {
                debug!(result = ?res, "upstream connection closed; the next call reconnects");
                upstream = None;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                server.graceful_shutdown();
            }
            // Draining and nothing in flight: give the GOAWAY a moment to leave, then close,
            // rather than wait for a client that may never answer h2's shutdown PING.
            _ = tokio::time::sleep(IDLE_CLOSE), if draining && calls.is_empty() => return,
            next = server.accept() => match next {
                Some(Ok((req, respond))) => {
                    let call = dispatch(req, respond, &mut upstream, &shared).await;
                    calls.push(call);
                }
                Some(Err(e)) => return debug!(error = %e, "downstream connection error"),
                None => return,
            }
        }
    }
}

/// Polls the upstream connection, if there is one, until it closes.
async fn drive(upstream: &mut Option<Upstream>) -> Result<(), h2::Error> {
    match upstream {
        Some(u) => (&mut u.conn).await,
        None => std::future::pending().await,
    }
}

async fn connect(shared: &Shared) -> Result<Upstream, Status> {
    let path = &shared.upstream;
    let fail = |e: &dyn std::fmt::Display| {
        Status::new(
            Code::Unavailable,
            format!(
                "cri-guard: cannot reach the container runtime at {}: {e}; is it running? \
                 (calls go through again as soon as it is back)",
                path.display()
            ),
        )
    };
    let io = tokio::time::timeout(shared.connect_timeout, UnixStream::connect(path))
        .await
        .map_err(|_| fail(&"connect timed out"))?
        .map_err(|e| fail(&e))?;
    let io = socket::Socket::new(io).map_err(|e| fail(&e))?;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(2 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| fail(&e))?;
    debug!(upstream = %path.display(), "connected to the runtime");
    Ok(Upstream { send, conn })
}

/// Turns an accepted stream into the future that handles it.
async fn dispatch(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    upstream: &mut Option<Upstream>,
    shared: &Arc<Shared>,
) -> BoxFuture<'static, ()> {
    let route = route(req.uri().path(), shared);
    if let Route::Refuse(status) = &route {
        info!(method = req.uri().path(), code = ?status.code, "refused");
        relay::reply(respond, status);
        return Box::pin(std::future::ready(()));
    }
    let send = match upstream {
        Some(u) => u.send.clone(),
        None => match connect(shared)
            .await
            .inspect(|_| METRICS.upstream_connect(true))
        {
            Ok(u) => upstream.insert(u).send.clone(),
            Err(status) => {
                METRICS.upstream_connect(false);
                // A call for the runtime that could not be made: counted as its method's error.
                let method = crate::metrics::method_index(req.uri().path());
                METRICS.relayed(method);
                METRICS.relay_failed(method);
                warn!(method = req.uri().path(), message = %status.message, "runtime unavailable");
                relay::reply(respond, &status);
                return Box::pin(std::future::ready(()));
            }
        },
    };
    let (head, body) = req.into_parts();
    match route {
        Route::Intercept => Box::pin(intercepted(head, body, respond, send, shared.clone())),
        _ => Box::pin(relay::forward(head, Body::Stream(body), respond, send)),
    }
}

/// Reads, decodes and decides on a PullImage or CreateContainer call, then forwards or refuses.
async fn intercepted(
    head: http::request::Parts,
    mut body: RecvStream,
    respond: SendResponse<Bytes>,
    send: SendRequest<Bytes>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let kind = match head.uri.path() {
        intercept::PULL_IMAGE => Kind::Pull,
        intercept::RUN_POD_SANDBOX => Kind::RunSandbox,
        _ => Kind::Create,
    };
    let method = kind.method();
    // The buffered request's share of the budget, given back when `held` is dropped: after
    // the forward (or, for a confirmed pull, when its task ends).
    let mut held = Held::new(&shared.budget);
    let read = relay::read_body(&mut body, shared.max_message, method, |n| {
        if shared.budget.take(&mut held, n) {
            return Ok(());
        }
        shared
            .stats
            .refused_over_budget
            .fetch_add(1, Ordering::Relaxed);
        Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "cri-guard: {method} refused: PullImage/CreateContainer requests being buffered \
                 would exceed `max_intercepted_buffer` ({} bytes across all connections); retry, \
                 or raise `max_intercepted_buffer` in the cri-guard configuration",
                shared.budget.max()
            ),
        ))
    });
    let bytes = match tokio::time::timeout(shared.request_timeout, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(relay::ReadError::Refused(status))) => {
            warn!(method, message = %status.message, "refused");
            return relay::reply(respond, &status);
        }
        Ok(Err(relay::ReadError::Gone)) => return,
        Err(_elapsed) => {
            shared
                .stats
                .refused_over_deadline
                .fetch_add(1, Ordering::Relaxed);
            let status = Status::new(
                Code::DeadlineExceeded,
                format!(
                    "cri-guard: the {method} request did not arrive whole within {:?}; refused \
                     (raise `intercepted_request_timeout` in the cri-guard configuration if the \
                     client is legitimately this slow)",
                    shared.request_timeout
                ),
            );
            warn!(method, message = %status.message, "refused");
            return relay::reply(respond, &status);
        }
    };
    let call = match decode(kind, &bytes) {
        Ok(c) => c,
        Err(status) => {
            warn!(method, message = %status.message, "refused undecodable request");
            return relay::reply(respond, &status);
        }
    };
    // The guard writes the call's decision line (and counts it).
    let verdict = shared.guard.decide(&call).await;
    debug!(
        method,
        micros = started.elapsed().as_micros() as u64,
        "intercepted call decided"
    );
    match verdict {
        Verdict::Forward => relay::forward(head, Body::Buffered(bytes), respond, send).await,
        Verdict::ForwardAppended(extra) => {
            let body = append_fields(&bytes, &extra);
            relay::forward(head, Body::Buffered(body), respond, send).await
        }
        Verdict::ForwardThen(confirm) => {
            drop(send);
            confirmed(head, bytes, held, respond, confirm, shared).await
        }
        Verdict::Deny(status) => relay::reply(respond, &status),
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
    mut respond: SendResponse<Bytes>,
    confirm: Confirm,
    shared: Arc<Shared>,
) {
    let (tx, rx) = oneshot::channel();
    let task_shared = shared.clone();
    shared.detached.spawn(async move {
        let answer = exchange_to_completion(&task_shared, head, bytes, confirm).await;
        drop(held);
        let _ = tx.send(answer);
    });
    let outcome = tokio::select! {
        a = rx => Some(a),
        // The client reset the stream: nobody to answer; the task carries on.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => None,
    };
    match outcome {
        Some(Ok(answer)) => relay::answer(respond, answer),
        Some(Err(_)) => relay::reply(
            respond,
            &Status::new(
                Code::Internal,
                "cri-guard: the pull's confirmation stopped before it answered",
            ),
        ),
        None => debug!("client went away during a confirmed pull; it runs to completion"),
    }
}

async fn exchange_to_completion(
    shared: &Shared,
    head: http::request::Parts,
    bytes: Bytes,
    confirm: Confirm,
) -> relay::Answer {
    let Upstream { send, mut conn } = match connect(shared).await {
        Ok(u) => {
            METRICS.upstream_connect(true);
            u
        }
        Err(status) => {
            METRICS.upstream_connect(false);
            return relay::Answer::Status(status);
        }
    };
    let exchange = relay::exchange_confirmed(head, bytes, send, confirm, shared.max_message);
    tokio::pin!(exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            answer = &mut exchange => return answer,
            // A closed connection fails the exchange, which then answers.
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}

/// Which intercepted method a call is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pull,
    Create,
    RunSandbox,
}

impl Kind {
    fn method(self) -> &'static str {
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
