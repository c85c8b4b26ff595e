//! The metrics listener: `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1, on a TCP
//! address or a unix socket of its own, never on the kubelet's socket.
//!
//! - `/metrics`: the exposition of [`super::METRICS`] (OpenMetrics when the scraper asks for it
//!   in `Accept`, else the Prometheus text format). The runtime is probed first, so
//!   `cri_guard_upstream_up` is current.
//! - `/healthz`: 200 while the process serves at all (the listener runs on the proxy's event
//!   loop, so an answer also says that loop is not stuck).
//! - `/readyz`: 200 when the runtime answers a CRI `Version` call and a policy is in force
//!   (or none is configured: the transparent proxy); else 503 with the reason.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once (others are closed at once), 5 s to
//! send the request head, 30 s per connection, a 2 s probe of the runtime, remembered for one
//! second so a tight polling loop does not turn into calls on the runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use super::METRICS;
use crate::cri;
use crate::reload::PolicyStatus;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// Where the listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address, e.g. `127.0.0.1:9478` or `[::1]:9478`.
    Tcp(SocketAddr),
    /// A unix socket path (written `unix:/run/cri-guard/metrics.sock`).
    Unix(PathBuf),
}

impl Endpoint {
    /// Reads `host:port` or `unix:PATH` (an absolute path).
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(format!(
                    "{s:?}: a unix socket needs an absolute path, e.g. \"unix:/run/cri-guard/metrics.sock\""
                ));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(Endpoint::Tcp).map_err(|_| {
            format!(
                "{s:?} is neither an IP address with a port (\"127.0.0.1:9478\", \"[::1]:9478\") nor \"unix:/absolute/path\""
            )
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What `/readyz` checks.
pub struct Health {
    /// The runtime's CRI socket.
    pub upstream: PathBuf,
    /// The policy's status; `None` when no policy is configured.
    pub policy: Option<Arc<PolicyStatus>>,
    runtime:
        Mutex<Option<cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>>>,
    last_probe: Mutex<Option<(Instant, Result<String, String>)>>,
}

impl Health {
    /// Health of a proxy in front of `upstream`, with `policy` in force.
    pub fn new(upstream: PathBuf, policy: Option<Arc<PolicyStatus>>) -> Health {
        Health {
            upstream,
            policy,
            runtime: Mutex::new(None),
            last_probe: Mutex::new(None),
        }
    }

    /// Whether the runtime answers `Version` (its name and version), remembered for a second.
    async fn probe(&self) -> Result<String, String> {
        if let Some((at, r)) = &*self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < PROBE_REUSE {
                return r.clone();
            }
        }
        let mut client = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| cri::runtime_client(&self.upstream))
            .clone();
        let asked = client.version(cri::VersionRequest {
            version: "v1".into(),
        });
        let r = match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
            Ok(Ok(v)) => {
                let v = v.into_inner();
                Ok(format!("{} {}", v.runtime_name, v.runtime_version))
            }
            Ok(Err(e)) => Err(format!(
                "the runtime at {} does not answer Version: {}",
                self.upstream.display(),
                e.message()
            )),
            Err(_) => Err(format!(
                "the runtime at {} did not answer Version within {PROBE_TIMEOUT:?}",
                self.upstream.display()
            )),
        };
        METRICS.set_upstream_up(r.is_ok());
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), r.clone()));
        r
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let _ = self.probe().await;
                let openmetrics = req
                    .headers()
                    .get(http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("application/openmetrics-text"));
                let (body, ctype) = if openmetrics {
                    (
                        METRICS.encode(true),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                } else {
                    (
                        METRICS.encode(false),
                        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    )
                };
                let mut r = Response::new(Full::new(Bytes::from(body)));
                if let Ok(v) = http::HeaderValue::from_str(ctype) {
                    r.headers_mut().insert(http::header::CONTENT_TYPE, v);
                }
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let runtime = self.probe().await;
                let policy = match &self.policy {
                    None => "no policy configured (every image is allowed)".to_string(),
                    Some(p) => format!("policy generation {} in force", p.snapshot().generation),
                };
                match runtime {
                    Ok(v) => text(StatusCode::OK, format!("ready: runtime {v}; {policy}\n")),
                    Err(e) => text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {e}; {policy}\n"),
                    ),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf, (u64, u64)),
}

/// A bound listener.
pub struct Listener {
    inner: Inner,
}

impl Drop for Listener {
    /// Removes our unix socket file (only ours: a file another process put there stays).
    fn drop(&mut self) {
        if let Inner::Unix(_, path, ident) = &self.inner {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if (m.dev(), m.ino()) == *ident {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl Listener {
    /// Binds `endpoint`; a unix socket path is cleared first if it is a stale socket (one no
    /// process accepts on), and gets mode 0660. Must be called inside a tokio runtime.
    pub fn bind(endpoint: &Endpoint) -> std::io::Result<Listener> {
        let inner = match endpoint {
            Endpoint::Tcp(addr) => {
                let std = std::net::TcpListener::bind(addr)?;
                std.set_nonblocking(true)?;
                Inner::Tcp(TcpListener::from_std(std)?)
            }
            Endpoint::Unix(path) => {
                clear_stale(path)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let l = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                let m = std::fs::metadata(path)?;
                Inner::Unix(l, path.clone(), (m.dev(), m.ino()))
            }
        };
        Ok(Listener { inner })
    }

    /// The TCP address bound (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Tcp(l) => l.local_addr().ok(),
            Inner::Unix(..) => None,
        }
    }

    /// Serves until dropped.
    pub async fn run(self, health: Arc<Health>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = match &self.inner {
                Inner::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
                Inner::Unix(l, ..) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
            };
            let conn = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Over the bound: the connection is dropped (closed) at once.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let health = health.clone();
            tokio::spawn(async move {
                match conn {
                    Conn::Tcp(s) => serve_one(s, health).await,
                    Conn::Unix(s) => serve_one(s, health).await,
                }
                drop(permit);
            });
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn serve_one<S>(stream: S, health: Arc<Health>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let health = health.clone();
        async move { Ok::<_, Infallible>(health.respond(req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
}

/// Removes `path` if it is a socket nobody accepts on; a live socket or another file is an error.
fn clear_stale(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another process serves on {}", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Binds `endpoint` and serves; if it cannot be bound, says so and tries again every
/// `retry` (a metrics port taken by something else must not take the node's runtime endpoint
/// down with it).
pub async fn serve(endpoint: Endpoint, health: Arc<Health>, retry: Duration) {
    let mut reported = false;
    loop {
        match Listener::bind(&endpoint) {
            Ok(l) => {
                let shown = l
                    .local_addr()
                    .map(|a| format!("http://{a}"))
                    .unwrap_or_else(|| endpoint.to_string());
                tracing::info!(listen = %shown, "metrics, /healthz and /readyz served");
                return l.run(health).await;
            }
            Err(e) => {
                if !reported {
                    tracing::error!(listen = %endpoint, error = %e,
                        "cannot listen for metrics (the proxy keeps serving); trying again every {retry:?}: free the address or change `[metrics] listen`");
                    reported = true;
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints: addresses with ports, absolute unix paths; anything else says what to write.
    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("127.0.0.1:9478").unwrap(),
            Endpoint::Tcp("127.0.0.1:9478".parse().unwrap())
        );
        assert!(matches!(Endpoint::parse("[::1]:1"), Ok(Endpoint::Tcp(_))));
        assert_eq!(
            Endpoint::parse("unix:/run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:///run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        for bad in ["localhost:9478", "9478", "unix:rel.sock", ""] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
