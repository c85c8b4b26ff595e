//! In-process fake upstreams, for what a real containerd can't be made to show: the raw bytes a
//! request arrives with, a streaming RPC (containerd 1.6 answers GetContainerEvents with
//! Unimplemented), slow calls, custom trailers. Plus an in-process proxy and a raw h2 client.

#![allow(dead_code)]

pub mod gate;
pub mod rawconn;
pub mod tap;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cri_guard::config::Config;
use cri_guard::cri;
use cri_guard::proxy::{Guard, Proxy, Stats};
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    /// The request's `:authority`, if it had one.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the raw fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub headers: HeaderMap,
    /// Data frames; empty with `trailers_only` for a status-only answer.
    pub frames: Vec<Bytes>,
    pub trailers: HeaderMap,
    pub delay: Duration,
}

/// Echoes the request body back in one frame with grpc-status 0 and a custom trailer.
pub fn echo(_path: &str, body: &Bytes) -> Reply {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-fake-trailer", HeaderValue::from_static("kept"));
    Reply {
        headers: grpc_headers(),
        frames: vec![body.clone()],
        trailers,
        delay: Duration::ZERO,
    }
}

pub fn grpc_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h
}

type Handler = Arc<dyn Fn(&str, &Bytes) -> Reply + Send + Sync>;

/// An HTTP/2 server that records raw requests and answers with scripted replies.
pub struct RawUpstream {
    pub path: PathBuf,
    pub recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Requests being answered now, and the most there ever were at once.
    pub in_flight: Arc<(AtomicUsize, AtomicUsize)>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub fn start(
        path: &Path,
        handler: impl Fn(&str, &Bytes) -> Reply + Send + Sync + 'static,
    ) -> RawUpstream {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind fake upstream");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let in_flight: Arc<(AtomicUsize, AtomicUsize)> = Default::default();
        let handler: Handler = Arc::new(handler);
        let (rec, count) = (recorded.clone(), in_flight.clone());
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let (rec, handler, count) = (rec.clone(), handler.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(io).await else {
                        return;
                    };
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        let (rec, handler, count) = (rec.clone(), handler.clone(), count.clone());
                        tokio::spawn(async move {
                            let now = count.0.fetch_add(1, Ordering::SeqCst) + 1;
                            count.1.fetch_max(now, Ordering::SeqCst);
                            answer(req, respond, rec, handler).await;
                            count.0.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                });
            }
        });
        RawUpstream {
            path: path.to_path_buf(),
            recorded,
            in_flight,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.1.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    rec: Arc<Mutex<Vec<Recorded>>>,
    handler: Handler,
) {
    let (parts, mut body) = req.into_parts();
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let body = Bytes::from(buf);
    let path = parts.uri.path().to_string();
    rec.lock().unwrap().push(Recorded {
        path: path.clone(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let reply = handler(&path, &body);
    tokio::time::sleep(reply.delay).await;
    let mut resp = Response::new(());
    *resp.headers_mut() = reply.headers.clone();
    if reply.frames.is_empty() && reply.trailers.is_empty() {
        let _ = respond.send_response(resp, true);
        return;
    }
    let Ok(mut tx) = respond.send_response(resp, false) else {
        return;
    };
    for f in reply.frames {
        tx.reserve_capacity(f.len());
        let mut f = f;
        while !f.is_empty() {
            let cap = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                _ => return,
            };
            let part = f.split_to(cap.min(f.len()));
            if tx.send_data(part, false).is_err() {
                return;
            }
            tx.reserve_capacity(f.len());
        }
    }
    let _ = tx.send_trailers(reply.trailers);
}

/// A tonic RuntimeService fake: Version answers, GetContainerEvents streams what the test sends.
pub struct EventsUpstream {
    pub events: mpsc::Sender<Result<cri::ContainerEventResponse, tonic::Status>>,
    /// Resolves when the upstream side of the event stream was dropped (client went away).
    pub stream_closed: oneshot::Receiver<()>,
    pub task: AbortOnDrop,
}

/// Aborts a background task when dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct EventsService {
    rx: Mutex<Option<mpsc::Receiver<Result<cri::ContainerEventResponse, tonic::Status>>>>,
    closed: Mutex<Option<oneshot::Sender<()>>>,
}

/// Tells the test when the stream is dropped by tonic (the client cancelled).
struct NotifyOnDrop<S> {
    inner: S,
    tx: Option<oneshot::Sender<()>>,
}

impl<S> Drop for NotifyOnDrop<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(());
        }
    }
}

impl<S: tokio_stream::Stream + Unpin> tokio_stream::Stream for NotifyOnDrop<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

type EventStream = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl cri::runtime_service_server::RuntimeService for EventsService {
    async fn version(
        &self,
        req: tonic::Request<cri::VersionRequest>,
    ) -> Result<tonic::Response<cri::VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(cri::VersionResponse {
            version: req.into_inner().version,
            runtime_name: "fake".into(),
            runtime_version: "0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn get_container_events(
        &self,
        _req: tonic::Request<cri::GetEventsRequest>,
    ) -> Result<tonic::Response<EventStream>, tonic::Status> {
        let rx = self
            .rx
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| tonic::Status::resource_exhausted("one stream only"))?;
        let tx = self.closed.lock().unwrap().take();
        Ok(tonic::Response::new(Box::pin(NotifyOnDrop {
            inner: tokio_stream::wrappers::ReceiverStream::new(rx),
            tx,
        })))
    }
}

impl EventsUpstream {
    pub fn start(path: &Path) -> EventsUpstream {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind events upstream");
        let (events, rx) = mpsc::channel(16);
        let (closed_tx, stream_closed) = oneshot::channel();
        let svc = EventsService {
            rx: Mutex::new(Some(rx)),
            closed: Mutex::new(Some(closed_tx)),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(cri::runtime_service_server::RuntimeServiceServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        });
        EventsUpstream {
            events,
            stream_closed,
            task: AbortOnDrop(task),
        }
    }
}

/// An in-process proxy; dropping `stop` (or sending on it) starts its shutdown.
pub struct TestProxy {
    pub path: PathBuf,
    pub stats: Arc<Stats>,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl TestProxy {
    pub fn start(listen: &Path, upstream: &Path, guard: Arc<dyn Guard>) -> TestProxy {
        let cfg = Config {
            listen: listen.to_path_buf(),
            upstream: upstream.to_path_buf(),
            shutdown_grace: Duration::from_secs(5),
            ..Config::default()
        };
        Self::start_with(&cfg, guard)
    }

    pub fn start_with(cfg: &Config, guard: Arc<dyn Guard>) -> TestProxy {
        let proxy = Proxy::bind(cfg, guard).expect("bind proxy");
        let stats = proxy.stats();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        TestProxy {
            path: cfg.listen.clone(),
            stats,
            stop: Some(stop),
            task,
        }
    }

    /// Starts shutdown and waits until the proxy has stopped.
    pub async fn shutdown(mut self) {
        drop(self.stop.take());
        (&mut self.task).await.unwrap();
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw unary gRPC call over h2: returns (response headers, body bytes, trailers).
pub async fn raw_call(
    socket: &Path,
    path: &str,
    body: Bytes,
) -> (HeaderMap, Bytes, Option<HeaderMap>) {
    let io = UnixStream::connect(socket).await.expect("connect");
    let (send, conn) = h2::client::handshake(io).await.expect("handshake");
    tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let req = Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut tx) = send.send_request(req, false).expect("send");
    tx.send_data(body, true).expect("data");
    let resp = resp.await.expect("response");
    let (parts, mut rx) = resp.into_parts();
    let mut buf = Vec::new();
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.expect("chunk");
        let _ = rx.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
    let trailers = rx.trailers().await.expect("trailers");
    (parts.headers, Bytes::from(buf), trailers)
}

/// Frames a message as a unary gRPC body.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// A short temp dir for unix sockets (sun_path is limited to 108 bytes).
pub fn sock_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cg")
        .tempdir_in("/tmp")
        .expect("tempdir")
}
