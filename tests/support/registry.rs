//! A local `docker-registry` (distribution 2.8) on 127.0.0.1:<free port>, plain HTTP, filesystem
//! storage, optionally with htpasswd basic auth.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::image;
use super::util::{free_port, http, log_tail, path_str, require_bin, run, terminate};

pub struct Registry {
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
                return Err(format!("docker-registry exited early ({status})"));
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
