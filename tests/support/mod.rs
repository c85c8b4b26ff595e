//! Integration-test support: a real test bed per test (a local `docker-registry` 2.8, optionally
//! a registry with the OCI referrers API, and a private containerd 1.6 or 2.1 with the CRI
//! plugin), tiny busybox images, CRI pod helpers, and real cosign 3 and crane.
//!
//! Every `TestBed` lives in its own short temp dir under /tmp (own ports, sockets, root, state),
//! so tests run in parallel in one process. Dropping it removes all pods through CRI, stops
//! containerd, kills leftover shims, unmounts everything under the dir and removes it.
//! Needs root, the Debian packages containerd, runc, docker-registry, umoci, busybox-static, and
//! for containerd 2.1, cosign, crane and the referrers registry the test tools that
//! `scripts/install-deps.sh` puts under `$CRI_GUARD_TESTTOOLS` (default /opt/cri-guard-testtools).
//! `CRI_GUARD_CONTAINERD=1.6|2.1` picks the containerd of beds that don't name one.
//! See docs/testbed.md.

#![allow(dead_code, unused_imports)]

pub mod containerd;
pub mod cosign;
pub mod image;
pub mod pod;
pub mod registry;
pub mod sign;
pub mod tools;
pub mod util;

use std::path::PathBuf;
use std::process::Command;

pub use containerd::{Containerd, ContainerdVersion};
pub use cosign::{Cosign, Crane, Format};
pub use pod::{
    PodRun, container_config, exec_sync, remove_all_pods, run_pod, sandbox_config,
    try_remove_all_pods, try_run_pod, try_run_pod_cmd, unique_name,
};
pub use registry::{Registry, RegistryKind};

/// Name and tag of the pause image every bed pushes to its registry and uses as `sandbox_image`.
pub const PAUSE_IMAGE: &str = "pause:test";

/// What a bed runs. `BedOptions::default()`: the containerd `CRI_GUARD_CONTAINERD` names (1.6
/// when unset) and docker-registry 2.8 only.
#[derive(Clone, Copy, Debug)]
pub struct BedOptions {
    pub containerd: ContainerdVersion,
    /// Also start a registry with the referrers API (`TestBed::referrers`).
    pub referrers_registry: bool,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            containerd: ContainerdVersion::from_env(),
            referrers_registry: false,
        }
    }
}

impl BedOptions {
    /// Runs `version` whatever `CRI_GUARD_CONTAINERD` says.
    pub fn containerd(mut self, version: ContainerdVersion) -> Self {
        self.containerd = version;
        self
    }

    /// Also starts the registry with the referrers API.
    pub fn with_referrers_registry(mut self) -> Self {
        self.referrers_registry = true;
        self
    }
}

pub struct TestBed {
    pub dir: tempfile::TempDir,
    /// docker-registry 2.8: the pause image lives here; no referrers API.
    pub registry: Registry,
    /// The registry with the referrers API, if `BedOptions::referrers_registry`.
    pub referrers: Option<Registry>,
    pub containerd: Containerd,
    /// "127.0.0.1:PORT/pause:test".
    pub pause_image: String,
}

/// For a test that can't pass on one containerd version for a product reason another slice
/// owns: true (after printing a notice naming the reason) when the beds of this run
/// (`CRI_GUARD_CONTAINERD`) use `version`; the test then returns early.
pub fn skip_on_containerd(version: ContainerdVersion, reason: &str) -> bool {
    let skip = ContainerdVersion::from_env() == version;
    if skip {
        eprintln!("SKIPPED on containerd {}: {reason}", version.label());
    }
    skip
}

/// Pids of a bed's processes (for leak checks).
#[derive(Clone, Debug)]
pub struct BedPids {
    pub containerd: Option<u32>,
    pub registry: Option<u32>,
    pub referrers: Option<u32>,
    pub shims: Vec<i32>,
}

impl TestBed {
    /// Starts registry and containerd (`BedOptions::default()`) in a fresh temp dir, pushes the
    /// pause image; ready on return.
    pub async fn start() -> TestBed {
        TestBed::start_with(BedOptions::default()).await
    }

    /// `start` with explicit options, e.g.
    /// `TestBed::start_with(BedOptions::default().containerd(ContainerdVersion::V2_1).with_referrers_registry())`.
    pub async fn start_with(options: BedOptions) -> TestBed {
        match tokio::task::spawn_blocking(move || TestBed::start_with_blocking(options)).await {
            Ok(bed) => bed,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// `start` for sync code.
    pub fn start_blocking() -> TestBed {
        TestBed::start_with_blocking(BedOptions::default())
    }

    /// `start_with` for sync code.
    pub fn start_with_blocking(options: BedOptions) -> TestBed {
        util::require_root();
        let dir = util::short_tempdir("cg");
        let registry = Registry::start(&dir.path().join("reg"));
        let referrers = options
            .referrers_registry
            .then(|| Registry::start_referrers(&dir.path().join("refreg")));
        let pause_image = format!("{}/{PAUSE_IMAGE}", registry.addr());
        let mut trusted = vec![registry.addr()];
        trusted.extend(referrers.as_ref().map(Registry::addr));
        // Build/push the pause image while containerd starts (it only pulls on RunPodSandbox).
        let containerd = std::thread::scope(|s| {
            let push = s.spawn(|| {
                let (name, tag) = PAUSE_IMAGE.split_once(':').unwrap();
                registry.push_pause(name, tag)
            });
            let containerd =
                Containerd::start_version(options.containerd, dir.path(), &pause_image, &trusted);
            push.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            containerd
        });
        TestBed {
            dir,
            registry,
            referrers,
            containerd,
            pause_image,
        }
    }

    /// Which containerd this bed runs.
    pub fn containerd_version(&self) -> ContainerdVersion {
        self.containerd.version()
    }

    /// The bed's registry of `kind`. Panics for `Referrers` unless the bed was started
    /// `with_referrers_registry()`.
    pub fn registry_of(&self, kind: RegistryKind) -> &Registry {
        match kind {
            RegistryKind::Distribution => &self.registry,
            RegistryKind::Referrers => self.referrers.as_ref().unwrap_or_else(|| {
                panic!("this bed has no referrers registry: start it with BedOptions::with_referrers_registry()")
            }),
        }
    }

    /// Pushes the busybox image `variant` (None: plain) as `name:tag` to the registry of `kind`;
    /// returns (reference "127.0.0.1:PORT/name:tag", manifest digest).
    pub fn push_to(
        &self,
        kind: RegistryKind,
        name: &str,
        tag: &str,
        variant: Option<&str>,
    ) -> (String, String) {
        self.registry_of(kind).push(name, tag, variant)
    }

    /// A fresh cosign key pair (and cosign environment) in `<bed>/cosign-<name>`.
    pub fn cosign(&self, name: &str) -> Cosign {
        Cosign::generate(&self.dir.path().join(format!("cosign-{name}")))
    }

    /// crane with its HOME in `<bed>/crane`.
    pub fn crane(&self) -> Crane {
        Crane::new(&self.dir.path().join("crane"))
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

    /// Runs `ctr --address SOCK -n k8s.io ARGS` (the bed's containerd version's ctr).
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.containerd.ctr_path())
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

    /// `ctr image import --base-name BASE ARCHIVE` (an image that "reached the node without us"),
    /// then waits (up to 10 s) until the CRI lists every imported `BASE:<tag>`; returns those
    /// names. containerd 2.1's ctr imports through the transfer service and returns before the
    /// CRI plugin's image store has caught up with the import events (1.6: already there).
    pub fn ctr_import(&self, archive: &std::path::Path, base_name: &str) -> Vec<String> {
        let out = self.ctr(&[
            "image",
            "import",
            "--base-name",
            base_name,
            util::path_str(archive),
        ]);
        assert!(out.status.success(), "ctr image import: {out:?}");
        let list = self.ctr(&["image", "ls", "-q"]);
        let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|l| l.starts_with(&format!("{base_name}:")))
            .map(str::to_string)
            .collect();
        assert!(
            !names.is_empty(),
            "ctr image import made no {base_name}:<tag>"
        );
        let sock = self.containerd_socket();
        let seen = util::poll_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(5),
            || {
                names.iter().all(|n| {
                    let (sock, n) = (sock.clone(), n.clone());
                    util::block_on(move || async move {
                        cri_guard::cri::image_client(&sock)
                            .image_status(cri_guard::cri::ImageStatusRequest {
                                image: Some(cri_guard::cri::ImageSpec {
                                    image: n,
                                    ..Default::default()
                                }),
                                verbose: false,
                            })
                            .await
                            .is_ok_and(|r| r.into_inner().image.is_some())
                    })
                })
            },
        );
        assert!(
            seen,
            "the CRI does not list {names:?} 10 s after ctr image import"
        );
        names
    }

    pub fn pids(&self) -> BedPids {
        BedPids {
            containerd: self.containerd.pid(),
            registry: self.registry.pid(),
            referrers: self.referrers.as_ref().and_then(Registry::pid),
            shims: self.containerd.shim_pids(),
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // Fields drop in declaration order (the dir first): shut down explicitly, in order.
        self.containerd.shutdown();
        self.registry.shutdown();
        if let Some(r) = self.referrers.as_mut() {
            r.shutdown();
        }
        util::unmount_all_under(self.dir.path());
        if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            eprintln!("test bed: cannot remove {}: {e}", self.dir.path().display());
        }
    }
}
