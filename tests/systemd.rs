//! The systemd unit, checked without a running systemd (PID 1 here is not systemd):
//! `systemd-analyze verify` and `security --offline` against a temporary root that holds the
//! unit, and the binary's real system calls (under strace, through a pull verified against a
//! real registry and containerd, a reload, SIGHUP and SIGTERM) against the unit's
//! `SystemCallFilter=`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cri_guard::cri;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::TestBed;
use support::sign::{self, TestKey};
use support::util::require_bin;

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/cri-guard.service")
}

/// A root with the distribution's units, the unit under test, and stand-ins for the binaries
/// it names (`verify` checks only that they exist and are executable).
fn unit_root(unit_text: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    let out = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::write(r.join("etc/systemd/system/cri-guard.service"), unit_text).unwrap();
    for bin in ["usr/local/bin/cri-guard", "bin/kill"] {
        let p = r.join(bin);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

/// `systemd-analyze verify` output (stdout and stderr) for `unit_text`.
fn verify(unit_text: &str) -> (bool, String) {
    let analyze = require_bin("systemd-analyze", "systemd");
    let root = unit_root(unit_text);
    let out = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("cri-guard.service")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `systemd-analyze verify` finds nothing to say about the unit (not even a warning), and does
/// speak up about a unit with a mistake in it.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let (ok, text) = verify(&unit);
    assert!(ok && text.trim().is_empty(), "{text}");
    let (_, text) = verify(&unit.replace("Type=notify", "Type=notify\nWatchdogSecs=1"));
    assert!(
        text.contains("WatchdogSecs"),
        "a typo went unnoticed: {text:?}"
    );
}

/// `systemd-analyze security` rates the unit's exposure low (it started at 8.9, "EXPOSED").
#[test]
fn unit_exposure_is_low() {
    let analyze = require_bin("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let root = unit_root(&unit);
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.path().display()))
        .arg("cri-guard.service")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for cri-guard.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
    for must in [
        "✓ CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "✓ NoNewPrivileges=",
    ] {
        assert!(text.contains(must), "{must} not satisfied:\n{text}");
    }
}

/// The unit's `SystemCallFilter=` lines as (allowed, denied) sets of syscall names.
fn filter_sets(unit: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let analyze = require_bin("systemd-analyze", "systemd");
    let expand = |item: &str| expand_group(&analyze, item);
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for line in unit.lines() {
        let Some(value) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        match value.strip_prefix('~') {
            Some(deny) => deny
                .split_whitespace()
                .for_each(|i| denied.extend(expand(i))),
            None => value
                .split_whitespace()
                .for_each(|i| allowed.extend(expand(i))),
        }
    }
    (allowed, denied)
}

/// The syscall names of `item`: a name, or a `@group` with its nested groups.
fn expand_group(analyze: &Path, item: &str) -> BTreeSet<String> {
    if !item.starts_with('@') {
        return [item.to_string()].into();
    }
    let out = Command::new(analyze)
        .args(["syscall-filter", "--no-pager", item])
        .output()
        .unwrap();
    assert!(out.status.success(), "{item}: {out:?}");
    let mut names = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        names.extend(expand_group(analyze, line));
    }
    names
}

/// Syscall names in an `strace -f` log.
fn traced_calls(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            // "PID name(args) = ret"; skip "<... name resumed>", signals and exits.
            let rest = l.split_once(' ').map(|(_, r)| r.trim_start())?;
            if rest.starts_with('<') || rest.starts_with("---") || rest.starts_with("+++") {
                return None;
            }
            let name = rest.split('(').next()?;
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then(|| name.to_string())
        })
        .collect()
}

/// Every system call the serving binary makes (start, a verified pull relayed to containerd,
/// a relayed call, a policy file change, SIGHUP, the watchdog, SIGTERM) is allowed by the
/// unit's filter, so the filter cannot kill or break it on a node.
#[tokio::test]
async fn syscalls_stay_within_the_filter() {
    let strace = require_bin("strace", "strace");
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let (allowed, denied) = filter_sets(&unit);
    assert!(
        allowed.contains("epoll_wait") && !allowed.contains("mount") && denied.contains("chown")
    );

    let bed = TestBed::start().await;
    let (image, digest) = bed.registry.push("app", "v1", None);
    let key = TestKey::p256();
    sign::sign_image(bed.registry.addr(), None, "app", &digest, &key);
    let dir = bed.dir.path();
    let key_path = key.write_public(dir, "ci");
    let policy = dir.join("policy.toml");
    let policy_text = format!(
        "hostsDir = \"{}\"\n[[rules]]\nname = \"bed\"\nimageReferences = [\"{}/*\"]\n\
         [[rules.attestors]]\nname = \"ci\"\nkey = \"{}\"\n",
        bed.containerd.certs_dir().display(),
        bed.registry.addr(),
        key_path.display()
    );
    std::fs::write(&policy, &policy_text).unwrap();
    let listen = dir.join("guard.sock");
    let notify = dir.join("notify.sock");
    let notify_sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let trace = dir.join("strace.log");
    let mut child = Command::new(strace)
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(["serve", "--listen"])
        .arg(&listen)
        .arg("--upstream")
        .arg(bed.containerd_socket())
        .arg("--policy")
        .arg(&policy)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    notify_sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = notify_sock.recv(&mut buf).expect("READY=1 under strace");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    let pulled = cri::image_client(&listen)
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(support::sandbox_config(
                &support::unique_name("sc"),
                "default",
            )),
        })
        .await;
    assert!(pulled.is_ok(), "{pulled:?}");
    cri::runtime_client(&listen)
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    // A change to the file (watch + reload), then SIGHUP (forced reload).
    std::fs::write(&policy, format!("{policy_text}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // strace's pid is the child; the traced cri-guard is its child.
    let guard_pid = wait_for_child_of(child.id());
    kill(Pid::from_raw(guard_pid), Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill(Pid::from_raw(guard_pid), Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");

    let log = std::fs::read_to_string(&trace).unwrap();
    let calls = traced_calls(&log);
    for expected in ["inotify_add_watch", "sendto", "connect", "accept4"] {
        assert!(
            calls.contains(expected),
            "{expected} never traced: {calls:?}"
        );
    }
    let outside: Vec<&String> = calls
        .iter()
        .filter(|c| *c != "execve" && (!allowed.contains(*c) || denied.contains(*c)))
        .collect();
    assert!(
        outside.is_empty(),
        "system calls the unit's filter refuses: {outside:?} (of {calls:?})"
    );
}

/// The pid of the first child of `parent` (bounded wait).
fn wait_for_child_of(parent: u32) -> i32 {
    let path = format!("/proc/{parent}/task/{parent}/children");
    let start = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            return pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no child of strace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
