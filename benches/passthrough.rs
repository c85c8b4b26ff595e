//! Passthrough benchmark: what cri-guard adds to relayed CRI calls, measured against a real
//! containerd 1.6 and, as the floor of one extra hop, a `socat` byte relay, in the same run.
//!
//! Paths: direct (containerd's socket), relay (`socat UNIX-LISTEN,fork UNIX-CONNECT`), cri-guard
//! (the release binary, `serve --log-level warn`). Calls are measured in interleaved batches
//! (A,B,C,A,B,C,...) on one persistent tonic channel per path. See docs/benchmarks.md and
//! design.md section 7 for the targets.
//!
//! ```text
//! cargo build --release && cargo bench --bench passthrough            # full run, ~1 min
//! cargo build --release && cargo bench --bench passthrough -- --quick # smoke run, ~10 s
//! ```
//!
//! Needs root and the test bed's Debian packages (containerd, runc, docker-registry, umoci,
//! busybox-static) plus socat. `CRI_GUARD_BIN` overrides the binary's path.

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cri_guard::cri;
use cri_guard::cri::image_service_client::ImageServiceClient;
use cri_guard::cri::runtime_service_client::RuntimeServiceClient;
use futures_util::StreamExt;
use prost::Message;
use support::TestBed;
use support::util::{descendants, kill_and_wait, processes, terminate};
use tonic::transport::Channel;

/// Iteration counts and sizes for one run.
struct Plan {
    quick: bool,
    /// Calls per path for Version, ImageStatus, ListImages, ListContainers(small).
    cheap_iters: usize,
    cheap_batch: usize,
    /// Calls per path for ListContainers(large).
    large_iters: usize,
    large_batch: usize,
    warmup: usize,
    small_containers: usize,
    large_containers: usize,
    /// Throughput: rounds of (A,B,C), each path `slice` long per round.
    tput_rounds: usize,
    tput_slice: Duration,
    ready_runs: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                cheap_iters: 500,
                cheap_batch: 100,
                large_iters: 40,
                large_batch: 10,
                warmup: 100,
                small_containers: 50,
                large_containers: 200,
                tput_rounds: 2,
                tput_slice: Duration::from_millis(250),
                ready_runs: 10,
            }
        } else {
            Plan {
                quick,
                cheap_iters: 5_000,
                cheap_batch: 250,
                large_iters: 1_000,
                large_batch: 50,
                warmup: 300,
                small_containers: 50,
                large_containers: 1_000,
                tput_rounds: 3,
                tput_slice: Duration::from_secs(1),
                ready_runs: 20,
            }
        }
    }
}

const PATHS: [&str; 3] = ["direct", "socat", "cri-guard"];
const NS: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `--drive SOCKET N`: only make N sequential Version calls on SOCKET, one connection, and
    // print the time per call; for profiling a hop (callgrind, perf) with a steady client.
    if let Some(i) = args.iter().position(|a| a == "--drive") {
        let socket = PathBuf::from(args.get(i + 1).expect("--drive SOCKET N"));
        let n: usize = args
            .get(i + 2)
            .and_then(|n| n.parse().ok())
            .expect("--drive SOCKET N");
        return drive(&socket, n);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let bin = guard_binary();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(Plan::new(quick), bin));
}

fn drive(socket: &Path, n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut c = Client::new(socket);
        let start = Instant::now();
        for _ in 0..n {
            call(&mut c, &Call::Version).await;
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
        println!(
            "{n} Version calls on {}: {per:.1} us per call",
            socket.display()
        );
    });
}

/// The release binary, or a clear message and exit 1.
fn guard_binary() -> PathBuf {
    let bin = std::env::var_os("CRI_GUARD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/cri-guard"));
    if !bin.is_file() {
        eprintln!(
            "passthrough bench: {} not found. Build it first with `cargo build --release` \
             (or point CRI_GUARD_BIN at a cri-guard binary).",
            bin.display()
        );
        std::process::exit(1);
    }
    // A stale binary would measure old code: warn if any source file is newer.
    let bin_time = mtime(&bin);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    if let (Some(b), Some(s)) = (bin_time, newest_mtime(&src)) {
        if s > b {
            eprintln!(
                "passthrough bench: WARNING: {} is older than src/; run `cargo build --release`",
                bin.display()
            );
        }
    }
    bin
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            mtime(&p)
        };
        newest = newest.max(t);
    }
    newest
}

// ---------------------------------------------------------------------------------------------
// Processes under test

/// A child process killed (by PID, with its descendants) on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process and its descendants (socat forks one child per connection).
    fn tree(&self) -> Vec<i32> {
        let mut pids = vec![self.pid()];
        pids.extend(descendants(self.pid(), &processes()));
        pids
    }

    fn stop(&mut self) {
        let kids = descendants(self.pid(), &processes());
        terminate(&mut self.child, Duration::from_secs(5));
        if !kids.is_empty() && !kill_and_wait(&kids, Duration::from_secs(5)) {
            eprintln!("{}: children {kids:?} survived SIGKILL", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// socat's stderr goes to `log` (the readiness probe connection makes it log a broken pipe).
fn spawn_socat(listen: &Path, upstream: &Path, log: &Path) -> Proc {
    let logfile = std::fs::File::create(log).expect("socat log file");
    let child = Command::new(support::util::require_bin("socat", "socat"))
        .arg(format!("UNIX-LISTEN:{},fork", listen.display()))
        .arg(format!("UNIX-CONNECT:{}", upstream.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .expect("spawn socat");
    let p = Proc {
        name: "socat",
        child,
    };
    wait_accepting(listen, Duration::from_secs(5)).expect("socat did not start listening");
    p
}

fn guard_command(bin: &Path, listen: &Path, upstream: &Path, log: &Path) -> Command {
    let logfile = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("cri-guard log file");
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(listen)
        .arg("--upstream")
        .arg(upstream)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile);
    cmd
}

fn spawn_guard(bin: &Path, listen: &Path, upstream: &Path, log: &Path) -> Proc {
    let child = guard_command(bin, listen, upstream, log)
        .spawn()
        .expect("spawn cri-guard");
    let p = Proc {
        name: "cri-guard",
        child,
    };
    if wait_accepting(listen, Duration::from_secs(5)).is_none() {
        panic!(
            "cri-guard did not start listening; log:\n{}",
            support::util::log_tail(log, 20)
        );
    }
    p
}

/// Polls `connect` every 50 us; returns how long it took until the socket accepted.
fn wait_accepting(path: &Path, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if StdUnixStream::connect(path).is_ok() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (ns, from schedstat) and context switches summed over all threads of `pids`.
fn cpu_ctx(pids: &[i32]) -> (u64, u64) {
    let (mut ns, mut ctx) = (0u64, 0u64);
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let dir = t.path();
            if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(s) = std::fs::read_to_string(dir.join("status")) {
                for l in s.lines() {
                    if let Some(v) = l
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                    {
                        ctx += v.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    (ns, ctx)
}

/// A snapshot of machine CPU use: busy ticks of all CPUs, and ticks used by this process, its
/// reaped children and its live descendants (the bed, socat, cri-guard).
struct CpuSnap {
    busy: u64,
    ours: u64,
    at: Instant,
}

impl CpuSnap {
    fn take() -> CpuSnap {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
        let busy = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum();
        let me = std::process::id() as i32;
        let mut pids = vec![me];
        pids.extend(descendants(me, &processes()));
        let ours = pids
            .iter()
            .map(|&pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
                // After the comm: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                f.iter().sum::<u64>()
            })
            .sum();
        CpuSnap {
            busy,
            ours,
            at: Instant::now(),
        }
    }

    /// Percent of the machine's CPU used by other processes since `self` (USER_HZ = 100).
    fn others_since(&self) -> f64 {
        let now = CpuSnap::take();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = now.at.duration_since(self.at).as_secs_f64() * 100.0 * cpus;
        let others =
            now.busy.saturating_sub(self.busy) as f64 - now.ours.saturating_sub(self.ours) as f64;
        (100.0 * others / total).max(0.0)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Clients and calls

#[derive(Clone)]
struct Client {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

impl Client {
    fn new(socket: &Path) -> Client {
        let ch = cri::channel(socket);
        Client {
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
        }
    }
}

#[derive(Clone)]
enum Call {
    Version,
    ImageStatus(String),
    ListImages,
    ListContainers,
}

/// One call; returns the encoded size of the response message.
async fn call(c: &mut Client, what: &Call) -> usize {
    let r = match what {
        Call::Version => {
            c.rt.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map(|r| r.into_inner().encoded_len())
        }
        Call::ImageStatus(image) => c
            .img
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().encoded_len()),
        Call::ListImages => c
            .img
            .list_images(cri::ListImagesRequest::default())
            .await
            .map(|r| r.into_inner().encoded_len()),
        Call::ListContainers => {
            c.rt.list_containers(cri::ListContainersRequest { filter: None })
                .await
                .map(|r| r.into_inner().encoded_len())
        }
    };
    r.unwrap_or_else(|e| panic!("call failed: {e}"))
}

/// The three paths under test, with the processes whose CPU is attributed to each hop.
struct Paths {
    clients: [Client; 3],
    sockets: [PathBuf; 3],
    hop_pids: [Vec<i32>; 3],
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct PathStats {
    p50: f64,
    p99: f64,
    /// Hop CPU per call (us) and context switches per call, when there is a hop process.
    cpu_us: Option<f64>,
    ctx: Option<f64>,
}

struct Measured {
    label: String,
    stats: [PathStats; 3],
}

impl Measured {
    fn added(&self, i: usize) -> (f64, f64) {
        (
            self.stats[i].p50 - self.stats[0].p50,
            self.stats[i].p99 - self.stats[0].p99,
        )
    }

    /// cri-guard's added latency over socat's added latency: (p50 ratio, p99 ratio).
    fn ratios(&self) -> (Option<f64>, Option<f64>) {
        let (r50, r99) = self.added(1);
        let (g50, g99) = self.added(2);
        let ratio = |g: f64, r: f64| (r > 1.0).then(|| g / r);
        (ratio(g50, r50), ratio(g99, r99))
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// "n/a" when socat added nothing measurable, "<0" when cri-guard's added latency was negative.
fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "n/a".into(),
        Some(r) if r < 0.0 => "<0".into(),
        Some(r) => format!("{r:.2}x"),
    }
}

fn verdict(r: Option<f64>, limit: f64) -> &'static str {
    match r {
        Some(r) if r <= limit => "PASS",
        Some(_) => "MISS",
        None => "n/a",
    }
}

/// Runs `iters` calls per path in interleaved batches; prints and returns the figures.
async fn measure(
    paths: &mut Paths,
    label: &str,
    what: &Call,
    iters: usize,
    batch: usize,
) -> Measured {
    let machine = CpuSnap::take();
    let mut samples: [Vec<u64>; 3] = std::array::from_fn(|_| Vec::with_capacity(iters));
    let mut cpu = [(0u64, 0u64); 3];
    let mut size = 0;
    let mut done = 0;
    while done < iters {
        let n = batch.min(iters - done);
        for (i, client) in paths.clients.iter_mut().enumerate() {
            let before = cpu_ctx(&paths.hop_pids[i]);
            for _ in 0..n {
                let t = Instant::now();
                size = call(client, what).await;
                samples[i].push(t.elapsed().as_nanos() as u64);
            }
            let after = cpu_ctx(&paths.hop_pids[i]);
            cpu[i].0 += after.0 - before.0;
            cpu[i].1 += after.1 - before.1;
        }
        done += n;
    }
    let stats: [PathStats; 3] = std::array::from_fn(|i| {
        let s = &mut samples[i];
        s.sort_unstable();
        let hop = !paths.hop_pids[i].is_empty();
        PathStats {
            p50: us(percentile(s, 50.0)),
            p99: us(percentile(s, 99.0)),
            cpu_us: hop.then(|| us(cpu[i].0) / iters as f64),
            ctx: hop.then(|| cpu[i].1 as f64 / iters as f64),
        }
    });
    let m = Measured {
        label: label.to_string(),
        stats,
    };
    println!();
    let others = machine.others_since();
    println!(
        "{label}: {iters} calls/path, batches of {batch}, response {size} B; other processes \
         used {others:.0}% CPU"
    );
    println!(
        "  {:<10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "path", "p50 us", "p99 us", "+p50 us", "+p99 us", "hop CPU us", "hop ctx"
    );
    for (i, name) in PATHS.iter().enumerate() {
        let s = &m.stats[i];
        let (a50, a99) = m.added(i);
        let (add50, add99) = if i == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{a50:+.1}"), format!("{a99:+.1}"))
        };
        println!(
            "  {:<10} {:>9.1} {:>9.1} {:>9} {:>9} {:>10} {:>8}",
            name,
            s.p50,
            s.p99,
            add50,
            add99,
            s.cpu_us.map_or("-".into(), |v| format!("{v:.1}")),
            s.ctx.map_or("-".into(), |v| format!("{v:.2}")),
        );
    }
    let (r50, r99) = m.ratios();
    println!(
        "  cri-guard added / socat added: p50 {} [{} <=2x, aim <=1.5x: {}]  p99 {} [{} <=2x]",
        fmt_ratio(r50),
        verdict(r50, 2.0),
        verdict(r50, 1.5),
        fmt_ratio(r99),
        verdict(r99, 2.0),
    );
    m
}

// ---------------------------------------------------------------------------------------------
// Throughput

/// Version calls/s with 4 concurrent clients (4 connections) per path, interleaved in slices;
/// runs on its own 2-worker multi-thread runtime in its own thread.
fn throughput(sockets: [PathBuf; 3], rounds: usize, slice: Duration) -> [f64; 3] {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let mut clients: Vec<Vec<Client>> = sockets
                .iter()
                .map(|s| (0..4).map(|_| Client::new(s)).collect())
                .collect();
            for cs in &mut clients {
                for c in cs.iter_mut() {
                    for _ in 0..50 {
                        call(c, &Call::Version).await;
                    }
                }
            }
            let mut counts = [0u64; 3];
            let mut times = [Duration::ZERO; 3];
            for _ in 0..rounds {
                for (i, cs) in clients.iter().enumerate() {
                    let start = Instant::now();
                    let deadline = start + slice;
                    let tasks: Vec<_> = cs
                        .iter()
                        .cloned()
                        .map(|mut c| {
                            tokio::spawn(async move {
                                let mut n = 0u64;
                                while Instant::now() < deadline {
                                    call(&mut c, &Call::Version).await;
                                    n += 1;
                                }
                                n
                            })
                        })
                        .collect();
                    for t in tasks {
                        counts[i] += t.await.expect("throughput task");
                    }
                    times[i] += start.elapsed();
                }
            }
            std::array::from_fn(|i| counts[i] as f64 / times[i].as_secs_f64())
        })
    })
    .join()
    .expect("throughput thread")
}

// ---------------------------------------------------------------------------------------------
// Containers

/// Creates containers `from..to` (not started) in `sandbox`, 8 at a time, directly on containerd.
async fn create_containers(
    socket: &Path,
    sandbox: &str,
    sandbox_config: &cri::PodSandboxConfig,
    image_id: &str,
    from: usize,
    to: usize,
) -> Duration {
    let start = Instant::now();
    let rt = cri::runtime_client(socket);
    let mut results = futures_util::stream::iter(from..to)
        .map(|i| {
            let mut rt = rt.clone();
            let req = cri::CreateContainerRequest {
                pod_sandbox_id: sandbox.to_string(),
                config: Some(support::container_config(
                    &format!("c{i}"),
                    image_id,
                    &["sleep", "3600"],
                )),
                sandbox_config: Some(sandbox_config.clone()),
            };
            async move { rt.create_container(req).await }
        })
        .buffer_unordered(8);
    while let Some(r) = results.next().await {
        r.unwrap_or_else(|e| panic!("CreateContainer: {e}"));
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// The run

async fn run(plan: Plan, bin: PathBuf) {
    let t0 = Instant::now();
    let machine = CpuSnap::take();
    println!(
        "cri-guard passthrough benchmark{} ({}; {} CPUs; containerd {})",
        if plan.quick { " --quick" } else { "" },
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        containerd_version(),
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = machine.others_since();
    println!(
        "load average {}; other processes used {busy:.0}% CPU in the last second",
        loadavg()
    );
    if busy > 10.0 {
        println!(
            "WARNING: the machine is busy; other work skews the figures (each table shows how \
             much CPU other processes used while it was measured)"
        );
    }

    let bed = TestBed::start().await;
    let csock = bed.containerd_socket();
    let image = bed.push_image("bench", "v1");
    let mut images = cri::image_client(&csock);
    let image_id = images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("PullImage")
        .into_inner()
        .image_ref;
    let sandbox_config = support::sandbox_config(&support::unique_name("bench"), NS);
    let sandbox = cri::runtime_client(&csock)
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let took = create_containers(
        &csock,
        &sandbox,
        &sandbox_config,
        &image_id,
        0,
        plan.small_containers,
    )
    .await;
    println!(
        "setup: bed, image pulled, 1 sandbox, {} containers created in {:.2} s",
        plan.small_containers,
        took.as_secs_f64()
    );

    let dir = bed.dir.path().to_path_buf();
    let socat_sock = dir.join("socat.sock");
    let guard_sock = dir.join("guard.sock");
    let guard_log = dir.join("guard.log");
    let mut socat = spawn_socat(&socat_sock, &csock, &dir.join("socat.log"));
    let mut guard = spawn_guard(&bin, &guard_sock, &csock, &guard_log);
    let sockets = [csock.clone(), socat_sock.clone(), guard_sock.clone()];
    let mut paths = Paths {
        clients: std::array::from_fn(|i| Client::new(&sockets[i])),
        sockets: sockets.clone(),
        hop_pids: [Vec::new(), Vec::new(), vec![guard.pid()]],
    };

    // Warm-up: every call type on every path, then the hop processes are known.
    let cheap = [
        Call::Version,
        Call::ImageStatus(image.clone()),
        Call::ListImages,
        Call::ListContainers,
    ];
    for c in paths.clients.iter_mut() {
        for what in &cheap {
            for _ in 0..plan.warmup {
                call(c, what).await;
            }
        }
    }
    paths.hop_pids[1] = socat.tree();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (idle_rss, _) = rss_kib(guard.pid());
    println!(
        "cri-guard idle RSS after warm-up: {:.1} MiB",
        idle_rss as f64 / 1024.0
    );

    let mut results: Vec<Measured> = Vec::new();
    let mut version_runs: Vec<Measured> = Vec::new();
    for rep in 1..=3 {
        let m = measure(
            &mut paths,
            &format!("Version (run {rep}/3)"),
            &Call::Version,
            plan.cheap_iters,
            plan.cheap_batch,
        )
        .await;
        version_runs.push(m);
    }
    for (label, what) in [
        ("ImageStatus".to_string(), Call::ImageStatus(image.clone())),
        ("ListImages".to_string(), Call::ListImages),
        (
            format!("ListContainers ({} containers)", plan.small_containers),
            Call::ListContainers,
        ),
    ] {
        let m = measure(
            &mut paths,
            &label,
            &what,
            plan.cheap_iters,
            plan.cheap_batch,
        )
        .await;
        results.push(m);
    }

    let snap = CpuSnap::take();
    let tput = throughput(paths.sockets.clone(), plan.tput_rounds, plan.tput_slice);
    println!();
    println!(
        "Throughput, Version, 4 concurrent clients (4 connections), {} x {:.2} s per path, \
         interleaved; other processes used {:.0}% CPU",
        plan.tput_rounds,
        plan.tput_slice.as_secs_f64(),
        snap.others_since()
    );
    for (i, name) in PATHS.iter().enumerate() {
        println!("  {name:<10} {:>9.0} calls/s", tput[i]);
    }
    let tput_ratio = tput[2] / tput[1];
    println!(
        "  cri-guard / socat: {tput_ratio:.2} [{} >=0.9]",
        if tput_ratio >= 0.9 { "PASS" } else { "MISS" }
    );

    let took = create_containers(
        &csock,
        &sandbox,
        &sandbox_config,
        &image_id,
        plan.small_containers,
        plan.large_containers,
    )
    .await;
    println!();
    println!(
        "created {} more containers in {:.2} s ({} in total)",
        plan.large_containers - plan.small_containers,
        took.as_secs_f64(),
        plan.large_containers
    );
    for c in paths.clients.iter_mut() {
        for _ in 0..5 {
            call(c, &Call::ListContainers).await;
        }
    }
    let m = measure(
        &mut paths,
        &format!("ListContainers ({} containers)", plan.large_containers),
        &Call::ListContainers,
        plan.large_iters,
        plan.large_batch,
    )
    .await;
    results.push(m);

    let (end_rss, hwm) = rss_kib(guard.pid());

    // Start to ready: fresh socket path per run, the same upstream.
    let ready_dir = dir.join("ready");
    std::fs::create_dir_all(&ready_dir).expect("ready dir");
    let runs = plan.ready_runs;
    let bin2 = bin.clone();
    let csock2 = csock.clone();
    let mut ready: Vec<Duration> = tokio::task::spawn_blocking(move || {
        (0..runs)
            .map(|i| {
                let sock = ready_dir.join(format!("r{i}.sock"));
                let log = ready_dir.join("ready.log");
                let mut cmd = guard_command(&bin2, &sock, &csock2, &log);
                let start = Instant::now();
                let child = cmd.spawn().expect("spawn cri-guard");
                let mut p = Proc {
                    name: "cri-guard",
                    child,
                };
                let d = wait_accepting(&sock, Duration::from_secs(5)).map(|_| start.elapsed());
                p.stop();
                d.unwrap_or_else(|| {
                    panic!(
                        "cri-guard did not become ready; log:\n{}",
                        support::util::log_tail(&log, 20)
                    )
                })
            })
            .collect()
    })
    .await
    .expect("ready runs");
    ready.sort_unstable();
    let ready_median = ready[ready.len() / 2];
    let ready_max = ready[ready.len() - 1];
    println!();
    println!(
        "Start to ready (spawn -> socket accepts), {runs} runs: median {:.2} ms, min {:.2} ms, max {:.2} ms",
        ready_median.as_secs_f64() * 1e3,
        ready[0].as_secs_f64() * 1e3,
        ready_max.as_secs_f64() * 1e3,
    );

    // Summary.
    println!();
    println!("Summary (targets from design.md section 7; informative, a MISS never fails the run)");
    println!(
        "  {:<34} {:>9} {:>9} {:>10} {:>10}",
        "call", "+p50 sx", "+p99 sx", "p50 <=2x", "p99 <=2x"
    );
    let row = |m: &Measured, p99: Option<f64>| {
        let (r50, _) = m.ratios();
        println!(
            "  {:<34} {:>9} {:>9} {:>10} {:>10}",
            m.label,
            fmt_ratio(r50),
            fmt_ratio(p99),
            format!(
                "{}{}",
                verdict(r50, 2.0),
                if verdict(r50, 1.5) == "PASS" {
                    " (aim)"
                } else {
                    ""
                }
            ),
            verdict(p99, 2.0),
        );
    };
    for m in &version_runs {
        row(m, m.ratios().1);
    }
    let mut p99s: Vec<f64> = version_runs.iter().filter_map(|m| m.ratios().1).collect();
    p99s.sort_by(f64::total_cmp);
    // Median of the runs where socat added something measurable (mean of the middle two if even).
    let version_p99_median = match p99s.len() {
        0 => None,
        n if n % 2 == 0 => Some((p99s[n / 2 - 1] + p99s[n / 2]) / 2.0),
        n => Some(p99s[n / 2]),
    };
    println!(
        "  {:<34} {:>9} {:>9} {:>10} {:>10}",
        "Version p99 ratio, median of 3",
        "",
        fmt_ratio(version_p99_median),
        "",
        verdict(version_p99_median, 2.0)
    );
    for m in &results {
        row(m, m.ratios().1);
    }
    println!(
        "  throughput 4 clients, cri-guard/socat: {tput_ratio:.2} [{} >=0.9]",
        if tput_ratio >= 0.9 { "PASS" } else { "MISS" }
    );
    let ready_ms = ready_median.as_secs_f64() * 1e3;
    println!(
        "  start to ready: median {ready_ms:.2} ms, max {:.2} ms [{} <=10 ms]",
        ready_max.as_secs_f64() * 1e3,
        if ready_ms <= 10.0 { "PASS" } else { "MISS" }
    );
    let idle_mib = idle_rss as f64 / 1024.0;
    println!(
        "  cri-guard RSS: idle {idle_mib:.1} MiB [{} <=15 MiB], after the run {:.1} MiB (peak {:.1} MiB)",
        if idle_mib <= 15.0 { "PASS" } else { "MISS" },
        end_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );

    // Cleanup: clients first (socat's children exit with their connections), then the hops,
    // then the bed (removes the pod through CRI, stops containerd and the registry).
    drop(paths);
    guard.stop();
    socat.stop();
    let others = machine.others_since();
    let bench_time = t0.elapsed();
    let t1 = Instant::now();
    drop(bed);
    println!(
        "  total: {:.1} s (+ {:.1} s cleanup); other processes used {others:.0}% CPU during the run",
        bench_time.as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
}

fn containerd_version() -> String {
    Command::new(support::util::require_bin("containerd", "containerd"))
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
