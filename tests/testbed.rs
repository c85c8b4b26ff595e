//! Smoke tests of the test bed itself (registry + private containerd + pod helpers). The
//! containerd of most tests is the one `CRI_GUARD_CONTAINERD` picks; the last two tests run both
//! versions explicitly.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cri_guard::cri;
use support::{BedOptions, ContainerdVersion, TestBed, exec_sync, remove_all_pods, run_pod, util};

async fn pod_count(bed: &TestBed) -> usize {
    cri::runtime_client(bed.containerd_socket())
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items
        .len()
}

/// A bed starts, serves a pushed image, runs a pod whose container answers ExecSync, and
/// remove_all_pods leaves no sandbox.
#[tokio::test]
async fn pod_runs_and_execs_then_is_removed() {
    let t = Instant::now();
    let bed = TestBed::start().await;
    let started = t.elapsed();
    let t = Instant::now();
    let image = bed.push_image("smoke/busybox", "v1");
    let pushed = t.elapsed();
    let sock = bed.containerd_socket();
    let t = Instant::now();
    let pod = run_pod(&sock, &image, "default").await;
    let ran = t.elapsed();
    let out = exec_sync(&sock, &pod.container_id, &["echo", "hi"]).await;
    assert_eq!(
        out.exit_code,
        0,
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(pod_count(&bed).await, 1);
    let t = Instant::now();
    remove_all_pods(&sock).await;
    eprintln!(
        "bed start {started:?}, push {pushed:?}, run_pod {ran:?}, remove_all_pods {:?}",
        t.elapsed()
    );
    assert_eq!(pod_count(&bed).await, 0);
}

/// Two beds (this test and the next run concurrently) are independent: distinct registries,
/// sockets and pods, and both can run a pod at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beds_in_parallel_a() {
    two_beds_in_parallel().await
}

/// Companion of `two_beds_in_parallel_a` (runs at the same time in another test thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_beds_in_parallel_b() {
    two_beds_in_parallel().await
}

async fn two_beds_in_parallel() {
    let (a, b) = tokio::join!(TestBed::start(), TestBed::start());
    assert_ne!(a.registry.addr(), b.registry.addr());
    assert_ne!(a.containerd_socket(), b.containerd_socket());
    let ia = a.push_image("par/busybox", "a");
    let ib = b.push_image_variant("par/busybox", "b", "other");
    assert_ne!(
        a.image_digest("par/busybox", "a"),
        b.image_digest("par/busybox", "b")
    );
    let (sa, sb) = (a.containerd_socket(), b.containerd_socket());
    let (pa, pb) = tokio::join!(run_pod(&sa, &ia, "ns-a"), run_pod(&sb, &ib, "ns-b"));
    let out = exec_sync(
        &sb,
        &pb.container_id,
        &["sh", "-c", "echo $CRI_GUARD_VARIANT"],
    )
    .await;
    assert_eq!(out.stdout, b"other\n");
    assert_eq!(pod_count(&a).await, 1);
    assert_eq!(pod_count(&b).await, 1);
    // Each bed sees only its own pod.
    let ids = |bed: &TestBed| {
        let sock = bed.containerd_socket();
        async move {
            cri::runtime_client(sock)
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(&a).await, vec![pa.sandbox_id]);
    assert_eq!(ids(&b).await, vec![pb.sandbox_id]);
}

/// Dropping a bed with a running pod removes the pod, ends containerd, registry and shims, leaves
/// no mount under the dir, and removes the dir.
#[tokio::test]
async fn drop_cleans_up_everything() {
    let bed = TestBed::start().await;
    let image = bed.push_image("drop/busybox", "v1");
    run_pod(&bed.containerd_socket(), &image, "default").await;
    let pids = bed.pids();
    assert!(pids.containerd.is_some() && pids.registry.is_some());
    assert!(!pids.shims.is_empty(), "a running pod has a shim");
    let dir = bed.dir.path().to_path_buf();
    let t = Instant::now();
    drop(bed);
    eprintln!("drop {:?}", t.elapsed());
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        util::mounts_under(&dir).is_empty(),
        "mounts left under {}",
        dir.display()
    );
    let all = pids.shims.iter().copied().chain([
        pids.containerd.unwrap() as i32,
        pids.registry.unwrap() as i32,
    ]);
    let all: Vec<i32> = all.collect();
    // Shims are reparented to PID 1, which reaps them shortly after they exit.
    let gone = util::poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        all.iter().all(|&p| !util::pid_alive(p))
    });
    assert!(
        gone,
        "processes still alive after drop: {:?}",
        all.iter()
            .filter(|&&p| util::pid_alive(p))
            .collect::<Vec<_>>()
    );
}

/// containerd can be stopped and started again under a running pod, which survives the restart.
#[tokio::test]
async fn containerd_restart_keeps_pods() {
    let mut bed = TestBed::start().await;
    let image = bed.push_image("restart/busybox", "v1");
    let sock = bed.containerd_socket();
    let pod = run_pod(&sock, &image, "default").await;
    bed.containerd.stop();
    assert!(
        cri::runtime_client(&sock)
            .version(cri::VersionRequest::default())
            .await
            .is_err()
    );
    let t = Instant::now();
    bed.containerd.start_again();
    eprintln!("start_again {:?}", t.elapsed());
    let out = exec_sync(&sock, &pod.container_id, &["echo", "back"]).await;
    assert_eq!(out.stdout, b"back\n");
}

/// Dropping a bed whose containerd crashed (SIGKILL) with a pod running still removes the pod,
/// the shims and the dir (Drop restarts containerd to remove pods through CRI).
#[tokio::test]
async fn drop_after_containerd_crash_cleans_up() {
    let mut bed = TestBed::start().await;
    let image = bed.push_image("crash/busybox", "v1");
    run_pod(&bed.containerd_socket(), &image, "default").await;
    let shims = bed.containerd.shim_pids();
    assert!(!shims.is_empty());
    bed.containerd.kill();
    let dir = bed.dir.path().to_path_buf();
    drop(bed);
    assert!(!dir.exists(), "{} still exists", dir.display());
    let gone = util::poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        shims.iter().all(|&p| !util::pid_alive(p))
    });
    assert!(gone, "shims still alive: {shims:?}");
}

/// Both containerd versions can run side by side, each chosen explicitly whatever
/// `CRI_GUARD_CONTAINERD` says: each bed's runtime reports its version, runs a pod, and its shim
/// is that version's own `containerd-shim-runc-v2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_containerd_versions_side_by_side() {
    let (old, new) = tokio::join!(
        TestBed::start_with(BedOptions::default().containerd(ContainerdVersion::V1_6)),
        TestBed::start_with(BedOptions::default().containerd(ContainerdVersion::V2_1)),
    );
    for (bed, prefix) in [(&old, "1.6."), (&new, "2.1.")] {
        let sock = bed.containerd_socket();
        let v = cri::runtime_client(&sock)
            .version(cri::VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(v.runtime_version.starts_with(prefix), "{v:?}");
        let image = bed.push_image("side/busybox", "v1");
        run_pod(&sock, &image, "default").await;
        let shim = bed.containerd_version().binary("containerd-shim-runc-v2");
        let shims = bed.containerd.shim_pids();
        assert!(!shims.is_empty());
        for pid in shims {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(
                exe,
                std::fs::canonicalize(&shim).unwrap(),
                "containerd {} started another shim",
                bed.containerd_version().label()
            );
        }
    }
}

/// Paths under the places a container runtime writes by default (/run, /var/lib, /opt, /etc),
/// up to a few levels deep, leaving out what the package manager and other tools change.
fn system_paths() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, depth: usize, skip: &[&str], out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            out.insert(path.clone());
            if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, depth - 1, skip, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    let skip = [
        "/run/user",
        "/run/lock",
        "/run/systemd",
        "/var/lib/apt",
        "/var/lib/dpkg",
        "/var/lib/systemd",
        "/opt/cri-guard-testtools",
    ];
    for (root, depth) in [("/run", 5), ("/var/lib", 3), ("/opt", 3), ("/etc", 1)] {
        walk(Path::new(root), depth, &skip, &mut out);
    }
    out
}

/// Shim sockets of any bed on this machine: `/run/containerd/s/<sha256>` and their dirs.
fn is_shim_socket_path(p: &Path) -> bool {
    p == Path::new("/run/containerd")
        || p == Path::new("/run/containerd/s")
        || p.parent() == Some(Path::new("/run/containerd/s"))
}

/// With a pod running, each containerd version writes nothing under /run, /var/lib, /opt or /etc
/// but its shim's socket in /run/containerd/s (hard-coded); after the bed is dropped, that
/// socket is gone too. (Disabling NRI, network namespaces under the state dir, and moving the
/// opt, CDI, image-verifier and temp dirs into the bed are what this checks for 2.1.)
#[tokio::test]
async fn nothing_written_outside_the_bed() {
    for version in ContainerdVersion::ALL {
        let before = system_paths();
        let bed = TestBed::start_with(
            BedOptions::default()
                .containerd(version)
                .with_referrers_registry(),
        )
        .await;
        let image = bed.push_image("outside/busybox", "v1");
        let pod = run_pod(&bed.containerd_socket(), &image, "default").await;
        exec_sync(&bed.containerd_socket(), &pod.container_id, &["true"]).await;
        let during = system_paths();
        let shim_sockets: Vec<PathBuf> = bed
            .containerd
            .shim_pids()
            .into_iter()
            .filter_map(|pid| {
                let p = util::processes().into_iter().find(|p| p.pid == pid)?;
                let arg = |n: &str| {
                    p.cmdline
                        .windows(2)
                        .find(|w| w[0] == n)
                        .map(|w| w[1].clone())
                };
                let key = format!(
                    "{}/{}/{}",
                    bed.containerd_socket().display(),
                    arg("-namespace")?,
                    arg("-id")?
                );
                Some(PathBuf::from(format!(
                    "/run/containerd/s/{}",
                    util::sha256_hex(key.as_bytes())?
                )))
            })
            .collect();
        assert!(!shim_sockets.is_empty(), "containerd {}", version.label());
        for s in &shim_sockets {
            assert!(s.exists(), "expected the shim socket {}", s.display());
        }
        let new: Vec<&PathBuf> = during
            .difference(&before)
            .filter(|p| !is_shim_socket_path(p))
            .collect();
        assert!(
            new.is_empty(),
            "containerd {} wrote outside its bed: {new:?}",
            version.label()
        );
        drop(bed);
        let after = system_paths();
        let left: Vec<&PathBuf> = after
            .difference(&before)
            .filter(|p| !is_shim_socket_path(p) || shim_sockets.contains(p))
            .collect();
        assert!(
            left.is_empty(),
            "containerd {} left behind: {left:?}",
            version.label()
        );
    }
}
