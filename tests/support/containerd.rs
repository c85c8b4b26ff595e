//! A private containerd (the system's 1.6, or 2.1 from the test tools prefix) whose root, state,
//! sockets, runc root and plugin dirs all live in one temp dir, so several can run side by side
//! and nothing lands under /var or /opt. Which version a bed runs: `CRI_GUARD_CONTAINERD=1.6|2.1`
//! (default 1.6), or `ContainerdVersion` passed explicitly.

use std::ffi::OsString;
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

/// Env var choosing the containerd of beds started without an explicit version: `1.6` or `2.1`.
pub const VERSION_ENV: &str = "CRI_GUARD_CONTAINERD";

/// Which containerd a bed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerdVersion {
    /// The system's containerd 1.6 (Debian bookworm), from PATH.
    V1_6,
    /// containerd 2.1 (Debian sid) from the test tools prefix, with the system's runc.
    V2_1,
}

impl ContainerdVersion {
    /// Both, oldest first.
    pub const ALL: [ContainerdVersion; 2] = [ContainerdVersion::V1_6, ContainerdVersion::V2_1];

    /// The version `CRI_GUARD_CONTAINERD` names (unset or empty: 1.6). Panics on anything else.
    pub fn from_env() -> ContainerdVersion {
        match std::env::var(VERSION_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("1.6") => ContainerdVersion::V1_6,
            Ok("2.1") => ContainerdVersion::V2_1,
            Ok(other) => panic!("{VERSION_ENV}={other:?}: expected 1.6 or 2.1"),
        }
    }

    /// "1.6" or "2.1".
    pub fn label(self) -> &'static str {
        match self {
            ContainerdVersion::V1_6 => "1.6",
            ContainerdVersion::V2_1 => "2.1",
        }
    }

    /// The absolute path of this version's `name` (`containerd`, `containerd-shim-runc-v2`,
    /// `ctr`); panics naming how to install it.
    pub fn binary(self, name: &str) -> PathBuf {
        match self {
            ContainerdVersion::V1_6 => require_bin(name, "containerd"),
            ContainerdVersion::V2_1 => super::tools::containerd21_dir().join(name),
        }
    }

    /// PATH for the daemon: 2.1's directory first, so that it starts its own shim (containerd
    /// looks the shim up on PATH before its own directory) and the system's runc.
    fn daemon_path(self) -> Option<OsString> {
        match self {
            ContainerdVersion::V1_6 => None,
            ContainerdVersion::V2_1 => {
                let mut dirs = vec![super::tools::containerd21_dir()];
                dirs.extend(std::env::split_paths(
                    &std::env::var_os("PATH").unwrap_or_default(),
                ));
                dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
                std::env::join_paths(dirs).ok()
            }
        }
    }
}

pub struct Containerd {
    version: ContainerdVersion,
    dir: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    snapshotter: &'static str,
    shut_down: bool,
}

impl Containerd {
    /// `start_version` with the version `CRI_GUARD_CONTAINERD` names (default 1.6).
    pub fn start(dir: &Path, sandbox_image: &str, registries: &[&str]) -> Containerd {
        Self::start_version(
            ContainerdVersion::from_env(),
            dir,
            sandbox_image,
            registries,
        )
    }

    /// Writes a config for `version` under `dir` and starts containerd; returns once the CRI
    /// `Version` call answers. `sandbox_image` is the pause image; each of `registries`
    /// ("host:port") gets a plain-HTTP `certs.d/<host:port>/hosts.toml`.
    pub fn start_version(
        version: ContainerdVersion,
        dir: &Path,
        sandbox_image: &str,
        registries: &[&str],
    ) -> Containerd {
        require_root();
        version.binary("containerd");
        version.binary("containerd-shim-runc-v2");
        require_bin("runc", "runc");
        let socket = dir.join("c.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "containerd socket path too long for sun_path: {}",
            socket.display()
        );
        for d in [
            "root",
            "state",
            "certs.d",
            "opt",
            "runc",
            "cni/bin",
            "cni/conf",
            "tmp",
            "cdi",
            "verifiers",
        ] {
            std::fs::create_dir_all(dir.join(d)).expect("containerd dirs");
        }
        let overlay = std::fs::read_to_string("/proc/filesystems")
            .map(|f| f.lines().any(|l| l.trim_end().ends_with("\toverlay")))
            .unwrap_or(false);
        let snapshotter = if overlay { "overlayfs" } else { "native" };
        let config = dir.join("containerd.toml");
        let text = match version {
            ContainerdVersion::V1_6 => config_v16(dir, &socket, sandbox_image, snapshotter),
            ContainerdVersion::V2_1 => config_v21(dir, &socket, sandbox_image, snapshotter),
        };
        std::fs::write(&config, text).unwrap();
        let mut c = Containerd {
            version,
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
        let mut cmd = Command::new(self.version.binary("containerd"));
        if let Some(path) = self.version.daemon_path() {
            cmd.env("PATH", path);
        }
        let child = cmd
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

    /// Which containerd this is.
    pub fn version(&self) -> ContainerdVersion {
        self.version
    }

    /// This version's `ctr`.
    pub fn ctr_path(&self) -> PathBuf {
        self.version.binary("ctr")
    }

    /// The config file containerd was started with.
    pub fn config_path(&self) -> &Path {
        &self.config
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
            // (hard-coded in containerd 1.6 and 2.1, not configurable).
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

/// containerd 1.6's config (version 2): CRI settings in the `io.containerd.grpc.v1.cri` plugin.
fn config_v16(dir: &Path, socket: &Path, sandbox_image: &str, snapshotter: &str) -> String {
    let d = |p: &str| path_str(&dir.join(p)).to_string();
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
        sock = path_str(socket),
        opt = d("opt"),
        runc = d("runc"),
        cni_bin = d("cni/bin"),
        cni_conf = d("cni/conf"),
        certs = d("certs.d"),
    )
}

/// containerd 2.1's config (version 3, what 2.x writes with `config default`): the CRI is split
/// into the `io.containerd.cri.v1.images` plugin (snapshotter, registry, the sandbox image as
/// `pinned_images.sandbox`), `io.containerd.cri.v1.runtime` (runtimes, CNI, OOM, netns) and
/// `io.containerd.grpc.v1.cri` (the server and its stream server). Every default path that would
/// land outside the bed is moved into it: NRI's socket under /var/run/nri (plugin disabled),
/// network namespaces under /var/run/netns (`netns_mounts_under_state_dir`), CDI spec dirs,
/// the image-verifier bin dir and the temp dir.
fn config_v21(dir: &Path, socket: &Path, sandbox_image: &str, snapshotter: &str) -> String {
    let d = |p: &str| path_str(&dir.join(p)).to_string();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
temp = "{tmp}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp", "io.containerd.nri.v1.nri"]

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

[plugins."io.containerd.image-verifier.v1.bindir"]
  bin_dir = "{verifiers}"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "{snapshotter}"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_selinux = false
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = ["{cdi}"]
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        Root = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
"#,
        root = d("root"),
        state = d("state"),
        tmp = d("tmp"),
        sock = path_str(socket),
        opt = d("opt"),
        verifiers = d("verifiers"),
        runc = d("runc"),
        cdi = d("cdi"),
        cni_bin = d("cni/bin"),
        cni_conf = d("cni/conf"),
        certs = d("certs.d"),
    )
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
