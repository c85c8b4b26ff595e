//! A private containerd 1.6 (CRI v1) whose root, state, sockets, runc root and plugin dirs all live
//! in one temp dir, so several can run side by side and nothing lands under /var or /opt.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pod::try_remove_all_pods;
use super::util::{
    cgroups_of, descendants, kill_and_wait, log_tail, path_str, processes, remove_cgroups,
    require_bin, require_root, sha256_hex, terminate, try_block_on, unmount_all_under,
};

/// Namespace the CRI plugin uses.
pub const K8S_NS: &str = "k8s.io";

pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    snapshotter: &'static str,
    shut_down: bool,
}

impl Containerd {
    /// Writes a config under `dir` and starts containerd; returns once the CRI `Version` call
    /// answers. `sandbox_image` is the pause image; each of `registries` ("host:port") gets a
    /// plain-HTTP `certs.d/<host:port>/hosts.toml`.
    pub fn start(dir: &Path, sandbox_image: &str, registries: &[&str]) -> Containerd {
        require_root();
        require_bin("containerd", "containerd");
        require_bin("containerd-shim-runc-v2", "containerd");
        require_bin("runc", "runc");
        let socket = dir.join("c.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "containerd socket path too long for sun_path: {}",
            socket.display()
        );
        for d in [
            "root", "state", "certs.d", "opt", "runc", "cni/bin", "cni/conf",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd dirs");
        }
        let overlay = std::fs::read_to_string("/proc/filesystems")
            .map(|f| f.lines().any(|l| l.trim_end().ends_with("\toverlay")))
            .unwrap_or(false);
        let snapshotter = if overlay { "overlayfs" } else { "native" };
        let d = |p: &str| path_str(&dir.join(p)).to_string();
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
                root = d("root"),
                state = d("state"),
                sock = path_str(&socket),
                opt = d("opt"),
                runc = d("runc"),
                cni_bin = d("cni/bin"),
                cni_conf = d("cni/conf"),
                certs = d("certs.d"),
            ),
        )
        .unwrap();
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            config,
            child: None,
            snapshotter,
            shut_down: false,
        };
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        for r in registries {
            c.trust_registry(r);
        }
        if let Err(e) = c.spawn() {
            panic!("{e}");
        }
        c
    }

    /// Writes `certs.d/<addr>/hosts.toml` so pulls from `addr` ("host:port") use plain HTTP.
    /// containerd reads the hosts dir on every pull: no restart needed.
    pub fn trust_registry(&self, addr: &str) {
        let d = self.dir.join("certs.d").join(addr);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"http://{addr}\"\n\n[host.\"http://{addr}\"]\n  \
                 capabilities = [\"pull\", \"resolve\", \"push\"]\n"
            ),
        )
        .unwrap();
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(require_bin("containerd", "containerd"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .map_err(|e| format!("spawn containerd: {e}"))?;
        self.child = Some(child);
        match self.wait_ready(Duration::from_secs(30)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let msg = format!(
                    "containerd did not start: {e}\n--- containerd log tail ---\n{}",
                    self.log_tail(40)
                );
                if let Some(mut child) = self.child.take() {
                    terminate(&mut child, Duration::from_secs(5));
                }
                Err(msg)
            }
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("socket not accepting");
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                let sock = self.socket.clone();
                let r = try_block_on(|| async move {
                    let mut client = cri_guard::cri::runtime_client(&sock);
                    let call = client.version(cri_guard::cri::VersionRequest::default());
                    tokio::time::timeout(Duration::from_secs(2), call).await
                });
                match r {
                    Ok(Ok(Ok(_))) => return Ok(()),
                    Ok(Ok(Err(status))) => last = format!("CRI Version: {status}"),
                    Ok(Err(_)) => last = "CRI Version timed out".into(),
                    Err(panic) => last = format!("CRI Version client panicked: {panic}"),
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("containerd exited ({status}); last: {last}"));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {timeout:?}; last: {last}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The CRI (and containerd gRPC) unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory with one `host:port/hosts.toml` per trusted registry (for `ctr --hosts-dir`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }

    pub fn snapshotter(&self) -> &'static str {
        self.snapshotter
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// The containerd daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the daemon only (SIGTERM, SIGKILL after 10 s). Shims and containers keep running,
    /// as in a real containerd restart. For fault tests.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// SIGKILLs the daemon (a crash), leaving its socket file behind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again with the same config, root and state; returns once the socket
    /// accepts and CRI `Version` answers. Panics (with the log tail) if it does not come up.
    pub fn start_again(&mut self) {
        if self.is_running() {
            return;
        }
        if let Err(e) = self.spawn() {
            panic!("{e}");
        }
    }

    /// Pids of this containerd's `containerd-shim-runc-v2` processes (found by their
    /// `-address <socket>` argument; they outlive the daemon and are reparented).
    pub fn shim_pids(&self) -> Vec<i32> {
        let sock = path_str(&self.socket);
        processes()
            .into_iter()
            .filter(|p| {
                p.cmdline
                    .first()
                    .is_some_and(|a| a.contains("containerd-shim"))
                    && p.cmdline
                        .windows(2)
                        .any(|w| w[0] == "-address" && w[1] == sock)
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Full cleanup, idempotent, never panics: remove all pods through CRI (restarting containerd
    /// first if it was stopped while shims still run), stop containerd, kill surviving shims and
    /// their containers, remove their sockets under /run/containerd/s, unmount everything under
    /// the dir.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        if !self.is_running() && !self.shim_pids().is_empty() {
            let _ = self.spawn();
        }
        if self.is_running() {
            let sock = self.socket.clone();
            let r = try_block_on(|| async move {
                tokio::time::timeout(Duration::from_secs(60), try_remove_all_pods(&sock)).await
            });
            match r {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("test bed: removing pods failed: {e}"),
                Ok(Err(_)) => eprintln!("test bed: removing pods timed out"),
                Err(panic) => eprintln!("test bed: removing pods panicked: {panic}"),
            }
        }
        self.stop();
        let procs = processes();
        let shims: Vec<(i32, Vec<String>)> = self
            .shim_pids()
            .into_iter()
            .map(|pid| {
                (
                    pid,
                    procs
                        .iter()
                        .find(|p| p.pid == pid)
                        .map(|p| p.cmdline.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        if !shims.is_empty() {
            let mut victims = Vec::new();
            for (pid, _) in &shims {
                victims.extend(descendants(*pid, &procs));
                victims.push(*pid);
            }
            // Containers killed here never get `runc delete`: remember their cgroups to rmdir.
            let cgroups: Vec<String> = victims
                .iter()
                .filter(|v| !shims.iter().any(|(s, _)| s == *v))
                .flat_map(|v| cgroups_of(*v))
                .collect();
            if !kill_and_wait(&victims, Duration::from_secs(10)) {
                eprintln!("test bed: some shim processes survived SIGKILL: {victims:?}");
            }
            remove_cgroups(&cgroups);
            // A killed shim leaves its socket: /run/containerd/s/sha256(<address>/<ns>/<id>)
            // (hard-coded in containerd 1.6, not configurable).
            for (_, cmdline) in &shims {
                let arg = |name: &str| {
                    cmdline
                        .windows(2)
                        .find(|w| w[0] == name)
                        .map(|w| w[1].clone())
                };
                if let (Some(ns), Some(id)) = (arg("-namespace"), arg("-id")) {
                    let key = format!("{}/{ns}/{id}", path_str(&self.socket));
                    if let Some(hash) = sha256_hex(key.as_bytes()) {
                        let _ = std::fs::remove_file(format!("/run/containerd/s/{hash}"));
                    }
                }
            }
        }
        unmount_all_under(&self.dir);
        // Shims put their sockets in /run/containerd/s (= /var/run/...), creating the dirs, and runc
        // creates /sys/fs/cgroup/*/k8s.io. When the last bed of this process is gone, remove
        // whatever is left there empty.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        *live = live.saturating_sub(1);
        if *live == 0 {
            remove_empty_dirs(Path::new("/run/containerd"));
            // runc's parent cgroup for CRI containers without a cgroup parent (only if empty).
            remove_cgroups(&[format!("/{K8S_NS}")]);
        }
    }
}

/// Containerd instances of this process not yet shut down (guards the /run/containerd cleanup).
static LIVE: Mutex<usize> = Mutex::new(0);

/// Removes `dir` and its subdirectories bottom-up, as far as they are empty. Never removes a file.
fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}
