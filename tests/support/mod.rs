//! Integration-test support: a real test bed (local `docker-registry` + private containerd 1.6 with
//! the CRI plugin) per test, tiny busybox images, and CRI pod helpers.
//!
//! Every `TestBed` lives in its own short temp dir under /tmp (own ports, sockets, root, state),
//! so tests run in parallel in one process. Dropping it removes all pods through CRI, stops
//! containerd, kills leftover shims, unmounts everything under the dir and removes it.
//! Needs root and the Debian packages containerd, runc, docker-registry, umoci, busybox-static.
//! See docs/testbed.md.

#![allow(dead_code, unused_imports)]

pub mod containerd;
pub mod image;
pub mod pod;
pub mod registry;
pub mod sign;
pub mod util;

use std::path::PathBuf;
use std::process::Command;

pub use containerd::Containerd;
pub use pod::{
    PodRun, container_config, exec_sync, remove_all_pods, run_pod, sandbox_config,
    try_remove_all_pods, try_run_pod, try_run_pod_cmd, unique_name,
};
pub use registry::Registry;

/// Name and tag of the pause image every bed pushes to its registry and uses as `sandbox_image`.
pub const PAUSE_IMAGE: &str = "pause:test";

pub struct TestBed {
    pub dir: tempfile::TempDir,
    pub registry: Registry,
    pub containerd: Containerd,
    /// "127.0.0.1:PORT/pause:test".
    pub pause_image: String,
}

/// Pids of a bed's processes (for leak checks).
#[derive(Clone, Debug)]
pub struct BedPids {
    pub containerd: Option<u32>,
    pub registry: Option<u32>,
    pub shims: Vec<i32>,
}

impl TestBed {
    /// Starts registry and containerd in a fresh temp dir, pushes the pause image; ready on return.
    pub async fn start() -> TestBed {
        match tokio::task::spawn_blocking(TestBed::start_blocking).await {
            Ok(bed) => bed,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// `start` for sync code.
    pub fn start_blocking() -> TestBed {
        util::require_root();
        let dir = util::short_tempdir("cg");
        let registry = Registry::start(&dir.path().join("reg"));
        let pause_image = format!("{}/{PAUSE_IMAGE}", registry.addr());
        // Build/push the pause image while containerd starts (it only pulls on RunPodSandbox).
        let containerd = std::thread::scope(|s| {
            let push = s.spawn(|| {
                let (name, tag) = PAUSE_IMAGE.split_once(':').unwrap();
                registry.push_pause(name, tag)
            });
            let containerd = Containerd::start(dir.path(), &pause_image, &[registry.addr()]);
            push.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            containerd
        });
        TestBed {
            dir,
            registry,
            containerd,
            pause_image,
        }
    }

    /// Pushes the busybox image as `name:tag`; returns "127.0.0.1:PORT/name:tag".
    pub fn push_image(&self, name: &str, tag: &str) -> String {
        self.registry.push_image(name, tag)
    }

    /// Pushes a busybox image whose config carries `variant` (env `CRI_GUARD_VARIANT` and a label),
    /// so its digest differs from the plain image and from other variants.
    pub fn push_image_variant(&self, name: &str, tag: &str, variant: &str) -> String {
        self.registry.push_image_variant(name, tag, variant)
    }

    /// The manifest digest `name:tag` has in this bed's registry now.
    pub fn image_digest(&self, name: &str, tag: &str) -> String {
        self.registry
            .manifest_digest(name, tag)
            .unwrap_or_else(|| panic!("{name}:{tag} not in registry {}", self.registry.addr()))
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd.socket().to_path_buf()
    }

    /// Runs `ctr --address SOCK -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(util::require_bin("ctr", "containerd"))
            .arg("--address")
            .arg(self.containerd.socket())
            .args(["-n", containerd::K8S_NS])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Pulls `reference` with ctr, bypassing CRI (and any proxy): an image that "reached the node
    /// without us". Panics on failure.
    pub fn ctr_pull(&self, reference: &str) {
        let hosts = self.containerd.certs_dir();
        let out = self.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            util::path_str(&hosts),
            reference,
        ]);
        assert!(
            out.status.success(),
            "ctr images pull {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn pids(&self) -> BedPids {
        BedPids {
            containerd: self.containerd.pid(),
            registry: self.registry.pid(),
            shims: self.containerd.shim_pids(),
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // Fields drop in declaration order (the dir first): shut down explicitly, in order.
        self.containerd.shutdown();
        self.registry.shutdown();
        util::unmount_all_under(self.dir.path());
        if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            eprintln!("test bed: cannot remove {}: {e}", self.dir.path().display());
        }
    }
}
