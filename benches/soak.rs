//! Soak: the kubelet's real CRI mix through the cri-guard release binary (with a policy), with
//! concurrent clients, for a bounded time; reports throughput, errors (must be 0) and the
//! proxy's resident memory over time (must stay flat).
//!
//! The mix, per client connection (each on its own connection, as several kubelet-side agents
//! would be): ListContainers 30%, ContainerStatus 20%, ImageStatus 15%, ListPodSandbox 15%,
//! PodSandboxStatus 5%, ListImages 5%, Version 5%, PullImage 5% (signed images of the bed's
//! registry: the first pull of each is a cold verification, later ones decisions from the
//! cache). One more client churns pods: RunPodSandbox, CreateContainer (verified), Start,
//! Stop, Remove, StopPodSandbox, RemovePodSandbox, in a loop.
//!
//! Flat memory: VmRSS is sampled every `--sample` seconds. After a warm-up (the first 10% of
//! the run), the mean of the last third of the samples may exceed the mean of the first third
//! by at most max(1 MiB, 5%); the least-squares slope is printed too. Growth past that over a
//! bounded run is the sign of a leak (caches are bounded and were sized to fit).
//!
//! ```text
//! cargo build --release && cargo bench --bench soak                    # 120 s, 4 clients
//! cargo bench --bench soak -- --seconds 3600 --clients 8               # longer
//! ```
//!
//! Loopback only: the registry and containerd are the bed's own. `CRI_GUARD_BENCH_RESULTS=FILE`
//! appends the summary to FILE (JSON lines) for `scripts/bench.sh`.

#[path = "results.rs"]
mod results;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cri_guard::cri;
use support::TestBed;
use support::sign::{self, TestKey};

struct Args {
    seconds: u64,
    clients: usize,
    sample: f64,
    images: usize,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().collect();
    let get = |name: &str| {
        a.iter()
            .position(|x| x == name)
            .and_then(|i| a.get(i + 1))
            .cloned()
    };
    let seconds = get("--seconds")
        .or_else(|| std::env::var("CRI_GUARD_SOAK_SECONDS").ok())
        .map(|s| s.parse().expect("--seconds N"))
        .unwrap_or(120);
    Args {
        seconds,
        clients: get("--clients").map_or(4, |s| s.parse().expect("--clients N")),
        sample: get("--sample").map_or((seconds as f64 / 60.0).clamp(1.0, 30.0), |s| {
            s.parse().expect("--sample SECONDS")
        }),
        images: 12,
    }
}

/// Calls per kind, and errors per kind (with the first few messages).
#[derive(Default)]
struct Tally {
    calls: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
    samples: Vec<String>,
}

impl Tally {
    fn note<T>(&mut self, kind: &'static str, r: Result<T, tonic::Status>) -> Option<T> {
        *self.calls.entry(kind).or_default() += 1;
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                *self.errors.entry(kind).or_default() += 1;
                if self.samples.len() < 10 {
                    self.samples
                        .push(format!("{kind}: {:?} {}", e.code(), e.message()));
                }
                None
            }
        }
    }

    fn merge(&mut self, o: Tally) {
        for (k, v) in o.calls {
            *self.calls.entry(k).or_default() += v;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.samples.extend(o.samples);
    }
}

/// A small PRNG (no dependency; the sequence only needs to vary).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct World {
    images: Vec<String>,
    containers: Vec<String>,
    sandboxes: Vec<String>,
}

async fn reader(sock: PathBuf, world: Arc<World>, seed: u64, deadline: Instant) -> Tally {
    let ch = cri::channel(&sock);
    let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch.clone());
    let mut img = cri::image_service_client::ImageServiceClient::new(ch);
    let mut rng = Rng(seed);
    let mut t = Tally::default();
    let spec = |s: &str| {
        Some(cri::ImageSpec {
            image: s.to_string(),
            ..Default::default()
        })
    };
    while Instant::now() < deadline {
        let roll = rng.below(100);
        match roll {
            0..30 => {
                let r = rt
                    .list_containers(cri::ListContainersRequest::default())
                    .await;
                t.note("ListContainers", r);
            }
            30..50 => {
                let id = world.containers[rng.below(world.containers.len())].clone();
                let r = rt
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await;
                t.note("ContainerStatus", r);
            }
            50..65 => {
                let i = world.images[rng.below(world.images.len())].clone();
                let r = img
                    .image_status(cri::ImageStatusRequest {
                        image: spec(&i),
                        verbose: false,
                    })
                    .await;
                t.note("ImageStatus", r);
            }
            65..80 => {
                let r = rt
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await;
                t.note("ListPodSandbox", r);
            }
            80..85 => {
                let id = world.sandboxes[rng.below(world.sandboxes.len())].clone();
                let r = rt
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: id,
                        verbose: false,
                    })
                    .await;
                t.note("PodSandboxStatus", r);
            }
            85..90 => {
                let r = img.list_images(cri::ListImagesRequest::default()).await;
                t.note("ListImages", r);
            }
            90..95 => {
                let r = rt
                    .version(cri::VersionRequest {
                        version: "v1".into(),
                    })
                    .await;
                t.note("Version", r);
            }
            _ => {
                let i = world.images[rng.below(world.images.len())].clone();
                let r = img
                    .pull_image(cri::PullImageRequest {
                        image: spec(&i),
                        auth: None,
                        sandbox_config: Some(support::sandbox_config("soak-pull", "soak")),
                    })
                    .await;
                t.note("PullImage", r);
            }
        }
    }
    t
}

async fn churn(sock: PathBuf, image_id: String, deadline: Instant) -> (Tally, u64) {
    let mut rt = cri::runtime_client(&sock);
    let mut t = Tally::default();
    let mut cycles = 0;
    while Instant::now() < deadline {
        let config = support::sandbox_config(&support::unique_name("churn"), "soak");
        let Some(sb) = t.note(
            "RunPodSandbox",
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await,
        ) else {
            continue;
        };
        let sb = sb.into_inner().pod_sandbox_id;
        let created = t.note(
            "CreateContainer",
            rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(support::container_config(
                    &support::unique_name("c"),
                    &image_id,
                    &["sleep", "3600"],
                )),
                sandbox_config: Some(config),
            })
            .await,
        );
        if let Some(c) = created {
            let id = c.into_inner().container_id;
            let r = rt
                .start_container(cri::StartContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            t.note("StartContainer", r);
            let r = rt
                .stop_container(cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 0,
                })
                .await;
            t.note("StopContainer", r);
            let r = rt
                .remove_container(cri::RemoveContainerRequest { container_id: id })
                .await;
            t.note("RemoveContainer", r);
        }
        let r = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sb.clone(),
            })
            .await;
        t.note("StopPodSandbox", r);
        let r = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: sb })
            .await;
        t.note("RemovePodSandbox", r);
        cycles += 1;
    }
    (t, cycles)
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Least-squares slope of `(seconds, KiB)` in KiB per minute.
fn slope_kib_per_min(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mx) * (*y as f64 - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 { 0.0 } else { 60.0 * num / den }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        support::util::terminate(&mut self.0, Duration::from_secs(5));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let started = Instant::now();
    let bin = std::env::var_os("CRI_GUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/cri-guard"));
    if !bin.is_file() {
        eprintln!(
            "soak: {} not found; run `cargo build --release` first",
            bin.display()
        );
        std::process::exit(1);
    }
    let bed = TestBed::start().await;
    let reg = bed.registry.addr().to_string();
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "release");
    let mut images = Vec::new();
    for i in 0..a.images {
        let name = format!("soak/img-{i}");
        let (r, d) = bed.registry.push(&name, "v1", Some(&format!("v{i}")));
        sign::sign_image(&reg, None, &name, &d, &key);
        images.push(r);
    }
    let policy = bed.dir.path().join("soak-policy.toml");
    std::fs::write(
        &policy,
        format!(
            "default = \"enforce\"\nhostsDir = \"{}\"\n[sandbox]\nimage = \"{pause}\"\n\
             [[rules]]\nname = \"pause\"\nimageReferences = [\"{pause_repo}\"]\nmode = \"skip\"\n\
             [[rules]]\nname = \"bed\"\nimageReferences = [\"{reg}/soak/*\"]\n\
             [[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n",
            bed.containerd.certs_dir().display(),
            key_path.display(),
            pause = bed.pause_image,
            // The repository: the runtime holds the pause image by digest once pulled.
            pause_repo = bed.pause_image.rsplit_once(':').map_or("", |(r, _)| r),
        ),
    )
    .expect("policy");
    let sock = bed.dir.path().join("guard.sock");
    let log = bed.dir.path().join("guard.log");
    let child = Command::new(&bin)
        .arg("serve")
        .arg("--listen")
        .arg(&sock)
        .arg("--upstream")
        .arg(bed.containerd_socket())
        .arg("--policy")
        .arg(&policy)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn cri-guard");
    let guard = Guard(child);
    let pid = guard.0.id();
    assert!(
        support::util::poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        }),
        "cri-guard did not start; log:\n{}",
        support::util::log_tail(&log, 20)
    );

    // The standing workload: pods with containers to list and inspect (created through the proxy).
    let app = images[0].clone();
    let image_id = cri::image_client(&sock)
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: app.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("pull through cri-guard")
        .into_inner()
        .image_ref;
    let mut rt = cri::runtime_client(&sock);
    let (mut sandboxes, mut containers) = (Vec::new(), Vec::new());
    for p in 0..5 {
        let config = support::sandbox_config(&format!("soak-{p}"), "soak");
        let sb = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        for c in 0..4 {
            let id = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sb.clone(),
                    config: Some(support::container_config(
                        &format!("c{c}"),
                        &image_id,
                        &["sleep", "3600"],
                    )),
                    sandbox_config: Some(config.clone()),
                })
                .await
                .expect("CreateContainer")
                .into_inner()
                .container_id;
            containers.push(id);
        }
        sandboxes.push(sb);
    }
    let world = Arc::new(World {
        images,
        containers,
        sandboxes,
    });
    println!(
        "soak: {} s, {} clients + 1 pod-churn client, RSS every {:.1} s; cri-guard {} (pid {pid}); \
         setup {:.1} s; containerd {}",
        a.seconds,
        a.clients,
        a.sample,
        bin.display(),
        started.elapsed().as_secs_f64(),
        bed.containerd.version().label()
    );

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.seconds);
    let rss: Arc<Mutex<Vec<(f64, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let rss = rss.clone();
        let every = Duration::from_secs_f64(a.sample);
        tokio::spawn(async move {
            while Instant::now() < deadline {
                rss.lock()
                    .unwrap()
                    .push((t0.elapsed().as_secs_f64(), vm_rss_kib(pid)));
                tokio::time::sleep(every).await;
            }
        })
    };
    let readers: Vec<_> = (0..a.clients)
        .map(|i| tokio::spawn(reader(sock.clone(), world.clone(), 1 + i as u64, deadline)))
        .collect();
    let churner = tokio::spawn(churn(sock.clone(), image_id.clone(), deadline));
    let mut total = Tally::default();
    for r in readers {
        total.merge(r.await.expect("reader"));
    }
    let (c, cycles) = churner.await.expect("churn");
    total.merge(c);
    let _ = sampler.await;
    let took = t0.elapsed().as_secs_f64();
    let alive = support::util::pid_alive(pid as i32);

    let calls: u64 = total.calls.values().sum();
    let errors: u64 = total.errors.values().sum();
    println!("calls by kind (errors):");
    for (k, v) in &total.calls {
        println!(
            "  {k:<18} {v:>9}  ({})",
            total.errors.get(k).copied().unwrap_or(0)
        );
    }
    for s in &total.samples {
        println!("  error: {s}");
    }
    let samples = rss.lock().unwrap().clone();
    let warm = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= 0.1 * a.seconds as f64)
        .collect::<Vec<_>>();
    let third = (warm.len() / 3).max(1);
    let mean = |s: &[(f64, u64)]| s.iter().map(|p| p.1 as f64).sum::<f64>() / s.len().max(1) as f64;
    let (first, last) = (
        mean(&warm[..third.min(warm.len())]),
        mean(&warm[warm.len().saturating_sub(third)..]),
    );
    let growth = last - first;
    let flat = growth <= (1024.0f64).max(0.05 * first);
    let slope = slope_kib_per_min(&warm);
    let (min, max) = (
        samples.iter().map(|p| p.1).min().unwrap_or(0),
        samples.iter().map(|p| p.1).max().unwrap_or(0),
    );
    let series: Vec<String> = samples
        .iter()
        .map(|(t, k)| format!("{t:.0}s:{:.1}", *k as f64 / 1024.0))
        .collect();
    println!("RSS MiB over time: {}", series.join(" "));
    println!(
        "summary: {calls} calls in {took:.1} s = {:.0} calls/s; {cycles} pod cycles; errors {errors} [{}]; \
         cri-guard alive {alive}; RSS {:.1}..{:.1} MiB, first third {:.1} MiB, last third {:.1} MiB \
         (growth {:+.2} MiB, slope {:+.1} KiB/min) [{}]",
        calls as f64 / took,
        if errors == 0 { "PASS" } else { "MISS" },
        min as f64 / 1024.0,
        max as f64 / 1024.0,
        first / 1024.0,
        last / 1024.0,
        growth / 1024.0,
        slope,
        if flat { "flat: PASS" } else { "growing: MISS" }
    );
    results::record(
        "soak",
        "soak",
        serde_json::json!({
            "seconds": took, "clients": a.clients, "calls": calls, "calls_per_s": calls as f64 / took,
            "pod_cycles": cycles, "errors": errors, "alive": alive,
            "rss_min_mib": min as f64 / 1024.0, "rss_max_mib": max as f64 / 1024.0,
            "rss_first_third_mib": first / 1024.0, "rss_last_third_mib": last / 1024.0,
            "rss_slope_kib_per_min": slope, "flat": flat,
            "by_kind": total.calls, "errors_by_kind": total.errors,
        }),
    );
    drop(rt);
    support::remove_all_pods(&bed.containerd_socket()).await;
    drop(guard);
    drop(bed);
}
