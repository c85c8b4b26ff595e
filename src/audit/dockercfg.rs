//! Registry credentials from a docker `config.json` (what `docker login`, `crane auth login`,
//! `cosign login` and `skopeo login` write).
//!
//! ```json
//! {"auths": {"registry.example.com": {"auth": "<base64 user:password>"},
//!            "https://index.docker.io/v1/": {"username": "u", "password": "p"},
//!            "ghcr.io": {"registrytoken": "<bearer token>"}},
//!  "credHelpers": {"gcr.io": "gcloud"}, "credsStore": "desktop"}
//! ```
//!
//! Keys are normalized to the registry names images use (`https://index.docker.io/v1/` is
//! `docker.io`). Credential helpers (`credHelpers`, `credsStore`) are programs cri-guard does not
//! run: registries that only they cover are named in [`DockerConfig::unsupported`], so the
//! caller can say why those are read anonymously. An `identitytoken` (an OAuth refresh token)
//! is not exchanged either and is reported the same way. Secrets are never printed: errors
//! name the registry and the field, not the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::registry::Auth;

/// Largest config file read.
const MAX_SIZE: u64 = 4 << 20;

/// Credentials per registry, and the registries whose credentials could not be used.
#[derive(Debug, Default)]
pub struct DockerConfig {
    /// Where it was read from (`None`: no file).
    pub path: Option<PathBuf>,
    pub auths: BTreeMap<String, Auth>,
    /// (registry, why its credentials are not used).
    pub unsupported: Vec<(String, String)>,
}

/// The default location: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The registry name for a `auths` key: scheme, path and Docker Hub's aliases removed.
pub fn normalize(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

impl DockerConfig {
    /// Reads `path`; a missing file is an error only when `required` (it was named explicitly).
    pub fn load(path: &Path, required: bool) -> Result<DockerConfig, String> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(DockerConfig::default());
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        };
        if meta.len() > MAX_SIZE {
            return Err(format!(
                "{}: larger than {MAX_SIZE} bytes; not a docker config",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut cfg = DockerConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses the JSON text of a config file.
    pub fn parse(text: &str) -> Result<DockerConfig, String> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("not JSON (line {}): not a docker config", e.line()))?;
        let mut cfg = DockerConfig::default();
        if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
            for (key, entry) in auths {
                let registry = normalize(key);
                match entry_auth(entry) {
                    Ok(Some(a)) => {
                        cfg.auths.insert(registry, a);
                    }
                    Ok(None) => {}
                    Err(why) => cfg.unsupported.push((registry, why)),
                }
            }
        }
        if let Some(helpers) = v.get("credHelpers").and_then(|h| h.as_object()) {
            for (key, helper) in helpers {
                let registry = normalize(key);
                if !cfg.auths.contains_key(&registry) {
                    cfg.unsupported.push((
                        registry,
                        format!(
                            "credentials come from the helper docker-credential-{}, which cri-guard does not run",
                            helper.as_str().unwrap_or("?")
                        ),
                    ));
                }
            }
        }
        if let Some(store) = v.get("credsStore").and_then(|s| s.as_str()) {
            cfg.unsupported.push((
                "*".into(),
                format!(
                    "credentials stored by docker-credential-{store} are not read (cri-guard does not run credential helpers)"
                ),
            ));
        }
        Ok(cfg)
    }

    /// The credentials for `registry` (anonymous if none).
    pub fn auth_for(&self, registry: &str) -> Auth {
        self.auths
            .get(&normalize(registry))
            .cloned()
            .unwrap_or_default()
    }
}

/// One `auths` entry: `auth` (base64 of `user:password`), or `username` + `password`, or
/// `registrytoken`. `Ok(None)`: an empty entry (helpers keep those).
fn entry_auth(entry: &serde_json::Value) -> Result<Option<Auth>, String> {
    let field = |k: &str| {
        entry
            .get(k)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(encoded) = field("auth") {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "its `auth` is not base64".to_string())?;
        let text = String::from_utf8(raw).map_err(|_| "its `auth` is not UTF-8".to_string())?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| "its `auth` is not `user:password`".to_string())?;
        return Ok(Some(Auth::Basic {
            username: username.into(),
            password: password.into(),
        }));
    }
    if let (Some(u), Some(p)) = (field("username"), field("password")) {
        return Ok(Some(Auth::Basic {
            username: u.into(),
            password: p.into(),
        }));
    }
    if let Some(t) = field("registrytoken") {
        return Ok(Some(Auth::Bearer(t.into())));
    }
    if field("identitytoken").is_some() {
        return Err(
            "it holds an identity token (OAuth refresh token), which cri-guard does not exchange; log in with a user name and password or token"
                .into(),
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry forms docker and crane write, keyed by the registry names images use.
    #[test]
    fn entries_and_keys() {
        let cfg = DockerConfig::parse(
            r#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "dTpwOnc="},
                "127.0.0.1:5000": {"username": "alice", "password": "s3cret"},
                "ghcr.io": {"registrytoken": "tok"},
                "quay.io": {"identitytoken": "refresh"},
                "empty.example": {}
            },
            "credHelpers": {"gcr.io": "gcloud", "ghcr.io": "ignored-here"}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.auth_for("docker.io"),
            Auth::Basic {
                username: "u".into(),
                password: "p:w".into()
            }
        );
        assert_eq!(
            cfg.auth_for("127.0.0.1:5000"),
            Auth::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            }
        );
        assert_eq!(cfg.auth_for("ghcr.io"), Auth::Bearer("tok".into()));
        assert_eq!(cfg.auth_for("empty.example"), Auth::Anonymous);
        assert_eq!(cfg.auth_for("other.example"), Auth::Anonymous);
        let unsupported: Vec<&str> = cfg.unsupported.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(unsupported, ["quay.io", "gcr.io"]);
    }

    /// Broken files and entries are named without their secrets.
    #[test]
    fn errors_name_no_secret() {
        assert!(DockerConfig::parse("{").is_err());
        let cfg =
            DockerConfig::parse(r#"{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}"#).unwrap();
        assert_eq!(cfg.unsupported.len(), 1);
        let why = &cfg.unsupported[0].1;
        assert!(why.contains("user:password"), "{why}");
        assert!(
            !why.contains("nocolon") && !why.contains("bm9jb2xvbg"),
            "{why}"
        );
        assert!(
            DockerConfig::load(Path::new("/nonexistent/config.json"), false)
                .unwrap()
                .auths
                .is_empty()
        );
        assert!(DockerConfig::load(Path::new("/nonexistent/config.json"), true).is_err());
    }
}
