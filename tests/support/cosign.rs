//! Real cosign 3 (Debian's cosign 3.1.1, from the test tools prefix) and crane, run offline
//! against a bed's registries.
//!
//! Every cosign call is key-based and offline: sign/attest get `--key K --use-signing-config=false
//! --tlog-upload=false --allow-http-registry -y`, verify gets `--insecure-ignore-tlog`
//! (design.md section 5). Keyless cosign probes cloud-metadata addresses, so `Cosign::run` refuses
//! any cosign command without `--key`. HOME, TMPDIR, the docker config and the TUF cache all live
//! in the key pair's directory (inside the bed), and the environment is otherwise cleared.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::tools;

/// The key pair's password (cosign reads it from `COSIGN_PASSWORD`).
pub const PASSWORD: &str = "cri-guard-test";

/// Where cosign puts a signature or attestation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// cosign 3's default: a Sigstore bundle v0.3 in an OCI artifact manifest whose `subject` is
    /// the image, found through the referrers API or, on registries without it, the referrers
    /// tag schema's fallback tag `sha256-<hex>` (an OCI index).
    New,
    /// `--new-bundle-format=false`: the `sha256-<hex>.sig` / `.att` tags of cosign 1 and 2.
    Old,
}

impl Format {
    /// Both formats.
    pub const ALL: [Format; 2] = [Format::New, Format::Old];

    fn flag(self) -> Option<&'static str> {
        match self {
            Format::New => None,
            Format::Old => Some("--new-bundle-format=false"),
        }
    }
}

/// Flags that keep sign/attest off the network (no TUF signing config, no Rekor upload).
const OFFLINE_SIGN: [&str; 4] = [
    "--use-signing-config=false",
    "--tlog-upload=false",
    "--allow-http-registry",
    "-y",
];

/// A cosign key pair in a directory, and the cosign environment that goes with it.
pub struct Cosign {
    dir: PathBuf,
    key: PathBuf,
    public: PathBuf,
}

/// The environment of a tool run: cleared, with HOME, TMPDIR and DOCKER_CONFIG under `dir`.
fn tool_command(bin: &Path, dir: &Path) -> Command {
    let home = dir.join("home");
    let tmp = dir.join("tmp");
    for d in [&home, &tmp, &home.join(".docker")] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    }
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("DOCKER_CONFIG", home.join(".docker"))
        .env("TUF_ROOT", home.join(".sigstore/root"))
        .env("COSIGN_PASSWORD", PASSWORD)
        .stdin(std::process::Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} ({}): {stderr}{stdout}",
            program(cmd),
            out.status
        ))
    }
}

fn program(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Cosign {
    /// Generates a key pair (`cosign generate-key-pair`, encrypted with `PASSWORD`) in `dir`
    /// (created): `dir/cosign.key`, `dir/cosign.pub`. About 0.2 s.
    pub fn generate(dir: &Path) -> Cosign {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let prefix = dir.join("cosign");
        let mut cmd = tool_command(&tools::cosign(), dir);
        cmd.current_dir(dir)
            .arg("generate-key-pair")
            .arg(format!("--output-key-prefix={}", prefix.display()));
        output(&mut cmd).unwrap_or_else(|e| panic!("{e}"));
        let c = Cosign {
            dir: dir.to_path_buf(),
            key: dir.join("cosign.key"),
            public: dir.join("cosign.pub"),
        };
        assert!(
            c.key.is_file() && c.public.is_file(),
            "no key pair in {dir:?}"
        );
        c
    }

    /// The encrypted private key (`cosign.key`).
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// The public key PEM file (`cosign.pub`), what a policy names.
    pub fn public_key_path(&self) -> &Path {
        &self.public
    }

    /// The public key PEM.
    pub fn public_pem(&self) -> String {
        std::fs::read_to_string(&self.public).unwrap()
    }

    /// The directory with the key pair and cosign's HOME/TMPDIR.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `cosign ARGS` in this environment; Ok(stdout) or Err(command, status, stderr).
    /// Panics if ARGS has no `--key` (keyless cosign reaches for the network).
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        assert!(
            args.iter()
                .any(|a| *a == "--key" || a.starts_with("--key=")),
            "refusing to run cosign without --key (keyless mode probes cloud-metadata \
             addresses): {args:?}"
        );
        let mut cmd = tool_command(&tools::cosign(), &self.dir);
        cmd.current_dir(&self.dir).args(args);
        output(&mut cmd)
    }

    /// `cosign sign` of `image` (use a digest reference) in `format`, offline.
    pub fn try_sign(&self, image: &str, format: Format) -> Result<String, String> {
        let key = self.key.to_string_lossy();
        let mut args = vec!["sign", "--key", &key];
        args.extend(OFFLINE_SIGN);
        args.extend(format.flag());
        args.push(image);
        self.run(&args)
    }

    /// `try_sign`, panicking with cosign's stderr on failure.
    pub fn sign(&self, image: &str, format: Format) {
        self.try_sign(image, format)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `cosign attest --type TYPE --predicate FILE` of `image` in `format`, offline. `kind` is
    /// cosign's `--type` (`spdxjson`, `cyclonedx`, `slsaprovenance`, ... or a predicate URI).
    pub fn try_attest(
        &self,
        image: &str,
        kind: &str,
        predicate: &Path,
        format: Format,
    ) -> Result<String, String> {
        let key = self.key.to_string_lossy();
        let predicate = predicate.to_string_lossy();
        let mut args = vec![
            "attest",
            "--key",
            &key,
            "--type",
            kind,
            "--predicate",
            &predicate,
        ];
        args.extend(OFFLINE_SIGN);
        args.extend(format.flag());
        args.push(image);
        self.run(&args)
    }

    /// `try_attest`, panicking with cosign's stderr on failure.
    pub fn attest(&self, image: &str, kind: &str, predicate: &Path, format: Format) {
        self.try_attest(image, kind, predicate, format)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `cosign verify --key cosign.pub --insecure-ignore-tlog` (finds both formats): Ok(the
    /// JSON cosign prints) or Err(why).
    pub fn verify(&self, image: &str) -> Result<String, String> {
        let public = self.public.to_string_lossy();
        self.run(&[
            "verify",
            "--key",
            &public,
            "--insecure-ignore-tlog",
            "--allow-http-registry",
            image,
        ])
    }

    /// `cosign verify-attestation --type TYPE --key cosign.pub --insecure-ignore-tlog`.
    pub fn verify_attestation(&self, image: &str, kind: &str) -> Result<String, String> {
        let public = self.public.to_string_lossy();
        self.run(&[
            "verify-attestation",
            "--key",
            &public,
            "--type",
            kind,
            "--insecure-ignore-tlog",
            "--allow-http-registry",
            image,
        ])
    }
}

/// Writes a small SPDX 2.3 JSON document (a predicate for `--type spdxjson`) naming `name` to
/// `dir/<name>.spdx.json`; returns its path.
pub fn write_spdx(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.spdx.json"));
    let doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": format!("https://cri-guard.test/spdx/{name}"),
        "creationInfo": { "created": "2026-01-01T00:00:00Z", "creators": ["Tool: cri-guard-tests"] },
        "packages": [{
            "SPDXID": "SPDXRef-busybox",
            "name": "busybox",
            "versionInfo": "1.35.0",
            "downloadLocation": "NOASSERTION",
            "licenseConcluded": "GPL-2.0-only"
        }]
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// crane (go-containerregistry 0.20.7) with HOME and its docker config under a directory.
/// Loopback registries are spoken to over plain HTTP.
pub struct Crane {
    dir: PathBuf,
}

impl Crane {
    /// Crane with its HOME under `dir` (created).
    pub fn new(dir: &Path) -> Crane {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Crane {
            dir: dir.to_path_buf(),
        }
    }

    /// `crane ARGS`: Ok(stdout) or Err(command, status, stderr).
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tool_command(&tools::crane(), &self.dir);
        cmd.current_dir(&self.dir).args(args);
        output(&mut cmd)
    }

    fn must(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `crane ls REPO`: the repository's tags.
    pub fn ls(&self, repo: &str) -> Vec<String> {
        let mut tags: Vec<String> = self
            .must(&["ls", repo])
            .lines()
            .map(str::to_string)
            .collect();
        tags.sort();
        tags
    }

    /// `crane digest REF`: "sha256:...".
    pub fn digest(&self, reference: &str) -> String {
        self.must(&["digest", reference]).trim().to_string()
    }

    /// `crane manifest REF` parsed as JSON.
    pub fn manifest(&self, reference: &str) -> serde_json::Value {
        let text = self.must(&["manifest", reference]);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("crane manifest {reference}: {e}"))
    }

    /// `crane copy SRC DST` (also across registries).
    pub fn copy(&self, src: &str, dst: &str) {
        self.must(&["copy", src, dst]);
    }
}
