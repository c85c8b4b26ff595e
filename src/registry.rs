//! OCI registry access for verification: resolve a tag to a digest, fetch a manifest, fetch a
//! blob, list an image's referrers (the OCI referrers API, or the referrers tag schema that
//! registries without the API carry). Every request has a timeout, every body a size limit,
//! every blob's digest is checked, every listing a bound on pages and entries.
//!
//! Where to connect comes from, in order: containerd's `hosts.toml` for the registry (the policy's
//! `hostsDir`, the same `certs.d` directory containerd reads, so signatures are fetched from where
//! containerd pulls), then the policy's `registries.<host>.insecure` (plain HTTP), then
//! `https://<host>` (`docker.io` is `registry-1.docker.io`).
//!
//! Credentials ([`Auth`]) are per call: the kubelet's `PullImageRequest.auth` for that registry.
//! They are sent as Basic auth, or exchanged for a bearer token when the registry asks for one
//! (tokens are kept in memory, keyed by credential fingerprint). They are never logged: [`Auth`]'s
//! `Debug` prints only the user name. They go only to the host they were given for (I6):
//! reqwest drops `Authorization` when a redirect leaves the host; a 401 that comes back from
//! another host after a redirect is not answered with them; and a bearer challenge's token
//! `realm` gets them only if it is the host that was asked, or a host the policy names as the
//! registry's token service (`registries."<r>".tokenHosts`; `auth.docker.io` for Docker Hub),
//! over HTTPS unless the registry itself is plain HTTP. Any other realm is asked anonymously.
//!
//! A verification runs inside a [`Budget`]: every body byte and every blob fetched while it
//! runs is charged to it, and a fetch over it fails with [`RegistryError::OverBudget`]. So what
//! one verification holds in memory is bounded whatever a registry lists.
//!
//! oci-client's own client is not used for fetching because it keeps the first credentials it
//! sees per registry and reads manifests without a size limit.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use oci_client::Reference;
use sha2::{Digest as _, Sha256};

use crate::metrics::METRICS;

/// Manifest media types we accept (Docker v2 and OCI, single and multi-platform).
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// Media type of an OCI image index: what the referrers API answers and the referrers tag holds.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Most pages of a referrers listing followed (`Link: <...>; rel="next"`).
pub const MAX_REFERRER_PAGES: usize = 16;

/// One entry of an OCI index, e.g. a referrer of an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Descriptor {
    /// `mediaType` of what the entry points to.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `digest`, unchecked here (callers check it is a sha256 digest before using it).
    pub digest: String,
    /// `size` in bytes, as claimed.
    pub size: i64,
    /// `artifactType`, if listed (registries differ: ggcr lists the config's media type).
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
    /// `annotations`, if listed.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Index {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    /// Required: an empty listing says so with `"manifests": []`.
    manifests: Vec<Descriptor>,
}

/// Registry credentials for one call. Never logged.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An identity or registry token (OAuth refresh token / bearer).
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Auth {
    /// From the kubelet's CRI `AuthConfig` (username/password, base64 `auth`, or tokens).
    pub fn from_cri(a: Option<&crate::cri::AuthConfig>) -> Auth {
        let Some(a) = a else { return Auth::Anonymous };
        if !a.username.is_empty() || !a.password.is_empty() {
            return Auth::Basic {
                username: a.username.clone(),
                password: a.password.clone(),
            };
        }
        if !a.auth.is_empty() {
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(a.auth.trim()) {
                if let Ok(s) = String::from_utf8(raw) {
                    if let Some((u, p)) = s.split_once(':') {
                        return Auth::Basic {
                            username: u.into(),
                            password: p.into(),
                        };
                    }
                }
            }
        }
        if !a.registry_token.is_empty() {
            return Auth::Bearer(a.registry_token.clone());
        }
        if !a.identity_token.is_empty() {
            return Auth::Bearer(a.identity_token.clone());
        }
        Auth::Anonymous
    }

    /// A fingerprint to key cached tokens and credential-dependent results by, without keeping
    /// the secret itself as a key: SHA-256 over a per-process random salt and the credentials.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt());
        match self {
            Auth::Anonymous => h.update(b"anon"),
            Auth::Basic { username, password } => {
                h.update(b"basic\0");
                h.update(username.as_bytes());
                h.update(b"\0");
                h.update(password.as_bytes());
            }
            Auth::Bearer(t) => {
                h.update(b"bearer\0");
                h.update(t.as_bytes());
            }
        }
        h.finalize().into()
    }
}

/// 32 random bytes per process (from the kernel), so fingerprints can't be precomputed.
fn salt() -> &'static [u8; 32] {
    static SALT: OnceLock<[u8; 32]> = OnceLock::new();
    SALT.get_or_init(|| {
        let mut s = [0u8; 32];
        match std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut s))
        {
            Ok(()) => s,
            // No urandom: still unpredictable enough for an in-memory map key.
            Err(_) => Sha256::digest(format!("{:?}{}", Instant::now(), std::process::id())).into(),
        }
    })
}

/// What one verification may still fetch: bytes of bodies, and blobs. Shared by everything a
/// verification fetches (see [`Budget::scope`]).
#[derive(Debug)]
pub struct Budget {
    bytes: AtomicUsize,
    blobs: AtomicUsize,
    max_bytes: usize,
    max_blobs: usize,
}

tokio::task_local! {
    static BUDGET: Arc<Budget>;
}

impl Budget {
    pub fn new(max_bytes: usize, max_blobs: usize) -> Arc<Budget> {
        Arc::new(Budget {
            bytes: AtomicUsize::new(0),
            blobs: AtomicUsize::new(0),
            max_bytes,
            max_blobs,
        })
    }

    /// Runs `fut` with every registry fetch it makes charged to this budget.
    pub async fn scope<F: std::future::Future>(self: Arc<Self>, fut: F) -> F::Output {
        BUDGET.scope(self, fut).await
    }

    /// Bytes fetched so far.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn charge_bytes(&self, n: usize, url: &str) -> Result<(), RegistryError> {
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.max_bytes {
            return Err(RegistryError::OverBudget {
                url: url.into(),
                what: format!(
                    "more than {} bytes (fetch.maxVerificationBytes)",
                    self.max_bytes
                ),
            });
        }
        Ok(())
    }

    fn charge_blob(&self, url: &str) -> Result<(), RegistryError> {
        let n = self.blobs.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.max_blobs {
            return Err(RegistryError::OverBudget {
                url: url.into(),
                what: format!(
                    "more than {} blobs (fetch.maxVerificationBlobs)",
                    self.max_blobs
                ),
            });
        }
        Ok(())
    }
}

/// Charges `n` body bytes to the running verification's budget, if any.
fn charge_bytes(n: usize, url: &str) -> Result<(), RegistryError> {
    BUDGET
        .try_with(|b| b.charge_bytes(n, url))
        .unwrap_or(Ok(()))
}

/// Charges one blob to the running verification's budget, if any.
fn charge_blob(url: &str) -> Result<(), RegistryError> {
    BUDGET.try_with(|b| b.charge_blob(url)).unwrap_or(Ok(()))
}

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or did not answer in time.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} requires credentials that were not given or were refused (HTTP 401)")]
    Unauthorized { url: String },
    #[error("{url} sent more than the limit of {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} sent content whose digest is {actual}, not {expected}")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("this verification fetched {what}, the limit; stopped at {url}")]
    OverBudget { url: String, what: String },
    #[error("{0}")]
    Malformed(String),
}

impl RegistryError {
    /// The `kind` label of `cri_guard_registry_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Unreachable { .. } => "unreachable",
            RegistryError::Status { .. } => "status",
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::TooLarge { .. } => "too_large",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::OverBudget { .. } => "over_budget",
            RegistryError::Malformed(_) => "malformed",
        }
    }

    /// True when the registry was not reachable (the kubelet's `RegistryUnavailable`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
            || matches!(self, RegistryError::Status { status, .. } if *status >= 500)
    }
}

/// Registry connection settings.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// containerd's `certs.d` directory.
    pub hosts_dir: Option<PathBuf>,
    /// Registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    pub timeout: Duration,
    pub max_manifest_size: usize,
    /// Per registry: other hosts that may receive its credentials as its token service.
    pub token_hosts: BTreeMap<String, Vec<String>>,
}

/// Most bearer tokens kept at once.
const MAX_TOKENS: usize = 4096;

/// (registry, scope, credential fingerprint): what a bearer token was issued for.
type TokenKey = (String, String, [u8; 32]);

/// A registry client; cheap to share.
pub struct Registry {
    http: reqwest::Client,
    cfg: RegistryConfig,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    /// HTTP requests sent (token requests included), for round-trip accounting.
    requests: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("cfg", &self.cfg).finish()
    }
}

/// A fetched manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub body: Bytes,
}

impl Registry {
    pub fn new(cfg: RegistryConfig) -> Result<Registry, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("cri-guard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Malformed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Registry {
            http,
            cfg,
            tokens: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        })
    }

    /// How many HTTP requests this client has sent (token requests included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The referrers of `digest` in `repo` through the OCI referrers API
    /// (`GET /v2/<name>/referrers/<digest>`), following `Link: <...>; rel="next"` on the same
    /// host for at most [`MAX_REFERRER_PAGES`] pages; more than `max` entries in all is an
    /// error. `Ok(None)` when the registry does not serve the API (404; distribution 2.8).
    /// Nothing is filtered: not all registries report `artifactType` (ggcr lists the config's
    /// media type), so callers look at the referrers themselves.
    pub async fn referrers_api(
        &self,
        repo: &Reference,
        digest: &str,
        max: usize,
        auth: &Auth,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        require_digest(digest)?;
        let endpoint = self.endpoint(repo.registry());
        let mut url = format!("{endpoint}/v2/{}/referrers/{digest}", repo.repository());
        let mut all = Vec::new();
        for page in 0.. {
            if page == MAX_REFERRER_PAGES {
                return Err(RegistryError::Malformed(format!(
                    "{url}: the referrers listing has more than {MAX_REFERRER_PAGES} pages"
                )));
            }
            let resp = match self.send(reqwest::Method::GET, &url, repo, auth).await {
                Ok(r) => r,
                Err(RegistryError::Status { status: 404, .. }) if page == 0 => return Ok(None),
                Err(e) => return Err(e),
            };
            let next = resp
                .headers()
                .get_all("link")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            let body = read_limited(resp, &url, self.cfg.max_manifest_size).await?;
            all.extend(parse_index(&url, &body)?);
            if all.len() > max {
                return Err(too_many_referrers(&url, max));
            }
            match next {
                None => break,
                Some(link) => url = same_origin(&endpoint, &link, &url)?,
            }
        }
        Ok(Some(all))
    }

    /// The referrers of `digest` in `repo` through the referrers tag schema (registries
    /// without the API): the tag `sha256-<hex>` holding an OCI index, which clients such as
    /// cosign maintain. `Ok(None)` when there is no such tag; more than `max` entries, or
    /// anything but an OCI index there, is an error.
    pub async fn referrers_tag(
        &self,
        repo: &Reference,
        digest: &str,
        max: usize,
        auth: &Auth,
    ) -> Result<Option<Vec<Descriptor>>, RegistryError> {
        require_digest(digest)?;
        let tag = referrers_tag(digest);
        let Some(m) = self.manifest_at(repo, &tag, auth).await? else {
            return Ok(None);
        };
        let place = format!("{}/{}:{tag}", repo.registry(), repo.repository());
        let entries = parse_index(&place, &m.body)?;
        if entries.len() > max {
            return Err(too_many_referrers(&place, max));
        }
        Ok(Some(entries))
    }

    /// Base URL (scheme://host[:port]) to reach `registry` at.
    pub fn endpoint(&self, registry: &str) -> String {
        if let Some(dir) = &self.cfg.hosts_dir {
            if let Some(url) = hosts_toml_endpoint(dir, registry) {
                return url;
            }
        }
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if self.cfg.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// The digest `image` points to now (HEAD on the manifest; GET if the registry omits the
    /// digest header). A digest reference resolves to itself without a request.
    pub async fn resolve(&self, image: &Reference, auth: &Auth) -> Result<String, RegistryError> {
        if let Some(d) = image.digest() {
            return Ok(d.to_string());
        }
        let tag = image.tag().unwrap_or("latest");
        let url = format!(
            "{}/v2/{}/manifests/{tag}",
            self.endpoint(image.registry()),
            image.repository()
        );
        let resp = self.send(reqwest::Method::HEAD, &url, image, auth).await?;
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
        {
            if valid_digest(d) {
                return Ok(d.to_string());
            }
        }
        let m = self
            .manifest_at(image, tag, auth)
            .await?
            .ok_or(RegistryError::Status { url, status: 404 })?;
        Ok(m.digest)
    }

    /// The manifest of `repo` at `reference` (tag or digest); `None` if there is none.
    pub async fn manifest_at(
        &self,
        repo: &Reference,
        reference: &str,
        auth: &Auth,
    ) -> Result<Option<Manifest>, RegistryError> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.endpoint(repo.registry()),
            repo.repository()
        );
        let resp = match self.send(reqwest::Method::GET, &url, repo, auth).await {
            Ok(r) => r,
            Err(RegistryError::Status { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let media_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = counted(
            repo.registry(),
            read_limited(resp, &url, self.cfg.max_manifest_size).await,
        )?;
        let digest = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if valid_digest(reference) && reference != digest {
            METRICS.registry_error(repo.registry(), "digest_mismatch");
            return Err(RegistryError::DigestMismatch {
                url,
                expected: reference.to_string(),
                actual: digest,
            });
        }
        Ok(Some(Manifest {
            digest,
            media_type,
            body,
        }))
    }

    /// The blob `digest` of `repo`, at most `limit` bytes, checked against its digest.
    pub async fn blob(
        &self,
        repo: &Reference,
        digest: &str,
        limit: usize,
        auth: &Auth,
    ) -> Result<Bytes, RegistryError> {
        require_digest(digest)?;
        let url = format!(
            "{}/v2/{}/blobs/{digest}",
            self.endpoint(repo.registry()),
            repo.repository()
        );
        counted(repo.registry(), charge_blob(&url))?;
        let resp = self.send(reqwest::Method::GET, &url, repo, auth).await?;
        let body = counted(repo.registry(), read_limited(resp, &url, limit).await)?;
        let actual = format!("sha256:{}", hex(&Sha256::digest(&body)));
        if actual != digest {
            METRICS.registry_error(repo.registry(), "digest_mismatch");
            return Err(RegistryError::DigestMismatch {
                url,
                expected: digest.into(),
                actual,
            });
        }
        Ok(body)
    }

    /// One page of the registry's repository list (`GET /v2/_catalog?n=N&last=L`), with the
    /// `last` to ask for next when the registry says there is more (a `Link: ..; rel="next"`).
    /// The registry must grant the `registry:catalog:*` scope (many public ones do not: give
    /// the repositories instead).
    pub async fn catalog_page(
        &self,
        registry: &str,
        n: usize,
        last: Option<&str>,
        auth: &Auth,
    ) -> Result<Listing, RegistryError> {
        let url = listing_url(&format!("{}/v2/_catalog", self.endpoint(registry)), n, last)?;
        let resp = self
            .send_scoped(
                reqwest::Method::GET,
                &url,
                registry,
                "registry:catalog:*",
                auth,
            )
            .await?;
        Listing::read(resp, &url, "repositories").await
    }

    /// One page of the tags of `repo` (`GET /v2/<name>/tags/list?n=N&last=L`); see
    /// [`Registry::catalog_page`].
    pub async fn tags_page(
        &self,
        repo: &Reference,
        n: usize,
        last: Option<&str>,
        auth: &Auth,
    ) -> Result<Listing, RegistryError> {
        let base = format!(
            "{}/v2/{}/tags/list",
            self.endpoint(repo.registry()),
            repo.repository()
        );
        let url = listing_url(&base, n, last)?;
        let scope = format!("repository:{}:pull", repo.repository());
        let resp = self
            .send_scoped(reqwest::Method::GET, &url, repo.registry(), &scope, auth)
            .await?;
        Listing::read(resp, &url, "tags").await
    }

    /// Sends one request, answering a bearer-token challenge once.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        repo: &Reference,
        auth: &Auth,
    ) -> Result<reqwest::Response, RegistryError> {
        let scope = format!("repository:{}:pull", repo.repository());
        self.send_scoped(method, url, repo.registry(), &scope, auth)
            .await
    }

    /// Sends one request to `registry`, answering a bearer-token challenge once with a token
    /// for `scope`. Counted in the metrics (a 404 is an answer: "not there", not an error).
    async fn send_scoped(
        &self,
        method: reqwest::Method,
        url: &str,
        registry: &str,
        scope: &str,
        auth: &Auth,
    ) -> Result<reqwest::Response, RegistryError> {
        let r = self.send_once(method, url, registry, scope, auth).await;
        match &r {
            Err(RegistryError::Status { status: 404, .. }) | Ok(_) => {}
            Err(e) => METRICS.registry_error(registry, e.kind()),
        }
        r
    }

    async fn send_once(
        &self,
        method: reqwest::Method,
        url: &str,
        registry: &str,
        scope: &str,
        auth: &Auth,
    ) -> Result<reqwest::Response, RegistryError> {
        let key = (registry.to_string(), scope.to_string(), auth.fingerprint());
        let cached = {
            let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            tokens
                .get(&key)
                .filter(|(_, exp)| *exp > Instant::now())
                .map(|(t, _)| t.clone())
        };
        METRICS.registry_request(registry);
        let first = self
            .request(method.clone(), url, cached.as_deref(), auth)
            .await?;
        if first.status() != reqwest::StatusCode::UNAUTHORIZED {
            return check_status(first, url);
        }
        // A challenge from another host (after a redirect) is not answered with credentials
        // given for this one.
        if origin(first.url().as_str()) != origin(url) {
            return Err(RegistryError::Unauthorized {
                url: first.url().to_string(),
            });
        }
        let challenge = first
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_bearer_challenge);
        let Some((realm, service)) = challenge else {
            return Err(RegistryError::Unauthorized { url: url.into() });
        };
        let token_auth = if self.may_receive_credentials(registry, url, &realm) {
            auth
        } else {
            &Auth::Anonymous
        };
        METRICS.registry_request(registry);
        let (token, ttl) = self
            .fetch_token(&realm, service.as_deref(), scope, token_auth)
            .await?;
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            // Registries, repositories and credentials are chosen by others: keep the map
            // bounded (expired tokens go first; it is only a cache).
            if tokens.len() >= MAX_TOKENS {
                let now = Instant::now();
                tokens.retain(|_, (_, exp)| *exp > now);
                if tokens.len() >= MAX_TOKENS {
                    tokens.clear();
                }
            }
            tokens.insert(key, (token.clone(), Instant::now() + ttl));
        }
        METRICS.registry_request(registry);
        let second = self.request(method, url, Some(&token), auth).await?;
        if second.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Unauthorized { url: url.into() });
        }
        check_status(second, url)
    }

    /// Whether the token `realm` a registry named may receive the credentials given for
    /// `registry` (asked at `url`): the same host, or one of its configured token hosts; over
    /// HTTPS unless the registry is plain HTTP itself.
    fn may_receive_credentials(&self, registry: &str, url: &str, realm: &str) -> bool {
        let (Some(asked), Some(realm)) = (origin(url), origin(realm)) else {
            return false;
        };
        if realm.0 == "http" && asked.0 != "http" {
            return false;
        }
        let realm_host = match realm.2 {
            Some(p) if Some(p) != default_port(&realm.0) => format!("{}:{p}", realm.1),
            _ => realm.1.clone(),
        };
        (asked.1 == realm.1 && asked.2 == realm.2)
            || (registry == "docker.io" && realm_host == "auth.docker.io")
            || self
                .cfg
                .token_hosts
                .get(registry)
                .is_some_and(|hosts| hosts.iter().any(|h| h.eq_ignore_ascii_case(&realm_host)))
    }

    async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        token: Option<&str>,
        auth: &Auth,
    ) -> Result<reqwest::Response, RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self
            .http
            .request(method, url)
            .header("accept", MANIFEST_TYPES);
        req = match (token, auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, Auth::Basic { username, password }) => req.basic_auth(username, Some(password)),
            (None, Auth::Bearer(t)) => req.bearer_auth(t),
            (None, Auth::Anonymous) => req,
        };
        req.send().await.map_err(|e| unreachable(url, &e))
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        auth: &Auth,
    ) -> Result<(String, Duration), RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self.http.get(realm).query(&[("scope", scope)]);
        if let Some(s) = service {
            req = req.query(&[("service", s)]);
        }
        if let Auth::Basic { username, password } = auth {
            req = req.basic_auth(username, Some(password));
        }
        let resp = req.send().await.map_err(|e| unreachable(realm, &e))?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED
            || resp.status() == reqwest::StatusCode::FORBIDDEN
        {
            return Err(RegistryError::Unauthorized { url: realm.into() });
        }
        let resp = check_status(resp, realm)?;
        let body = read_limited(resp, realm, 1 << 20).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            RegistryError::Malformed(format!("token response from {realm} is not JSON: {e}"))
        })?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                RegistryError::Malformed(format!("token response from {realm} has no token"))
            })?;
        let ttl = v
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(60)
            .clamp(10, 3600);
        // Refresh a little early.
        Ok((token.to_string(), Duration::from_secs(ttl - ttl / 10)))
    }
}

/// `r`, with an error counted for `registry` in the metrics.
fn counted<T>(registry: &str, r: Result<T, RegistryError>) -> Result<T, RegistryError> {
    if let Err(e) = &r {
        METRICS.registry_error(registry, e.kind());
    }
    r
}

fn unreachable(url: &str, e: &reqwest::Error) -> RegistryError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        reason = format!("{reason}: {s}");
        src = s.source();
    }
    RegistryError::Unreachable {
        url: url.into(),
        reason,
    }
}

fn check_status(resp: reqwest::Response, url: &str) -> Result<reqwest::Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        Ok(resp)
    } else if status == reqwest::StatusCode::UNAUTHORIZED
        || status == reqwest::StatusCode::FORBIDDEN
    {
        Err(RegistryError::Unauthorized { url: url.into() })
    } else {
        Err(RegistryError::Status {
            url: url.into(),
            status: status.as_u16(),
        })
    }
}

/// Reads a body, refusing more than `limit` bytes (whatever Content-Length claims).
async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
    limit: usize,
) -> Result<Bytes, RegistryError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(RegistryError::TooLarge {
            url: url.into(),
            limit,
        });
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(url, &e))? {
        if buf.len() + chunk.len() > limit {
            return Err(RegistryError::TooLarge {
                url: url.into(),
                limit,
            });
        }
        charge_bytes(chunk.len(), url)?;
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// (scheme, lower-case host, port) of a URL.
fn origin(url: &str) -> Option<(String, String, Option<u16>)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.scheme().to_string(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default(),
    ))
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `Bearer realm="..",service="..",scope=".."` -> (realm, service).
fn parse_bearer_challenge(h: &str) -> Option<(String, Option<String>)> {
    let rest = h
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| h.trim().strip_prefix("bearer "))?;
    let mut realm = None;
    let mut service = None;
    for part in split_params(rest) {
        let (k, v) = part.split_once('=')?;
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    realm
        .filter(|r| r.starts_with("http://") || r.starts_with("https://"))
        .map(|r| (r, service))
}

/// Splits `a="x,y",b=z` on commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The endpoint containerd would pull `registry` from, per `DIR/<registry>/hosts.toml`: the first
/// `[host."URL"]` with the pull capability, else `server`.
fn hosts_toml_endpoint(dir: &Path, registry: &str) -> Option<String> {
    if registry.contains('/') || registry.contains("..") {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(registry).join("hosts.toml")).ok()?;
    let t: toml::Table = text.parse().ok()?;
    if let Some(hosts) = t.get("host").and_then(|h| h.as_table()) {
        for (url, h) in hosts {
            let pulls = h
                .get("capabilities")
                .and_then(|c| c.as_array())
                .is_none_or(|caps| caps.iter().any(|c| c.as_str() == Some("pull")));
            if pulls {
                return Some(
                    url.trim_end_matches('/')
                        .trim_end_matches("/v2")
                        .to_string(),
                );
            }
        }
    }
    t.get("server")
        .and_then(|s| s.as_str())
        .map(|s| s.trim_end_matches('/').trim_end_matches("/v2").to_string())
}

/// The referrers tag schema's tag for `digest`: `sha256:<hex>` becomes `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn too_many_referrers(place: &str, max: usize) -> RegistryError {
    RegistryError::Malformed(format!(
        "{place} lists more than {max} referrers (fetch.maxReferrers; raise it if this image really has that many signatures and attestations)"
    ))
}

/// An OCI index's entries; anything else (another JSON document, another media type) is an
/// error.
fn parse_index(place: &str, body: &[u8]) -> Result<Vec<Descriptor>, RegistryError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(RegistryError::Malformed(format!(
            "{place}: the referrers listing is not an OCI index (not a JSON object)"
        )));
    }
    let index: Index = serde_json::from_slice(body).map_err(|e| {
        RegistryError::Malformed(format!(
            "{place}: the referrers listing is not an OCI index: {e}"
        ))
    })?;
    match index.media_type.as_deref() {
        None | Some(OCI_INDEX) => Ok(index.manifests),
        Some(other) => Err(RegistryError::Malformed(format!(
            "{place}: the referrers listing has media type {other:?}, not {OCI_INDEX}"
        ))),
    }
}

/// The target of a `Link: <target>; rel="next"` header value, if it is one.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once('>')?;
        let target = target.trim().strip_prefix('<')?;
        params
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .any(|(k, v)| {
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim().trim_matches('"').split(' ').any(|r| r == "next")
            })
            .then(|| target.to_owned())
    })
}

/// Resolves a `next` link against the registry's endpoint; a link to another host (where the
/// credentials must not go) or of another shape is an error.
fn same_origin(endpoint: &str, link: &str, from: &str) -> Result<String, RegistryError> {
    if link.starts_with("/v2/") && !link.contains("://") {
        return Ok(format!("{endpoint}{link}"));
    }
    if let Some(path) = link.strip_prefix(endpoint) {
        if path.starts_with("/v2/") {
            return Ok(link.to_owned());
        }
    }
    Err(RegistryError::Malformed(format!(
        "{from}: the referrers listing's next page {link:?} is not on this registry; not followed"
    )))
}

/// Most bytes of one listing page (catalog or tags).
const MAX_LISTING: usize = 4 << 20;
/// Most names on one listing page, whatever `n` asked for.
const MAX_LISTING_NAMES: usize = 10_000;

/// One page of a registry listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The repository or tag names on this page.
    pub names: Vec<String>,
    /// The `last` to ask with for the next page; `None`: this was the last page.
    pub next: Option<String>,
}

impl Listing {
    /// Reads a listing response: JSON with the names under `field` (null or absent: none), and
    /// a `Link` header if there is more.
    async fn read(
        resp: reqwest::Response,
        url: &str,
        field: &str,
    ) -> Result<Listing, RegistryError> {
        let link = resp
            .headers()
            .get_all("link")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_page_last);
        let body = read_limited(resp, url, MAX_LISTING).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Malformed(format!("{url}: not a JSON listing: {e}")))?;
        let names: Vec<String> = match v.get(field) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        RegistryError::Malformed(format!("{url}: `{field}` holds a non-string"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(RegistryError::Malformed(format!(
                    "{url}: `{field}` is not a list"
                )));
            }
        };
        if names.len() > MAX_LISTING_NAMES {
            return Err(RegistryError::Malformed(format!(
                "{url}: more than {MAX_LISTING_NAMES} names on one page"
            )));
        }
        // A next link without `last` continues after this page's final name.
        let next = match link {
            Some(Some(last)) => Some(last),
            Some(None) => names.last().cloned(),
            None => None,
        };
        Ok(Listing { names, next })
    }
}

/// `base?n=N[&last=L]`, with `last` query-encoded.
fn listing_url(base: &str, n: usize, last: Option<&str>) -> Result<String, RegistryError> {
    let mut u = reqwest::Url::parse(base)
        .map_err(|e| RegistryError::Malformed(format!("{base}: not a URL: {e}")))?;
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("n", &n.to_string());
        if let Some(l) = last {
            q.append_pair("last", l);
        }
    }
    Ok(u.to_string())
}

/// For a `Link` header value with a `rel="next"` target: `Some(the target's last parameter)`
/// (`Some(None)` when it has none); `None` when it is no next link. Only the parameter is taken:
/// the next request is built against the same registry, never sent where the link points.
fn next_page_last(value: &str) -> Option<Option<String>> {
    let target = next_link(value)?;
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let last = reqwest::Url::parse(&format!("http://x/?{query}"))
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.into_owned());
    Some(last)
}

/// `sha256:` followed by 64 lowercase hex digits.
/// `Malformed` unless `d` is a `sha256:<64 lowercase hex>` digest.
fn require_digest(d: &str) -> Result<(), RegistryError> {
    if valid_digest(d) {
        Ok(())
    } else {
        Err(RegistryError::Malformed(format!(
            "{d:?} is not a sha256 digest"
        )))
    }
}

pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listing pagination reads only the `last` of a `rel="next"` link; other links are not
    /// next pages.
    #[test]
    fn listing_links() {
        assert_eq!(
            next_page_last(r#"</v2/_catalog?last=a%2Fb&n=2>; rel="next""#),
            Some(Some("a/b".into()))
        );
        assert_eq!(
            next_page_last(r#"<https://evil.example/v2/x?n=1>; rel="next""#),
            Some(None)
        );
        assert_eq!(next_page_last(r#"</v2/_catalog?last=a>; rel="prev""#), None);
        assert_eq!(next_page_last("garbage"), None);
        assert_eq!(
            listing_url("http://r:5000/v2/_catalog", 7, Some("a/b c")).unwrap(),
            "http://r:5000/v2/_catalog?n=7&last=a%2Fb+c"
        );
    }

    /// Bearer challenges parse with quoted commas; Basic challenges don't.
    #[test]
    fn challenges() {
        let (realm, service) = parse_bearer_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a,b:pull""#,
        )
        .unwrap();
        assert_eq!(realm, "https://auth.example.com/token");
        assert_eq!(service.as_deref(), Some("registry.example.com"));
        assert!(parse_bearer_challenge(r#"Basic realm="Registry Realm""#).is_none());
        assert!(parse_bearer_challenge(r#"Bearer realm="file:///etc/passwd""#).is_none());
    }

    /// hosts.toml: a pull-capable host wins over `server`; no file means no override.
    #[test]
    fn hosts_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("r.local:5000")).unwrap();
        std::fs::write(
            dir.path().join("r.local:5000/hosts.toml"),
            "server = \"https://r.local:5000\"\n[host.\"http://mirror:5000\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
        )
        .unwrap();
        assert_eq!(
            hosts_toml_endpoint(dir.path(), "r.local:5000").unwrap(),
            "http://mirror:5000"
        );
        assert!(hosts_toml_endpoint(dir.path(), "other").is_none());
        assert!(hosts_toml_endpoint(dir.path(), "../etc").is_none());
    }

    /// CRI credentials map to Basic (fields or base64 `auth`) or Bearer; Debug never shows secrets.
    #[test]
    fn cri_auth_and_redaction() {
        let a = crate::cri::AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("u:s3cret"),
            ..Default::default()
        };
        let auth = Auth::from_cri(Some(&a));
        assert_eq!(
            auth,
            Auth::Basic {
                username: "u".into(),
                password: "s3cret".into()
            }
        );
        assert!(!format!("{auth:?}").contains("s3cret"));
        let t = crate::cri::AuthConfig {
            registry_token: "tok3n".into(),
            ..Default::default()
        };
        assert!(!format!("{:?}", Auth::from_cri(Some(&t))).contains("tok3n"));
        assert_eq!(Auth::from_cri(None), Auth::Anonymous);
    }

    /// `Link` headers: the `rel="next"` target among several links and parameters; others
    /// are not next pages.
    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/a/referrers/sha256:x?n=2&last=y>; rel="next""#).as_deref(),
            Some("/v2/a/referrers/sha256:x?n=2&last=y")
        );
        assert_eq!(
            next_link(r#"<https://r/v2/a?x>; rel="prev", <https://r/v2/b>; type="x"; rel=next"#)
                .as_deref(),
            Some("https://r/v2/b")
        );
        assert_eq!(next_link(r#"</v2/a>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    /// A next page is followed only on the registry that answered: a path, or a URL on the
    /// same scheme, host and port; never another host (credentials would go there).
    #[test]
    fn next_pages_stay_on_the_registry() {
        let e = "http://127.0.0.1:5000";
        assert_eq!(
            same_origin(e, "/v2/a/referrers/d?last=x", "u").unwrap(),
            "http://127.0.0.1:5000/v2/a/referrers/d?last=x"
        );
        assert!(same_origin(e, "http://127.0.0.1:5000/v2/a", "u").is_ok());
        for bad in [
            "http://127.0.0.1:50001/v2/a",
            "http://127.0.0.1:5000@evil.example/v2/a",
            "https://127.0.0.1:5000/v2/a",
            "//evil.example/v2/a",
            "v2/a",
            "/v3/a",
        ] {
            assert!(same_origin(e, bad, "u").is_err(), "{bad}");
        }
    }

    /// A referrers listing must be an OCI index (media type absent or the index type).
    #[test]
    fn referrer_listings() {
        let one = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"m","digest":"d","size":1,"artifactType":"t","annotations":{"a":"b"}}]}"#;
        let list = parse_index("p", one.as_bytes()).unwrap();
        assert_eq!(list[0].artifact_type.as_deref(), Some("t"));
        assert_eq!(list[0].annotations["a"], "b");
        assert!(parse_index("p", br#"{"manifests":[]}"#).unwrap().is_empty());
        assert!(parse_index("p", b"{}").is_err());
        let manifest =
            r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","manifests":[]}"#;
        assert!(parse_index("p", manifest.as_bytes()).is_err());
        assert!(parse_index("p", b"[]").is_err());
        assert_eq!(referrers_tag("sha256:ab"), "sha256-ab");
    }

    /// A token realm gets the credentials only on the host that was asked or a configured
    /// token host (Docker Hub's built in), and never over plain HTTP from an HTTPS registry.
    #[test]
    fn credentials_to_token_realms() {
        let r = Registry::new(RegistryConfig {
            token_hosts: BTreeMap::from([(
                "registry.gitlab.com".to_string(),
                vec!["gitlab.com".to_string()],
            )]),
            ..Default::default()
        })
        .unwrap();
        let ok = |reg, url, realm| r.may_receive_credentials(reg, url, realm);
        assert!(ok(
            "r.example",
            "https://r.example/v2/a/manifests/x",
            "https://r.example/token"
        ));
        assert!(ok(
            "r.example:5000",
            "http://r.example:5000/v2/",
            "http://r.example:5000/t"
        ));
        assert!(!ok(
            "r.example",
            "https://r.example/v2/",
            "https://evil.example/token"
        ));
        assert!(!ok(
            "r.example",
            "https://r.example/v2/",
            "http://r.example/token"
        ));
        assert!(!ok(
            "r.example",
            "https://r.example/v2/",
            "https://r.example:8443/token"
        ));
        assert!(ok(
            "docker.io",
            "https://registry-1.docker.io/v2/",
            "https://auth.docker.io/token"
        ));
        assert!(!ok(
            "ghcr.io",
            "https://ghcr.io/v2/",
            "https://auth.docker.io/token"
        ));
        assert!(ok(
            "registry.gitlab.com",
            "https://registry.gitlab.com/v2/",
            "https://gitlab.com/jwt/auth"
        ));
        assert!(!ok(
            "registry.gitlab.com",
            "https://registry.gitlab.com/v2/",
            "not a url"
        ));
    }

    /// A budget refuses the byte or blob that goes over it, and only inside its scope.
    #[tokio::test]
    async fn budget() {
        assert!(
            charge_bytes(usize::MAX / 2, "u").is_ok(),
            "no budget, no limit"
        );
        let b = Budget::new(100, 2);
        let (bytes, blobs) = b
            .clone()
            .scope(async {
                (
                    [
                        charge_bytes(60, "u"),
                        charge_bytes(40, "u"),
                        charge_bytes(1, "u"),
                    ]
                    .map(|r| r.is_ok()),
                    [charge_blob("u"), charge_blob("u"), charge_blob("u")].map(|r| r.is_ok()),
                )
            })
            .await;
        assert_eq!(bytes, [true, true, false]);
        assert_eq!(blobs, [true, true, false]);
        assert_eq!(b.bytes(), 101);
        let e = Budget::new(1, 1)
            .charge_bytes(2, "http://r/v2/x")
            .unwrap_err();
        assert!(e.to_string().contains("fetch.maxVerificationBytes"), "{e}");
    }

    /// Fingerprints differ by credentials and never contain them.
    #[test]
    fn fingerprints() {
        let a = Auth::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), Auth::Anonymous.fingerprint());
        assert_ne!(a.fingerprint(), Auth::Bearer("p".into()).fingerprint());
    }

    /// Only canonical sha256 digests are accepted.
    #[test]
    fn digests() {
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!valid_digest("sha256:abc"));
        assert!(!valid_digest("md5:x"));
    }
}
