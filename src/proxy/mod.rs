//! Transport: the listen socket, one task per kubelet connection, and graceful shutdown.
//!
//! [`Proxy::bind`] claims the socket (replacing a stale one, refusing to steal a live one) and
//! sets its mode; [`Proxy::run`] accepts connections until the shutdown future resolves, then
//! stops accepting, removes the socket file, lets in-flight calls finish within the grace period
//! and drops what is left.

mod budget;
mod conn;
mod frame;
pub mod grpc;
mod hpack;
pub mod intercept;
mod relay;
mod socket;
mod splice;

use std::collections::HashSet;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::Config;
pub use budget::{Stats, method_index};
pub use intercept::{AllowAll, Call, Guard, Verdict};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{path} exists and is not a socket; remove it or choose another `listen` path")]
    NotASocket { path: PathBuf },
    #[error(
        "another process is already serving on {path}; stop it first (is cri-guard already running?)"
    )]
    InUse { path: PathBuf },
    #[error("cannot prepare the listen socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of our socket file, so shutdown removes only our own file.
    ident: (u64, u64),
    grace: Duration,
    /// Client connections served at once (`max_connections`).
    max_connections: usize,
    shared: Arc<conn::Shared>,
}

impl Proxy {
    /// Claims the listen socket of `cfg`. Must be called inside a tokio runtime.
    pub fn bind(cfg: &Config, guard: Arc<dyn Guard>) -> Result<Proxy, ProxyError> {
        let path = cfg.listen.clone();
        let io = |source| ProxyError::Socket {
            path: path.clone(),
            source,
        };
        claim_path(&path)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let listener = bind_with_mode(&path, cfg.socket_mode).map_err(io)?;
        let meta = std::fs::metadata(&path).map_err(io)?;
        let budget = budget::Budget::new(cfg.max_intercepted_buffer);
        hpack::warm_up();
        Ok(Proxy {
            listener,
            ident: (meta.dev(), meta.ino()),
            path,
            grace: cfg.shutdown_grace,
            max_connections: cfg.max_connections as usize,
            shared: Arc::new(conn::Shared {
                upstream: cfg.upstream.clone(),
                connect_timeout: cfg.connect_timeout,
                max_message: cfg.max_intercepted_message,
                request_timeout: cfg.intercepted_request_timeout,
                max_streams: cfg.max_streams_per_connection,
                budget: budget.clone(),
                stats: Arc::new(Stats {
                    budget: Some(budget),
                    ..Default::default()
                }),
                guard,
                unknown_seen: Mutex::new(HashSet::new()),
                detached: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Counters of the proxy's bounded state (buffered bytes, refusals), live while it runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The socket path the proxy listens on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` resolves, then drains within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            listener,
            path,
            ident,
            grace,
            max_connections,
            shared,
        } = self;
        let mut refusals = Refusals::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((io, _)) if conns.len() >= max_connections => {
                        refuse(io, max_connections);
                        shared.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::METRICS.refused_connection();
                        refusals.note(max_connections);
                    }
                    Ok((io, _)) => {
                        conns.spawn(splice::serve(io, shared.clone(), stop_rx.clone()));
                    }
                    Err(e) => {
                        // EMFILE and the like: back off briefly instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        remove_own_socket(&path, ident);
        info!(in_flight_connections = conns.len(), grace = ?grace, "shutting down: no longer accepting");
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        let drained = tokio::time::timeout_at(deadline, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                connections = conns.len(),
                "grace period over; dropping calls still in flight"
            );
            conns.abort_all();
        }
        // Confirmed pulls outlive their connections; give them the rest of the grace period.
        shared.detached.close();
        if tokio::time::timeout_at(deadline, shared.detached.wait())
            .await
            .is_err()
        {
            warn!(
                pulls = shared.detached.len(),
                "grace period over; confirmed pulls still running are dropped"
            );
        }
        info!("stopped");
    }
}

/// Binds a listener at `path` whose socket file has `mode` from the moment it appears: the
/// socket is made under a temporary name beside `path`, given its mode, then renamed into place
/// (a socket file made at `path` directly has the umask's mode until it is changed, and a peer
/// or a test could see it then).
fn bind_with_mode(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Answers a connection over `max_connections` and closes it: the server preface (an empty
/// SETTINGS) and a GOAWAY with ENHANCE_YOUR_CALM whose debug data names the setting, written
/// without waiting (a fresh socket's buffer takes these few bytes; a peer that cannot take them
/// just sees the close). gRPC clients report it as Unavailable and retry with backoff.
fn refuse(io: tokio::net::UnixStream, max: usize) {
    let mut out = Vec::with_capacity(128);
    frame::put_settings(&mut out, &[]);
    let debug = format!(
        "cri-guard: {max} client connections are open, the most `max_connections` allows; \
         close one or raise it"
    );
    frame::put_goaway(
        &mut out,
        0,
        frame::Reason::EnhanceYourCalm,
        debug.as_bytes(),
    );
    let _ = io.try_write(&out);
}

/// Rate limit for the warning about refused connections: one line per 10 s at most, with the
/// count since the last one (a peer opening connections in a loop cannot flood the log).
#[derive(Default)]
struct Refusals {
    last: Option<Instant>,
    since: u64,
}

impl Refusals {
    fn note(&mut self, max: usize) {
        self.since += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            warn!(
                refused = self.since,
                max_connections = max,
                "refused client connections: the most `max_connections` allows are open"
            );
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// Makes `path` free for binding: a stale socket (nobody accepting) is removed; a live one or a
/// non-socket file is an error.
fn claim_path(path: &Path) -> Result<(), ProxyError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ProxyError::Socket {
                path: path.into(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ProxyError::NotASocket { path: path.into() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ProxyError::InUse { path: path.into() });
    }
    debug!(path = %path.display(), "replacing a stale socket file");
    std::fs::remove_file(path).map_err(|source| ProxyError::Socket {
        path: path.into(),
        source,
    })
}

fn remove_own_socket(path: &Path, ident: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == ident => {
            if let Err(e) = std::fs::remove_file(path) {
                warn!(path = %path.display(), error = %e, "could not remove the socket file");
            }
        }
        _ => debug!(path = %path.display(), "socket file already gone or replaced; left alone"),
    }
}
