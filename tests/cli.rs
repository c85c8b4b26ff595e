//! The `cri-guard` binary as an operator runs it: check-config, bad configurations, serving,
//! signals.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run cri-guard")
}

fn sock_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cg")
        .tempdir_in("/tmp")
        .unwrap()
}

fn assert_no_trace(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

/// A valid file passes check-config with exit 0.
#[test]
fn check_config_accepts_valid_file() {
    let dir = sock_dir();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "listen = \"/tmp/x.sock\"\n[log]\nformat = \"json\"\n").unwrap();
    let out = run(&["check-config", f.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

/// Each kind of bad configuration gets its own clear message, all at once, and exit code 64.
#[test]
fn check_config_reports_every_problem() {
    let dir = sock_dir();
    let cases: &[(&str, &[&str])] = &[
        (
            "listen = \"rel.sock\"\nworkers = \"many\"\ntimeout = 3\n",
            &["`listen`", "`workers`", "unknown key `timeout`"],
        ),
        ("listen = [1]\n", &["`listen` must be a string"]),
        ("[log\n", &["not valid TOML at line 1"]),
        ("log = 3\n", &["`log` must be a table"]),
        ("socket_mode = \"0999\"\n", &["`socket_mode`", "octal"]),
        (
            "listen = \"/a.sock\"\nupstream = \"/a.sock\"\n",
            &["forward to itself"],
        ),
        ("shutdown_grace = \"forever\"\n", &["`shutdown_grace`"]),
        ("[log]\nlevel = \"loud=[\"\n", &["`log.level`"]),
    ];
    for (text, needles) in cases {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = run(&["check-config", f.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(64), "{text}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_no_trace(&err);
        for n in *needles {
            assert!(err.contains(n), "{text}: expected {n:?} in:\n{err}");
        }
    }
    let out = run(&["check-config", "/nonexistent/cri-guard.toml"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

/// `serve` refuses bad flags with exit 64 before touching any socket.
#[test]
fn serve_rejects_bad_flags() {
    let dir = sock_dir();
    let listen = dir.path().join("g.sock");
    let out = run(&[
        "serve",
        "--listen",
        listen.to_str().unwrap(),
        "--connect-timeout",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`connect_timeout`"));
    assert!(!listen.exists());
}

/// `serve` on a path held by a regular file fails with a message naming the fix.
#[test]
fn serve_refuses_non_socket_path() {
    let dir = sock_dir();
    let listen = dir.path().join("g.sock");
    std::fs::write(&listen, "keep me").unwrap();
    let out = run(&[
        "serve",
        "--listen",
        listen.to_str().unwrap(),
        "--upstream",
        "/tmp/none.sock",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&listen).unwrap(), "keep me");
}

/// Kills the child if a test fails before it is done with it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_serve(listen: &Path, extra: &[&str]) -> Serving {
    Serving(
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                listen.to_str().unwrap(),
                "--upstream",
                "/tmp/cg-no-runtime.sock",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    )
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `serve` starts without a runtime, creates its socket with the configured mode, and on SIGTERM
/// or SIGINT exits 0 and removes the socket file.
#[test]
fn serve_then_signal_cleans_up() {
    for (signal, mode) in [(Signal::SIGTERM, 0o660), (Signal::SIGINT, 0o600)] {
        let dir = sock_dir();
        let listen = dir.path().join("sub").join("g.sock");
        let mut serving = spawn_serve(&listen, &["--socket-mode", &format!("{mode:o}")]);
        let child = &mut serving.0;
        wait_for(&listen);
        let got = std::fs::metadata(&listen).unwrap().permissions().mode() & 0o777;
        assert_eq!(got, mode);
        // A call while no runtime is there: Unavailable, and the proxy keeps running.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(async {
                let mut client = cri_guard::cri::runtime_client(&listen);
                client
                    .version(cri_guard::cri::VersionRequest::default())
                    .await
            })
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "did not exit on {signal}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{signal}: {status:?}");
        assert!(!listen.exists(), "socket left behind after {signal}");
    }
}

/// A stale socket file from a crashed run is replaced at start.
#[test]
fn serve_replaces_stale_socket() {
    let dir = sock_dir();
    let listen = dir.path().join("g.sock");
    drop(std::os::unix::net::UnixListener::bind(&listen).unwrap());
    let mut serving = spawn_serve(&listen, &[]);
    let child = &mut serving.0;
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&listen).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never started serving"
        );
        if let Some(s) = child.try_wait().unwrap() {
            panic!("exited: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
}

/// The example configuration shipped in deploy/ is valid and says exactly the defaults it claims.
#[test]
fn shipped_example_config_is_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cri-guard.toml");
    let out = run(&["check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let cfg = cri_guard::config::Config::load(Some(&path), &Default::default()).unwrap();
    assert_eq!(cfg, cri_guard::config::Config::default());
}
