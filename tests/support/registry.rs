//! A local registry on 127.0.0.1:<free port>, plain HTTP, of one of two kinds:
//! - `docker-registry` (distribution 2.8, the system package): filesystem storage, optionally
//!   htpasswd basic auth; no referrers API (`GET /v2/<name>/referrers/<digest>` is a 404), so
//!   cosign 3 keeps the referrers tag schema's fallback tag `sha256-<hex>` there;
//! - `refreg` (go-containerregistry's registry, `tools/refreg`): the OCI 1.1 referrers API on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::image;
use super::util::{free_port, http, log_tail, path_str, require_bin, run, terminate};

/// Which registry program serves a `Registry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistryKind {
    /// docker-registry 2.8 (distribution): no referrers API.
    Distribution,
    /// go-containerregistry's registry with the OCI 1.1 referrers API (`tools/refreg`).
    Referrers,
}

impl RegistryKind {
    /// Both kinds.
    pub const ALL: [RegistryKind; 2] = [RegistryKind::Distribution, RegistryKind::Referrers];

    /// Whether `GET /v2/<name>/referrers/<digest>` is served.
    pub fn has_referrers_api(self) -> bool {
        self == RegistryKind::Referrers
    }
}

pub struct Registry {
    kind: RegistryKind,
    child: Option<Child>,
    dir: PathBuf,
    addr: String,
    auth: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry storing under `dir` (created if missing) and waits until `GET /v2/`
    /// answers.
    pub fn start(dir: &Path) -> Registry {
        Self::spawn(dir, None)
    }

    /// Starts a registry of `kind` storing under `dir`; ready on return.
    pub fn start_kind(kind: RegistryKind, dir: &Path) -> Registry {
        match kind {
            RegistryKind::Distribution => Self::spawn(dir, None),
            RegistryKind::Referrers => Self::spawn_refreg(dir),
        }
    }

    /// Starts `refreg` (referrers API on) storing blobs under `dir`; ready on return. It binds
    /// port 0 and reports the port it got in a file, so there is no race for a free port.
    pub fn start_referrers(dir: &Path) -> Registry {
        Self::spawn_refreg(dir)
    }

    fn spawn_refreg(dir: &Path) -> Registry {
        let bin = super::tools::refreg();
        std::fs::create_dir_all(dir).expect("registry dir");
        let addr_file = dir.join("addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = dir.join("registry.log");
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .arg("-address=127.0.0.1:0")
            .arg(format!("-addr-file={}", path_str(&addr_file)))
            .arg(format!("-blobs={}", path_str(&dir.join("blobs"))))
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut reg = Registry {
            kind: RegistryKind::Referrers,
            child: Some(child),
            dir: dir.to_path_buf(),
            addr: String::new(),
            auth: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reg.addr.is_empty() {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                reg.addr = text.trim().to_string();
            } else if Instant::now() > deadline || !reg.is_running() {
                reg.shutdown();
                panic!(
                    "refreg did not report its address\n--- log tail ---\n{}",
                    log_tail(&log, 30)
                );
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Err(e) = reg.wait_ready(Duration::from_secs(20)) {
            reg.shutdown();
            panic!(
                "refreg did not start: {e}\n--- log tail ---\n{}",
                log_tail(&log, 30)
            );
        }
        reg
    }

    /// Same, but every request needs basic auth `user:password` (htpasswd file with a bcrypt
    /// hash, made with perl's `crypt`, i.e. libxcrypt, so no extra package is needed).
    pub fn with_htpasswd(dir: &Path, user: &str, password: &str) -> Registry {
        Self::spawn(dir, Some((user.to_string(), password.to_string())))
    }

    fn spawn(dir: &Path, auth: Option<(String, String)>) -> Registry {
        let bin = require_bin("docker-registry", "docker-registry");
        std::fs::create_dir_all(dir.join("data")).expect("registry dir");
        let mut auth_yaml = String::new();
        if let Some((user, password)) = &auth {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", bcrypt(password))).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: cri-guard-test\n    path: {}\n",
                path_str(&htpasswd)
            );
        }
        let log = dir.join("registry.log");
        let mut last_err = String::new();
        // The port is free when picked but could be taken before the registry binds it (another
        // bed in parallel): retry with a new port.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
                     http:\n  addr: {addr}\n{auth_yaml}",
                    path_str(&dir.join("data"))
                ),
            )
            .unwrap();
            let logfile = std::fs::File::create(&log).unwrap();
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(logfile.try_clone().unwrap())
                .stderr(logfile)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut reg = Registry {
                kind: RegistryKind::Distribution,
                child: Some(child),
                dir: dir.to_path_buf(),
                addr,
                auth: auth.clone(),
            };
            match reg.wait_ready(Duration::from_secs(20)) {
                Ok(()) => return reg,
                Err(e) => {
                    last_err = format!("{e}\n--- registry log tail ---\n{}", log_tail(&log, 30));
                    reg.shutdown();
                    if !last_err.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not start: {last_err}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http(&self.addr, "GET", "/v2/", &[], b"") {
                // 401 is the expected answer of an htpasswd registry without credentials.
                if r.status == 200 || (self.auth.is_some() && r.status == 401) {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("{:?} registry exited early ({status})", self.kind));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "GET http://{}/v2/ did not answer within {timeout:?}",
                    self.addr
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Which program serves this registry.
    pub fn kind(&self) -> RegistryKind {
        self.kind
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Basic-auth user and password of an htpasswd registry.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.join("registry.log"), lines)
    }

    /// Pushes the busybox image as `name:tag`; returns "127.0.0.1:PORT/name:tag".
    pub fn push_image(&self, name: &str, tag: &str) -> String {
        self.push(name, tag, None).0
    }

    /// Pushes the busybox image with env `CRI_GUARD_VARIANT=<variant>` (and a label), so its config
    /// and manifest digests differ from other variants; returns "127.0.0.1:PORT/name:tag".
    pub fn push_image_variant(&self, name: &str, tag: &str, variant: &str) -> String {
        self.push(name, tag, Some(variant)).0
    }

    /// Pushes (variant or plain) and returns (reference, manifest digest "sha256:...").
    pub fn push(&self, name: &str, tag: &str, variant: Option<&str>) -> (String, String) {
        image::push(
            &self.addr,
            self.credentials(),
            &image::layout_tag(variant),
            name,
            tag,
        )
    }

    /// Pushes the bed's pause image (`tail -f /dev/null`) as `name:tag`.
    pub fn push_pause(&self, name: &str, tag: &str) -> String {
        image::layout();
        image::push(&self.addr, self.credentials(), "pause", name, tag).0
    }

    /// The manifest digest that `name:reference` currently resolves to, if any.
    pub fn manifest_digest(&self, name: &str, reference: &str) -> Option<String> {
        let authz = self.credentials().map(|(u, p)| {
            format!(
                "Basic {}",
                super::util::base64(format!("{u}:{p}").as_bytes())
            )
        });
        let mut hdrs = vec![(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )];
        if let Some(a) = &authz {
            hdrs.push(("Authorization", a));
        }
        let r = http(
            &self.addr,
            "HEAD",
            &format!("/v2/{name}/manifests/{reference}"),
            &hdrs,
            b"",
        )
        .ok()?;
        (r.status == 200)
            .then(|| r.header("Docker-Content-Digest").map(str::to_string))
            .flatten()
    }

    fn auth_header(&self) -> Option<String> {
        self.credentials().map(|(u, p)| {
            format!(
                "Basic {}",
                super::util::base64(format!("{u}:{p}").as_bytes())
            )
        })
    }

    /// GET `path` (e.g. "/v2/<name>/tags/list") with this registry's credentials and `accept`.
    pub fn get(&self, path: &str, accept: &str) -> super::util::HttpResponse {
        let authz = self.auth_header();
        let mut hdrs = vec![("Accept", accept)];
        if let Some(a) = &authz {
            hdrs.push(("Authorization", a));
        }
        http(&self.addr, "GET", path, &hdrs, b"")
            .unwrap_or_else(|e| panic!("registry {}: GET {path}: {e}", self.addr))
    }

    /// The tags of `name` (empty if the repository does not exist).
    pub fn tags(&self, name: &str) -> Vec<String> {
        let r = self.get(&format!("/v2/{name}/tags/list"), "application/json");
        if r.status != 200 {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("tags of {name}: {e}: {}", r.text()));
        let mut tags: Vec<String> = v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect();
        tags.sort();
        tags
    }

    /// The manifest (or index) `name:reference` as (media type, exact bytes), if present.
    pub fn manifest(&self, name: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let r = self.get(&format!("/v2/{name}/manifests/{reference}"), MANIFEST_TYPES);
        (r.status == 200).then(|| {
            (
                r.header("Content-Type").unwrap_or_default().to_string(),
                r.body,
            )
        })
    }

    /// `manifest` parsed as JSON.
    pub fn manifest_json(&self, name: &str, reference: &str) -> Option<serde_json::Value> {
        self.manifest(name, reference).map(|(_, b)| {
            serde_json::from_slice(&b)
                .unwrap_or_else(|e| panic!("manifest {name}:{reference} is not JSON: {e}"))
        })
    }

    /// A blob's bytes, if present.
    pub fn blob(&self, name: &str, digest: &str) -> Option<Vec<u8>> {
        let r = self.get(&format!("/v2/{name}/blobs/{digest}"), "*/*");
        (r.status == 200).then_some(r.body)
    }

    /// `GET /v2/<name>/referrers/<digest>`: the OCI index the referrers API answers, or the HTTP
    /// status when it answers anything but 200 (docker-registry 2.8: 404).
    pub fn referrers(&self, name: &str, digest: &str) -> Result<serde_json::Value, u16> {
        let r = self.get(
            &format!("/v2/{name}/referrers/{digest}"),
            "application/vnd.oci.image.index.v1+json",
        );
        if r.status != 200 {
            return Err(r.status);
        }
        Ok(serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("referrers of {name}@{digest}: {e}: {}", r.text())))
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 5 s). Idempotent, never panics.
    pub fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(5));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accept header for manifests: OCI and Docker manifests and indexes.
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// A bcrypt hash of `password` via perl's crypt(3) (Debian's libxcrypt implements `$2b$`).
fn bcrypt(password: &str) -> String {
    const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        ^ (std::process::id() as u128) << 64;
    // The last salt character must encode only 2 significant bits: pick from ".Oeu".
    let mut salt: String = (0..21)
        .map(|i| ALPHABET[((seed >> (i * 5)) % 64) as usize] as char)
        .collect();
    salt.push('.');
    let perl = require_bin("perl", "perl-base");
    let out = run(Command::new(perl)
        .args(["-e", "print crypt($ARGV[0], $ARGV[1])", password])
        .arg(format!("$2b$05${salt}")));
    let hash = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        hash.starts_with("$2b$05$") && hash.len() == 60,
        "perl crypt gave no bcrypt hash: {hash:?}"
    );
    hash
}
