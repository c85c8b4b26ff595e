//! The service manager's notification protocol (`sd_notify(3)`): readiness, watchdog pings,
//! status and stopping, sent as datagrams to `$NOTIFY_SOCKET`.
//!
//! The protocol is one datagram of newline-separated `KEY=VALUE` lines to a unix datagram
//! socket, named by a path or, with a leading `@`, by an abstract address. It is written here
//! rather than taken from a crate for three reasons: the socket is opened once and used
//! non-blocking, so a service manager that stops reading can never stall the event loop that
//! sends the pings; the target is an explicit value (tests point it at their own socket); and
//! the environment is read once at start, so nothing needs the `unsafe` `remove_var` of edition
//! 2024.
//!
//! The watchdog ([`watchdog`]) is an ordinary task on the proxy's runtime: when the event loop
//! stalls, its timer does not fire and the pings stop, which is what the service manager's
//! `WatchdogSec=` is there to notice.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

/// Where notifications go; `None` when not started by a service manager (every send is a no-op).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for the `NOTIFY_SOCKET` of the environment (absent or empty: disabled).
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => match v.to_str() {
                Some(s) => Notifier::to(s).unwrap_or_else(|e| {
                    warn!(socket = s, error = %e, "NOTIFY_SOCKET is unusable; the service manager will not hear from cri-guard");
                    Notifier::disabled()
                }),
                None => {
                    warn!("NOTIFY_SOCKET is not valid UTF-8; notifications disabled");
                    Notifier::disabled()
                }
            },
            _ => Notifier::disabled(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// A notifier for `socket`: a filesystem path, or `@name` for an abstract address.
    pub fn to(socket: &str) -> io::Result<Notifier> {
        let addr = match socket.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None if socket.starts_with('/') => SocketAddr::from_pathname(socket)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an absolute path or @abstract name",
                ));
            }
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some((sock, addr)),
        })
    }

    /// Whether a service manager is listening.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (lines of `KEY=VALUE`). Never blocks; a failure is logged at debug level
    /// and otherwise ignored (the service manager's own timeouts decide what it means).
    pub fn notify(&self, state: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
            debug!(error = %e, state, "notification not delivered");
        }
    }

    /// `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=...`: the line `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: draining calls in flight");
    }
}

/// A status value must stay on one line (a newline would start another assignment).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The ping interval the service manager asks for: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// recommends; `None` when no watchdog is set up, or it is meant for another process
/// (`WATCHDOG_PID`).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// [`watchdog_interval`] from this process's environment.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Sends `WATCHDOG=1` every `interval`, for as long as the runtime it is spawned on runs its
/// timers and tasks. A stalled event loop stops the pings; ticks missed during a stall are not
/// made up in a burst afterwards.
pub async fn watchdog(notifier: std::sync::Arc<Notifier>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        notifier.notify("WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// The interval is half of WATCHDOG_USEC, only for the process WATCHDOG_PID names.
    #[test]
    fn interval_from_environment_values() {
        let own = 4242;
        assert_eq!(
            watchdog_interval(Some("10000000"), None, own),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("4242"), own),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("1"), own), None);
        assert_eq!(watchdog_interval(Some("2000000"), Some("x"), own), None);
        assert_eq!(watchdog_interval(Some("0"), None, own), None);
        assert_eq!(watchdog_interval(Some("soon"), None, own), None);
        assert_eq!(watchdog_interval(None, Some("4242"), own), None);
    }

    /// Status lines cannot smuggle in another assignment.
    #[test]
    fn status_stays_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        n.status("a\nREADY=1");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=a READY=1");
    }

    /// Sends to an abstract address (`@name`) arrive; a relative path is refused.
    #[test]
    fn abstract_address() {
        let name = format!("cri-guard-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        Notifier::to(&format!("@{name}")).unwrap().notify("X=1");
        let mut buf = [0u8; 16];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"X=1");
        assert!(Notifier::to("relative.sock").is_err());
    }

    /// A receiver that stops reading never blocks the sender.
    #[test]
    fn full_receiver_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap()).unwrap();
        let start = Instant::now();
        for _ in 0..10_000 {
            n.notify("WATCHDOG=1");
        }
        // Blocking would mean waiting forever; anything that returns at all passes.
        assert!(start.elapsed() < Duration::from_secs(60));
    }

    /// The pings come from the runtime's own event loop: while a task blocks that loop, no
    /// ping is sent.
    #[test]
    fn stalled_event_loop_stops_pings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Arc::new(Notifier::to(path.to_str().unwrap()).unwrap());
        let interval = Duration::from_millis(40);
        let stall = Duration::from_millis(600);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let runner = std::thread::spawn(move || {
            rt.block_on(async move {
                tokio::spawn(watchdog(notifier, interval));
                tokio::time::sleep(interval * 5).await;
                // A task that never yields: the event loop is stuck for `stall`.
                std::thread::sleep(stall);
                tokio::time::sleep(interval * 5).await;
            })
        });
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 64];
        let start = Instant::now();
        while start.elapsed() < interval * 10 + stall + Duration::from_secs(2) {
            match rx.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(&buf[..n], b"WATCHDOG=1");
                    arrivals.push(Instant::now());
                }
                Err(_) => break,
            }
            if runner.is_finished() {
                break;
            }
        }
        runner.join().unwrap();
        let longest = arrivals
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .expect("pings before and after the stall");
        assert!(
            longest >= stall - Duration::from_millis(100),
            "pings went on during a {stall:?} stall (longest gap {longest:?})"
        );
        assert!(arrivals.len() >= 6, "{} pings", arrivals.len());
    }
}
