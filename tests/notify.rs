//! The service manager's protocol as the real binary speaks it (PID 1 here is not systemd, so
//! the test is the service manager): `NOTIFY_SOCKET` points at a datagram socket of the test.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

/// Kills the child if a test fails before it is done with it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cgn")
        .tempdir_in("/tmp")
        .unwrap()
}

/// Starts `serve` on `dir/g.sock` with a valid policy, no runtime, and `env`.
fn spawn(dir: &Path, env: &[(&str, String)]) -> Serving {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "default = \"enforce\"\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen"])
        .arg(dir.join("g.sock"))
        .args(["--upstream", "/tmp/cg-no-runtime.sock", "--policy"])
        .arg(&policy)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Serving(cmd.spawn().expect("spawn cri-guard"))
}

/// The next datagram within `timeout`, as text.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    sock.recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// READY=1 comes first and only once the socket accepts calls (a call made the moment it
/// arrives is answered); WATCHDOG=1 then arrives every half WATCHDOG_USEC; SIGTERM sends
/// STOPPING=1 and the process exits 0.
#[test]
fn ready_watchdog_stopping() {
    let dir = tempdir();
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let watchdog_usec: u64 = 600_000;
    let mut serving = spawn(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", notify_path.display().to_string()),
            ("WATCHDOG_USEC", watchdog_usec.to_string()),
        ],
    );
    let listen = dir.path().join("g.sock");

    let first = recv(&sock, Duration::from_secs(20)).expect("no notification at all");
    assert!(has_line(&first, "READY=1"), "first message: {first:?}");
    // The moment READY=1 is read, the socket must take a connection and answer a call.
    UnixStream::connect(&listen).expect("READY=1 sent before the socket accepts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = rt.block_on(async {
        cri_guard::cri::runtime_client(&listen)
            .version(cri_guard::cri::VersionRequest::default())
            .await
    });
    // No runtime behind it: the proxy itself answers Unavailable.
    assert_eq!(answered.unwrap_err().code(), tonic::Code::Unavailable);
    assert!(
        first.lines().any(|l| l.starts_with("STATUS=serving on ")),
        "{first:?}"
    );

    // Watchdog pings over a few intervals.
    let interval = Duration::from_micros(watchdog_usec / 2);
    let mut pings = Vec::new();
    let start = Instant::now();
    while start.elapsed() < interval * 8 {
        match recv(&sock, Duration::from_micros(watchdog_usec) * 3) {
            Some(m) => {
                assert!(has_line(&m, "WATCHDOG=1"), "unexpected message {m:?}");
                pings.push(Instant::now());
            }
            None => panic!("no watchdog ping within 3 x WATCHDOG_USEC"),
        }
    }
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median > interval / 2 && median < interval * 3 / 2,
        "median gap {median:?}, asked for {interval:?} (half of WATCHDOG_USEC)"
    );

    kill(Pid::from_raw(serving.0.id() as i32), Signal::SIGTERM).unwrap();
    let mut stopping = false;
    for _ in 0..20 {
        match recv(&sock, Duration::from_secs(5)) {
            Some(m) if has_line(&m, "STOPPING=1") => {
                stopping = true;
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
    let status = serving.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Two settings make different ping rates: the interval really comes from WATCHDOG_USEC.
#[test]
fn ping_rate_follows_watchdog_usec() {
    let rate = |usec: u64| -> usize {
        let dir = tempdir();
        let notify_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&notify_path).unwrap();
        let _serving = spawn(
            dir.path(),
            &[
                ("NOTIFY_SOCKET", notify_path.display().to_string()),
                ("WATCHDOG_USEC", usec.to_string()),
            ],
        );
        let ready = recv(&sock, Duration::from_secs(20)).expect("READY=1");
        assert!(has_line(&ready, "READY=1"));
        let window = Duration::from_millis(2000);
        let start = Instant::now();
        let mut n = 0;
        while let Some(left) = window.checked_sub(start.elapsed()) {
            match recv(&sock, left.max(Duration::from_millis(1))) {
                Some(m) if has_line(&m, "WATCHDOG=1") => n += 1,
                Some(_) => {}
                None => break,
            }
        }
        n
    };
    // Every 100 ms vs every 500 ms over 2 s: about 20 vs about 4.
    let fast = rate(200_000);
    let slow = rate(1_000_000);
    assert!(fast >= 10, "{fast} pings at 100 ms");
    assert!((2..=6).contains(&slow), "{slow} pings at 500 ms");
    assert!(fast >= slow * 2, "fast {fast}, slow {slow}");
}

/// A watchdog meant for another process (WATCHDOG_PID) is not ours: ready, but no pings; the
/// socket can be an abstract address.
#[test]
fn watchdog_for_another_pid_is_ignored() {
    let name = format!("cri-guard-notify-test-{}", std::process::id());
    let sock =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let dir = tempdir();
    let _serving = spawn(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", format!("@{name}")),
            ("WATCHDOG_USEC", "100000".into()),
            ("WATCHDOG_PID", "1".into()),
        ],
    );
    let ready = recv(&sock, Duration::from_secs(20)).expect("READY=1 to the abstract socket");
    assert!(has_line(&ready, "READY=1"), "{ready:?}");
    assert_eq!(recv(&sock, Duration::from_millis(600)), None);
}

/// A policy that does not load: exit 64, and READY=1 is never sent.
#[test]
fn bad_policy_never_ready() {
    let dir = tempdir();
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    let policy = dir.path().join("bad.toml");
    std::fs::write(&policy, "default = \"sometimes\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen"])
        .arg(dir.path().join("g.sock"))
        .args(["--upstream", "/tmp/cg-no-runtime.sock", "--policy"])
        .arg(&policy)
        .env("NOTIFY_SOCKET", &notify_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert_eq!(recv(&sock, Duration::from_millis(200)), None);
    assert!(!dir.path().join("g.sock").exists());
}
