//! The node's image policy: what an operator writes, validated once (every problem reported), and
//! the rule lookup for an image and a namespace.
//!
//! The vocabulary follows Kyverno's `verifyImages` so operators recognize it: `imageReferences`,
//! `attestors`, `count`. A policy file (TOML):
//!
//! ```toml
//! default = "enforce"            # images no rule matches: enforce (deny) | audit | skip
//! hostsDir = "/etc/containerd/certs.d"   # read containerd's hosts.toml: plain-HTTP registries, mirrors
//! nodeCredentials = "/var/lib/kubelet/config.json"  # docker config.json: registry credentials for
//!                                # checks without kubelet-sent ones (CreateContainer after a restart)
//!
//! [registries."registry.local:5000"]
//! insecure = true                # plain HTTP (also learned from hostsDir)
//! [registries."registry.gitlab.com"]
//! tokenHosts = ["gitlab.com"]    # other hosts that may get its credentials as its token service
//!                                # (auth.docker.io is built in for docker.io)
//!
//! [sandbox]                      # optional: the runtime's sandbox (pause) image
//! mode = "enforce"               # enforce: refuse RunPodSandbox while it fails the policy | warn
//! # image = "registry.k8s.io/pause:3.10"  # for runtimes that don't report it (containerd 2.x)
//!
//! [[rules]]
//! name = "pause"
//! imageReferences = ["registry.k8s.io/pause:*"]
//! mode = "skip"                  # trusted without a signature
//!
//! [[rules]]
//! name = "team-a"
//! imageReferences = ["registry.example.com/team-a/*"]
//! namespaces = ["team-a", "team-a-*"]    # optional; default: every namespace
//! mode = "enforce"               # enforce | audit
//! count = 1                      # at least this many attestors must have signed (default: all)
//! signedIdentity = "repository"  # repository | exact | any | { remapPrefix = "..", signedPrefix = ".." }
//! # signaturesRepository = "registry.example.com/signatures"   # like COSIGN_REPOSITORY
//! [[rules.attestors]]
//! name = "release"
//! key = "/etc/cri-guard/keys/release.pub"     # PEM public key: ECDSA P-256/P-384, RSA, Ed25519
//! # keyData = "-----BEGIN PUBLIC KEY-----..." # or inline
//! # rekorKey = "/etc/cri-guard/keys/rekor.pub" # require a Rekor bundle checked against this key
//! # trustedRoot = "/etc/cri-guard/trust/trusted_root.json"  # Rekor logs (required), TSAs, CT logs
//! # timestampAuthorities = "/etc/cri-guard/trust/tsa-chain.pem"  # an RFC 3161 TSA's chain
//! # minTimestamps = 1  # Sigstore bundles must carry this many verified RFC 3161 timestamps
//!
//! [[rules.attestors]]                # keyless (Fulcio): who signed, and the CA; offline
//! name = "github-release"
//! keyless = { issuer = "https://token.actions.githubusercontent.com",
//!             subjectRegExp = "^https://github.com/org/app/\\.github/workflows/release\\.yml@refs/tags/v",
//!             trustedRoot = "/etc/cri-guard/trust/trusted_root.json" }  # or roots = "fulcio-chain.pem"
//! # rekorKey = ".."   # Rekor key(s) when `roots` is used; a Rekor bundle is required, and the
//! #                   # certificate is checked at the time the log integrated the signature
//! # ignoreTlog = true # no Rekor: the certificate must be valid now
//!
//! [[rules.attestors]]                # bring-your-own PKI: certificates from your CA
//! name = "corp"
//! certificates = { roots = "corp-root.pem", intermediates = "corp-ca.pem", subject = "build@corp.example" }
//!
//! [[rules.attestations]]             # also require a signed SBOM (`cosign attest --type spdxjson`)
//! predicateType = "spdxjson"         # cosign's name or a URI
//! # attestors = ["release"]          # whose signature counts (default: any attestor of the rule)
//! [[rules.attestations]]
//! predicateType = "slsaprovenance"
//! conditions = [{ path = "builder.id", equals = "https://github.com/actions/runner" }]
//!
//! [cache]                        # optional
//! size = 10000                   # verified (repository, digest) decisions kept
//! ttl = "1h"                     # how long a positive decision is trusted
//! negativeTtl = "10s"            # how long a denial is remembered (absorbs kubelet retries)
//! resolveTtl = "30s"             # tag -> digest resolutions (never an allow key)
//!
//! [fetch]                        # optional
//! timeout = "10s"                # per registry request
//! verifyTimeout = "30s"          # whole decision; over it, the pull is denied
//! maxManifestSize = "4MiB"
//! maxSignatureSize = "1MiB"
//! maxAttestationSize = "16MiB"   # one attestation layer or bundle (an SBOM can be large)
//! maxVerificationBytes = "20MiB" # all a verification fetches (manifests and layers)
//! maxVerificationBlobs = 128     # layers a verification fetches
//! maxConcurrentVerifications = 4 # verifications running at once
//! maxQueuedVerifications = 128   # waiting for a slot; beyond: refused at once (not cached)
//! maxReferrers = 128             # OCI referrers of an image looked at (Sigstore bundles)
//! ```
//!
//! Rules are tried in order; the first whose `imageReferences` and `namespaces` match decides.
//! Images are matched in their normalized form ([`Normal`]: host in lower case without `:443`,
//! Docker Hub as `docker.io/library/..`, `path:tag` or, with a digest, `path@digest`); see
//! [`Pattern`] for how a pattern matches, and docs/policy.md for the rules side by side with
//! Kyverno's.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use oci_client::Reference;

use super::cosign::conditions;
use super::cosign::{
    Authority, CertAuthority, CertIdentity, IdentityMatch, Matcher, PublicKey, RekorKeys,
    RootBuilder, Transparency, TrustedRoot, pem_certificates,
};
use super::reference::{Normal, normal_host};
use crate::config::{ConfigErrors, parse_duration, parse_size};
use crate::registry::Auth;

/// What a rule does with the images it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Verify; deny what fails.
    Enforce,
    /// Verify; allow what fails, but log and count it.
    Audit,
    /// Trusted without verification (e.g. the pause image).
    Skip,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
            Mode::Skip => "skip",
        }
    }
}

/// One trusted signer.
#[derive(Debug)]
pub struct Attestor {
    pub name: String,
    /// The key, or the CA and identity, a signature must come from.
    pub authority: Authority,
    /// When set, the signature must come with a Rekor bundle verified against these keys.
    pub rekor: Option<RekorKeys>,
    /// For Sigstore bundles: the logs, timestamp authorities, CT logs (and Fulcio CAs) this
    /// attestor trusts, and how much of that proof a bundle must carry.
    pub transparency: Transparency,
}

/// Most RFC 3161 timestamps an attestor may require (`minTimestamps`).
pub const MAX_MIN_TIMESTAMPS: i64 = 8;

/// One rule of the policy.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub image_references: Vec<Pattern>,
    /// Namespace patterns; empty means every namespace.
    pub namespaces: Vec<String>,
    pub mode: Mode,
    pub attestors: Vec<Attestor>,
    /// How many distinct attestors must have signed.
    pub count: usize,
    pub identity: IdentityMatch,
    /// Where signatures live instead of the image's own repository (`registry/repository`).
    pub signatures_repository: Option<Reference>,
    /// Attestations the image must also have (`sha256-<hex>.att`), each one satisfied.
    pub attestations: Vec<AttestationRule>,
}

/// One required attestation: an in-toto statement of this predicate type about the image,
/// signed by one of `attestors`, whose predicate meets every condition.
#[derive(Debug)]
pub struct AttestationRule {
    /// The predicate type URI (cosign's `--type` names are expanded).
    pub predicate_type: String,
    /// Indexes into the rule's `attestors` whose signature counts.
    pub attestors: Vec<usize>,
    pub conditions: Vec<conditions::Condition>,
}

/// Per-registry settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Speak plain HTTP to it.
    pub insecure: bool,
    /// Hosts other than the registry's own that may receive its credentials as a token
    /// service (the `realm` of its bearer challenge), e.g. `auth.docker.io` for `docker.io`.
    pub token_hosts: Vec<String>,
}

/// Cache sizes and lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub size: usize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub resolve_ttl: Duration,
}

/// Registry fetch limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    pub timeout: Duration,
    pub verify_timeout: Duration,
    pub max_manifest_size: usize,
    pub max_signature_size: usize,
    /// Largest attestation layer (a DSSE envelope; SBOMs can be large).
    pub max_attestation_size: usize,
    /// Most OCI referrers of an image (all pages together) looked at; more is a denial.
    pub max_referrers: usize,
    /// Bytes one verification may fetch in all (manifests and blobs): bounds the memory a
    /// verification holds, whatever a registry lists.
    pub max_verification_bytes: usize,
    /// Blobs (signature and attestation layers) one verification may fetch.
    pub max_verification_blobs: usize,
    /// Verifications running at once; more wait in a queue.
    pub max_concurrent_verifications: usize,
    /// Verifications waiting for a slot; over it, a verification is refused at once.
    pub max_queued_verifications: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            size: 10_000,
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(10),
            resolve_ttl: Duration::from_secs(30),
        }
    }
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            timeout: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(30),
            max_manifest_size: 4 << 20,
            max_signature_size: 1 << 20,
            max_attestation_size: 16 << 20,
            max_referrers: 128,
            max_verification_bytes: 20 << 20,
            max_verification_blobs: 128,
            max_concurrent_verifications: 4,
            max_queued_verifications: 128,
        }
    }
}

/// A loaded, validated policy.
#[derive(Debug)]
pub struct Policy {
    /// Changes with every load; part of every cache key (invariant I5).
    pub generation: u64,
    pub source: String,
    pub default: Mode,
    pub rules: Vec<Rule>,
    pub registries: BTreeMap<String, RegistrySettings>,
    pub hosts_dir: Option<PathBuf>,
    /// Registry credentials of the node (from `nodeCredentials`), by registry host.
    pub node_credentials: BTreeMap<String, Auth>,
    pub cache: CacheSettings,
    pub fetch: FetchSettings,
    pub sandbox: SandboxSettings,
}

/// What RunPodSandbox does when the runtime's sandbox (pause) image fails the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Refuse RunPodSandbox (the default: the pause container is a container too).
    Enforce,
    /// Log the failure and let the sandbox run.
    Warn,
}

/// The `[sandbox]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// The runtime's sandbox image, for runtimes that do not report it over CRI before they
    /// have pulled it (containerd 2.x: `pinned_images.sandbox` of the
    /// `io.containerd.cri.v1.images` plugin).
    pub image: Option<String>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            mode: SandboxMode::Enforce,
            image: None,
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// The rule that decides for an image, or the default.
#[derive(Debug, Clone, Copy)]
pub enum Matched<'a> {
    Rule(usize, &'a Rule),
    Default(Mode),
}

impl Matched<'_> {
    pub fn mode(&self) -> Mode {
        match self {
            Matched::Rule(_, r) => r.mode,
            Matched::Default(m) => *m,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Matched::Rule(_, r) => &r.name,
            Matched::Default(_) => "(default)",
        }
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source: source.clone(),
            problems: vec![format!(
                "cannot read the policy file: {e} (check the `policy` path)"
            )],
        })?;
        let base = path.parent().unwrap_or(Path::new("/"));
        Policy::parse(&source, &text, base)
    }

    /// Validates policy `text`; relative key paths are taken from `base`.
    pub fn parse(source: &str, text: &str, base: &Path) -> Result<Policy, ConfigErrors> {
        let fail = |problems| ConfigErrors {
            source: source.to_string(),
            problems,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| fail(vec![format!("not valid TOML: {}", e.message())]))?;
        let mut p = Parser {
            problems: Vec::new(),
            base,
        };
        let policy = p.policy(source, &table);
        if p.problems.is_empty() {
            Ok(policy)
        } else {
            Err(fail(p.problems))
        }
    }

    /// The first rule matching `image` in `namespace`, else the default. The image is matched
    /// in its normalized form ([`Normal`]; see [`Pattern`] for how).
    pub fn matching(&self, image: &Reference, namespace: &str) -> Matched<'_> {
        let image = Normal::of(image);
        for (i, rule) in self.rules.iter().enumerate() {
            let image_ok = rule.image_references.iter().any(|p| p.matches(&image));
            let ns_ok = rule.namespaces.is_empty()
                || rule.namespaces.iter().any(|p| glob_match(p, namespace));
            if image_ok && ns_ok {
                return Matched::Rule(i, rule);
            }
        }
        Matched::Default(self.default)
    }

    /// Settings of `registry` (host[:port]).
    pub fn registry(&self, registry: &str) -> RegistrySettings {
        self.registries.get(registry).cloned().unwrap_or_default()
    }
}

/// Reads a docker `config.json` (`{"auths": {"host": {"auth": base64(user:pass)} | {"username",
/// "password"} | {"identitytoken"}}}`) into credentials by registry host. Errors never quote
/// the file's contents.
pub fn read_docker_config(path: &Path) -> Result<BTreeMap<String, Auth>, String> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    let auths = v
        .get("auths")
        .and_then(|a| a.as_object())
        .ok_or("no \"auths\" object")?;
    let mut out = BTreeMap::new();
    for (server, entry) in auths {
        let host = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        let host = if host == "index.docker.io" {
            "docker.io"
        } else {
            host
        };
        let field = |k: &str| {
            entry
                .get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let auth = if !field("username").is_empty() {
            Auth::Basic {
                username: field("username"),
                password: field("password"),
            }
        } else if !field("auth").is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(field("auth").trim())
                .map_err(|_| format!("the \"auth\" of {host} is not base64"))?;
            let pair = String::from_utf8(raw)
                .map_err(|_| format!("the \"auth\" of {host} is not text"))?;
            let (u, p) = pair
                .split_once(':')
                .ok_or(format!("the \"auth\" of {host} is not user:password"))?;
            Auth::Basic {
                username: u.into(),
                password: p.into(),
            }
        } else if !field("identitytoken").is_empty() {
            Auth::Bearer(field("identitytoken"))
        } else {
            return Err(format!("the entry for {host} has no credentials"));
        };
        out.insert(host.to_string(), auth);
    }
    Ok(out)
}

/// `registry/repository` of a reference, as containerd records it.
pub fn repository_of(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// One `imageReferences` pattern, compiled once.
///
/// A pattern is `HOST/REST`: its first `/`-separated component is the host part when it
/// contains `.`, `:`, `*` or `?`, is `localhost`, or has an upper-case letter (the runtime's
/// rule for references, plus wildcards); otherwise the pattern is a Docker Hub name and is
/// normalized like a reference (`nginx:*` is `docker.io/library/nginx:*`). The host part is
/// normalized like an image's host (lower case, no `:443`, Docker Hub's names as `docker.io`)
/// and matched against the image's host alone, so a wildcard there never reaches the path.
/// The rest is matched against the image's `path:tag` or `path@digest` (a digest reference
/// has no tag here) and against its path alone; `*` there spans any characters, `/` too.
/// The pattern `*` matches every image. A pattern without `/` that starts with a wildcard
/// (`*nginx*`, `*:latest`) is refused: it can only have meant any registry, so write that
/// (`*/*nginx*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written, for messages.
    pub text: String,
    /// Normalized host glob; `None` for the match-all pattern `*`.
    host: Option<String>,
    /// Glob over `path[:tag|@digest]`.
    rest: String,
}

impl Pattern {
    /// Compiles `text`, or says why it is not a pattern.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text == "*" {
            return Ok(Pattern {
                text: text.into(),
                host: None,
                rest: "*".into(),
            });
        }
        let (host, rest) = match text.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':', '*', '?'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (normal_host(first), rest.to_string())
            }
            Some(_) => ("docker.io".to_string(), text.to_string()),
            None if text.starts_with(['*', '?']) => {
                return Err(format!(
                    "pattern {text:?} starts with a wildcard but has no registry part; write the registry \
                     too, e.g. \"*/{text}\" for any registry or \"docker.io/{text}\""
                ));
            }
            None => ("docker.io".to_string(), format!("library/{text}")),
        };
        if rest.is_empty() {
            return Err(format!(
                "pattern {text:?} names no repository after the registry; add one, e.g. \"{text}*\""
            ));
        }
        Ok(Pattern {
            text: text.into(),
            host: Some(host),
            rest,
        })
    }

    /// Whether the normalized image matches.
    pub fn matches(&self, image: &Normal) -> bool {
        let Some(host) = &self.host else {
            return true;
        };
        if !glob_match(host, &image.host) {
            return false;
        }
        if glob_match(&self.rest, &image.path) {
            return true;
        }
        let mut subject = String::with_capacity(image.path.len() + image.suffix.len());
        subject.push_str(&image.path);
        subject.push_str(&image.suffix);
        glob_match(&self.rest, &subject)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Glob match: `*` any run of characters, `?` exactly one; everything else literal. Works on
/// bytes (image references and namespaces are ASCII; a non-ASCII character is several bytes,
/// which `*` spans and literal bytes compare exactly). No allocation: this runs on every call.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

const TOP_KEYS: &[&str] = &[
    "default",
    "hostsDir",
    "nodeCredentials",
    "registries",
    "rules",
    "cache",
    "fetch",
    "sandbox",
];
const RULE_KEYS: &[&str] = &[
    "name",
    "imageReferences",
    "namespaces",
    "mode",
    "attestors",
    "count",
    "signedIdentity",
    "signaturesRepository",
    "attestations",
];
const ATTESTOR_KEYS: &[&str] = &[
    "name",
    "key",
    "keyData",
    "keyless",
    "certificates",
    "rekorKey",
    "ignoreTlog",
    "trustedRoot",
    "timestampAuthorities",
    "minTimestamps",
];

struct Parser<'a> {
    problems: Vec<String>,
    base: &'a Path,
}

impl Parser<'_> {
    fn policy(&mut self, source: &str, t: &toml::Table) -> Policy {
        self.unknown("", t, TOP_KEYS);
        let default = match t.get("default") {
            None => Mode::Enforce,
            Some(v) => self.mode("`default`", v).unwrap_or(Mode::Enforce),
        };
        let hosts_dir = t
            .get("hostsDir")
            .and_then(|v| self.string("hostsDir", v))
            .map(|s| self.path(&s));
        let node_credentials = match t
            .get("nodeCredentials")
            .and_then(|v| self.string("`nodeCredentials`", v))
        {
            None => BTreeMap::new(),
            Some(s) => {
                let path = self.path(&s);
                match read_docker_config(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        self.problems
                            .push(format!("`nodeCredentials`: {}: {e}", path.display()));
                        BTreeMap::new()
                    }
                }
            }
        };
        let mut registries = BTreeMap::new();
        if let Some(v) = t.get("registries") {
            match v.as_table() {
                Some(regs) => {
                    for (name, v) in regs {
                        let key = format!("registries.\"{name}\"");
                        if name.is_empty()
                            || name.contains('/')
                            || name.contains(char::is_whitespace)
                        {
                            self.problems.push(format!(
                                "`{key}`: a registry is a host or host:port, without scheme or path"
                            ));
                        }
                        let Some(rt) = self.table(&key, v) else {
                            continue;
                        };
                        self.unknown(&format!("{key}."), rt, &["insecure", "tokenHosts"]);
                        let insecure = match rt.get("insecure") {
                            None => false,
                            Some(toml::Value::Boolean(b)) => *b,
                            Some(_) => {
                                self.problems
                                    .push(format!("`{key}.insecure` must be true or false"));
                                false
                            }
                        };
                        let token_hosts = self.patterns(
                            &format!("`{key}.tokenHosts`"),
                            rt.get("tokenHosts"),
                            false,
                        );
                        if let Some(h) = token_hosts.iter().find(|h| h.contains(['/', '*', '?'])) {
                            self.problems.push(format!(
                                "`{key}.tokenHosts`: {h:?} is not a host or host:port (no scheme, path or wildcard)"
                            ));
                        }
                        registries.insert(
                            name.clone(),
                            RegistrySettings {
                                insecure,
                                token_hosts,
                            },
                        );
                    }
                }
                None => self
                    .problems
                    .push("`registries` must be a table of registry names".into()),
            }
        }
        let mut rules = Vec::new();
        let mut names = HashSet::new();
        for (at, rt) in self.tables("", "rules", "rules", t.get("rules")) {
            if let Some(rule) = self.rule(&at, rt) {
                if !names.insert(rule.name.clone()) {
                    self.problems.push(format!(
                        "{at}: rule name {:?} is used twice; names must be unique",
                        rule.name
                    ));
                }
                rules.push(rule);
            }
        }
        let cache = self.cache(t.get("cache"));
        let fetch = self.fetch(t.get("fetch"));
        let sandbox = self.sandbox(t.get("sandbox"));
        Policy {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            source: source.to_string(),
            default,
            rules,
            registries,
            hosts_dir,
            node_credentials,
            cache,
            fetch,
            sandbox,
        }
    }

    fn sandbox(&mut self, v: Option<&toml::Value>) -> SandboxSettings {
        let mut out = SandboxSettings::default();
        let Some(t) = v.and_then(|v| self.table("sandbox", v)) else {
            return out;
        };
        self.unknown("sandbox.", t, &["mode", "image"]);
        match t.get("mode").map(|v| v.as_str()) {
            None => {}
            Some(Some("enforce")) => out.mode = SandboxMode::Enforce,
            Some(Some("warn")) => out.mode = SandboxMode::Warn,
            Some(_) => self.problems.push(format!(
                "`sandbox.mode` = {} is invalid: expected \"enforce\" or \"warn\"",
                t["mode"]
            )),
        }
        if let Some(v) = t.get("image") {
            if let Some(s) = self.string("`sandbox.image`", v) {
                match super::reference::parse(&s) {
                    Ok(_) => out.image = Some(s),
                    Err(e) => self.problems.push(format!(
                        "`sandbox.image` = {s:?} is not an image reference: {e}"
                    )),
                }
            }
        }
        out
    }

    fn rule(&mut self, at: &str, t: &toml::Table) -> Option<Rule> {
        self.unknown(&format!("{at}."), t, RULE_KEYS);
        let before = self.problems.len();
        let name = match t
            .get("name")
            .and_then(|v| self.string(&format!("{at}.name"), v))
        {
            Some(n) if !n.is_empty() => n,
            _ => {
                if !t.contains_key("name") {
                    self.problems
                        .push(format!("{at}: every rule needs a `name`"));
                }
                format!(
                    "rules[{}]",
                    at.trim_start_matches("rules[").trim_end_matches(']')
                )
            }
        };
        let at = format!("rule {name:?}");
        let image_references = self
            .patterns(
                &format!("{at}: `imageReferences`"),
                t.get("imageReferences"),
                true,
            )
            .into_iter()
            .filter_map(|p| match Pattern::parse(&p) {
                Ok(p) => Some(p),
                Err(e) => {
                    self.problems.push(format!("{at}: `imageReferences`: {e}"));
                    None
                }
            })
            .collect();
        let namespaces = self.patterns(&format!("{at}: `namespaces`"), t.get("namespaces"), false);
        let mode = match t.get("mode") {
            None => Mode::Enforce,
            Some(v) => self
                .mode(&format!("{at}: `mode`"), v)
                .unwrap_or(Mode::Enforce),
        };
        let mut attestors = Vec::new();
        let mut attestor_names = HashSet::new();
        for (aat, at_t) in self.tables(&at, "attestors", "rules.attestors", t.get("attestors")) {
            if let Some(a) = self.attestor(&aat, at_t) {
                if !attestor_names.insert(a.name.clone()) {
                    self.problems.push(format!(
                        "{aat}: attestor name {:?} is used twice in this rule",
                        a.name
                    ));
                }
                attestors.push(a);
            }
        }
        if mode != Mode::Skip && attestors.is_empty() && !t.contains_key("attestors") {
            self.problems.push(format!(
                "{at}: mode {} needs at least one attestor ([[rules.attestors]] with a `key`), or use mode = \"skip\"",
                mode.as_str()
            ));
        }
        let count = match t.get("count") {
            None => attestors.len().max(1),
            Some(toml::Value::Integer(n)) if *n >= 1 && (*n as usize) <= attestors.len().max(1) => {
                *n as usize
            }
            Some(v) => {
                self.problems.push(format!(
                    "{at}: `count` = {v} is invalid: expected a whole number from 1 to the number of attestors ({})",
                    attestors.len()
                ));
                1
            }
        };
        let identity = match t.get("signedIdentity") {
            None => IdentityMatch::Repository,
            Some(v) => self.identity(&at, v),
        };
        let signatures_repository = t.get("signaturesRepository").and_then(|v| {
            let s = self.string(&format!("{at}: `signaturesRepository`"), v)?;
            let last = s.rsplit('/').next().unwrap_or("");
            match s.parse::<Reference>() {
                Ok(r) if !s.contains('@') && !last.contains(':') => Some(r),
                _ => {
                    self.problems.push(format!(
                        "{at}: `signaturesRepository` = {s:?} is not a repository (expected registry/path, without tag or digest)"
                    ));
                    None
                }
            }
        });
        let attestations = self.attestations(
            &at,
            t.get("attestations"),
            &attestors,
            t.contains_key("attestors"),
        );
        (self.problems.len() == before).then_some(Rule {
            name,
            image_references,
            namespaces,
            mode,
            attestors,
            count,
            identity,
            signatures_repository,
            attestations,
        })
    }

    fn attestor(&mut self, at: &str, t: &toml::Table) -> Option<Attestor> {
        self.unknown(&format!("{at}."), t, ATTESTOR_KEYS);
        let name = t
            .get("name")
            .and_then(|v| self.string(&format!("{at}.name"), v));
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            self.problems
                .push(format!("{at}: every attestor needs a `name`"));
            return None;
        };
        let at = format!("{at} ({name})");
        let kinds: Vec<&str> = ["key", "keyData", "keyless", "certificates"]
            .into_iter()
            .filter(|k| t.contains_key(*k))
            .collect();
        if kinds.len() != 1 {
            self.problems.push(format!(
                "{at}: give exactly one of `key` (a PEM public key file), `keyData` (inline PEM), `keyless` (Fulcio certificates: {{ issuer, subject, roots or trustedRoot }}) or `certificates` (your own CA: {{ roots, subject }}){}",
                if kinds.is_empty() {
                    String::new()
                } else {
                    format!("; found {}", kinds.join(" and "))
                }
            ));
            return None;
        }
        let ignore_tlog = match t.get("ignoreTlog") {
            None => false,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                self.problems
                    .push(format!("{at}: `ignoreTlog` = {v} must be true or false"));
                return None;
            }
        };
        if ignore_tlog && t.contains_key("rekorKey") {
            self.problems.push(format!(
                "{at}: `rekorKey` and `ignoreTlog = true` contradict each other; remove one"
            ));
            return None;
        }
        let mut rekor = match t.get("rekorKey") {
            None => None,
            Some(v) => {
                let s = self.string(&format!("{at}: `rekorKey`"), v)?;
                let path = self.path(&s);
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| {
                        RekorKeys::from_pems([pem.as_slice()]).map_err(|e| e.to_string())
                    }) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        self.problems
                            .push(format!("{at}: Rekor key {}: {e}", path.display()));
                        return None;
                    }
                }
            }
        };
        let rekor_from_pem = rekor.clone();
        let mut root = match t.get("trustedRoot") {
            None => None,
            Some(_) if kinds[0] == "keyless" => {
                self.problems.push(format!(
                    "{at}: for a keyless attestor the trusted root goes inside its table: keyless = {{ ..., trustedRoot = \"...\" }}"
                ));
                return None;
            }
            Some(v) => Some(self.trusted_root(&at, v)?),
        };
        let tsa_chain = match t.get("timestampAuthorities") {
            None => None,
            Some(v) => {
                let s = self.string(&format!("{at}: `timestampAuthorities`"), v)?;
                let pem = self.read_file(&at, "timestampAuthorities file", &s)?;
                match pem_certificates(&s, &pem) {
                    Ok(certs) if !certs.is_empty() => Some(certs),
                    Ok(_) => {
                        self.problems.push(format!(
                            "{at}: `timestampAuthorities` {s}: no CERTIFICATE block found (the TSA's certificate chain, its signing certificate first)"
                        ));
                        return None;
                    }
                    Err(e) => {
                        self.problems
                            .push(format!("{at}: `timestampAuthorities`: {e}"));
                        return None;
                    }
                }
            }
        };
        let min_timestamps = match t.get("minTimestamps") {
            None => 0,
            Some(toml::Value::Integer(n)) if (0..=MAX_MIN_TIMESTAMPS).contains(n) => *n as usize,
            Some(v) => {
                self.problems.push(format!(
                    "{at}: `minTimestamps` = {v} is invalid: expected a whole number from 0 to {MAX_MIN_TIMESTAMPS} (how many RFC 3161 timestamps a Sigstore bundle must carry)"
                ));
                return None;
            }
        };
        if rekor.is_none() && !ignore_tlog {
            rekor = root
                .as_ref()
                .map(|r| r.rekor_keys().clone())
                .filter(|k| !k.is_empty());
        }
        let authority = match kinds[0] {
            "key" | "keyData" => {
                let pem = match (t.get("key"), t.get("keyData")) {
                    (Some(k), _) => {
                        let s = self.string(&format!("{at}: `key`"), k)?;
                        self.read_file(&at, "key file", &s)?
                    }
                    (_, Some(d)) => self.string(&format!("{at}: `keyData`"), d)?.into_bytes(),
                    _ => return None,
                };
                match PublicKey::from_pem(&name, &pem) {
                    Ok(k) => Authority::Key(k),
                    Err(e) => {
                        self.problems.push(format!("{at}: {e}"));
                        return None;
                    }
                }
            }
            kind => {
                let keyless = kind == "keyless";
                let key = format!("{at}: `{kind}`");
                let ct = self.table(&key, &t[kind])?;
                let (ca, keyless_root) = self.cert_authority(&key, &name, ct, keyless)?;
                if rekor.is_none() && !ignore_tlog {
                    rekor = keyless_root
                        .as_ref()
                        .map(|r| r.rekor_keys().clone())
                        .filter(|k| !k.is_empty());
                }
                if keyless_root.is_some() {
                    root = keyless_root;
                }
                if keyless && rekor.is_none() && !ignore_tlog {
                    self.problems.push(format!(
                        "{at}: keyless signatures need the transparency log to prove when they were made (Fulcio certificates expire after 10 minutes): set `rekorKey` (the Rekor public key file) or `keyless.trustedRoot`, or set `ignoreTlog = true` to check certificates at the current time instead"
                    ));
                    return None;
                }
                Authority::Certificates(ca)
            }
        };
        let transparency = self.transparency(
            &at,
            &authority,
            kinds[0] == "keyless",
            root.as_ref(),
            rekor_from_pem.as_ref(),
            tsa_chain.as_deref(),
            rekor.is_some(),
            min_timestamps,
        )?;
        Some(Attestor {
            name,
            authority,
            rekor,
            transparency,
        })
    }

    /// A `trustedRoot` file.
    fn trusted_root(&mut self, at: &str, v: &toml::Value) -> Option<TrustedRoot> {
        let s = self.string(&format!("{at}.trustedRoot"), v)?;
        let bytes = self.read_file(at, "trustedRoot file", &s)?;
        match TrustedRoot::from_json(&s, &bytes) {
            Ok(tr) => Some(tr),
            Err(e) => {
                self.problems.push(format!("{at}: {e}"));
                None
            }
        }
    }

    /// What an attestor checks a Sigstore bundle's proofs with: its trusted root, plus the
    /// Rekor keys and TSA chain given as PEM, plus (keyless, from PEM) the Fulcio chain as a
    /// CA. Certificates of your own PKI are checked by cri-guard's chain code, so their CAs are
    /// not handed to the bundle verifier.
    #[allow(clippy::too_many_arguments)]
    fn transparency(
        &mut self,
        at: &str,
        authority: &Authority,
        keyless: bool,
        root: Option<&TrustedRoot>,
        rekor_pem: Option<&RekorKeys>,
        tsa_chain: Option<&[Vec<u8>]>,
        require_tlog: bool,
        min_timestamps: usize,
    ) -> Option<Transparency> {
        let mut builder = match root.map(|r| RootBuilder::from_root(r.sigstore())) {
            None => RootBuilder::default(),
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                self.problems.push(format!("{at}: {e}"));
                return None;
            }
        };
        for key in rekor_pem.into_iter().flat_map(RekorKeys::keys) {
            builder.rekor_key(key.name(), key);
        }
        match authority {
            Authority::Certificates(ca) if root.is_none() && keyless => {
                let chain: Vec<Vec<u8>> = ca
                    .intermediates()
                    .iter()
                    .chain(ca.roots())
                    .cloned()
                    .collect();
                builder.certificate_authority(&ca.name, &chain);
            }
            Authority::Certificates(_) if !keyless => {
                builder = builder.without_certificate_authorities();
            }
            _ => {}
        }
        if let Some(chain) = tsa_chain {
            builder.timestamp_authority(authority.name(), chain);
        }
        let material = match builder.build() {
            Ok(r) => r,
            Err(e) => {
                self.problems.push(format!("{at}: {e}"));
                return None;
            }
        };
        let empty = material.tlogs.is_empty()
            && material.timestamp_authorities.is_empty()
            && material.certificate_authorities.is_empty();
        let transparency = if empty {
            let mut t = Transparency::none();
            t.require_tlog = require_tlog;
            t.min_timestamps = min_timestamps;
            t
        } else {
            match Transparency::new(at, &material, require_tlog, min_timestamps) {
                Ok(t) => t,
                Err(e) => {
                    self.problems.push(e);
                    return None;
                }
            }
        };
        if min_timestamps > 0 && transparency.timestamp_authorities() == 0 {
            self.problems.push(format!(
                "{at}: `minTimestamps` = {min_timestamps} needs timestamp authorities to check them with: set `timestampAuthorities` (the TSA's certificate chain, PEM) or a trustedRoot that lists timestampAuthorities"
            ));
            return None;
        }
        Some(transparency)
    }

    /// A `keyless` or `certificates` table: the CA (and the trustedRoot it came from).
    fn cert_authority(
        &mut self,
        at: &str,
        name: &str,
        t: &toml::Table,
        keyless: bool,
    ) -> Option<(CertAuthority, Option<TrustedRoot>)> {
        let trust = if keyless {
            "trustedRoot"
        } else {
            "intermediates"
        };
        let known = [
            "subject",
            "subjectRegExp",
            "issuer",
            "issuerRegExp",
            "roots",
            trust,
        ];
        let before = self.problems.len();
        self.unknown(&format!("{at}."), t, &known);
        let subject = self.matcher(at, t, "subject");
        let issuer = self.matcher(at, t, "issuer");
        let matchers_ok = self.problems.len() == before;
        if subject.is_none() && matchers_ok && !t.contains_key("subjectRegExp") {
            self.problems.push(format!(
                "{at}: needs `subject` or `subjectRegExp`: the certificate identity (an email, or a workflow URI such as \"https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main\"); use subjectRegExp = \".*\" only if any identity of this CA is acceptable"
            ));
        }
        if keyless
            && issuer.is_none()
            && !t.contains_key("issuer")
            && !t.contains_key("issuerRegExp")
        {
            self.problems.push(format!(
                "{at}: needs `issuer` or `issuerRegExp`: the OIDC issuer of the identity, e.g. \"https://token.actions.githubusercontent.com\" or \"https://accounts.google.com\""
            ));
        }
        let mut roots_pem = None;
        if let Some(v) = t.get("roots") {
            let s = self.string(&format!("{at}.roots"), v)?;
            roots_pem = Some((self.read_file(at, "roots file", &s)?, s));
        }
        let mut intermediates_pem = None;
        if let Some(v) = t.get("intermediates") {
            let s = self.string(&format!("{at}.intermediates"), v)?;
            intermediates_pem = Some((self.read_file(at, "intermediates file", &s)?, s));
        }
        let mut trusted = None;
        if let Some(v) = t.get("trustedRoot") {
            let s = self.string(&format!("{at}.trustedRoot"), v)?;
            let bytes = self.read_file(at, "trustedRoot file", &s)?;
            match TrustedRoot::from_json(&s, &bytes) {
                Ok(tr) => trusted = Some(tr),
                Err(e) => {
                    self.problems.push(format!("{at}: {e}"));
                    return None;
                }
            }
        }
        if self.problems.len() != before {
            return None;
        }
        let identity = CertIdentity { subject, issuer };
        let built = match (roots_pem, trusted) {
            (Some(_), Some(_)) => Err(
                "give either `roots` (PEM certificates) or `trustedRoot` (a sigstore trusted_root.json), not both".to_string(),
            ),
            (None, None) => Err(if keyless {
                "needs `roots` (the Fulcio root and intermediate certificates, PEM) or `trustedRoot` (a sigstore trusted_root.json); nothing is downloaded".to_string()
            } else {
                "needs `roots`: your CA's root certificates (PEM)".to_string()
            }),
            // A keyless `roots` file is typically Fulcio's chain (intermediate + root):
            // self-signed certificates become anchors, the others intermediates.
            (Some((roots, label)), None) if keyless => {
                CertAuthority::from_bundle_pem(name, &label, &roots, identity).map(|ca| (ca, None))
            }
            (Some((roots, label)), None) => CertAuthority::from_named_pems(
                name,
                (&label, &roots),
                intermediates_pem
                    .as_ref()
                    .map(|(pem, l)| (l.as_str(), pem.as_slice())),
                identity,
            )
            .map(|ca| (ca, None)),
            (None, Some(tr)) => tr.cert_authority(name, identity).map(|ca| (ca, Some(tr))),
        };
        match built {
            Ok(x) => Some(x),
            Err(e) => {
                self.problems.push(format!("{at}: {e}"));
                None
            }
        }
    }

    /// `field` (exact) or `field` + `RegExp` (regular expression), at most one of them.
    fn matcher(&mut self, at: &str, t: &toml::Table, field: &str) -> Option<Matcher> {
        let re_key = format!("{field}RegExp");
        match (t.get(field), t.get(&re_key)) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                self.problems
                    .push(format!("{at}: give `{field}` or `{re_key}`, not both"));
                None
            }
            (Some(v), None) => {
                let s = self.string(&format!("{at}: `{field}`"), v)?;
                if s.is_empty() {
                    self.problems
                        .push(format!("{at}: `{field}` must not be empty"));
                    return None;
                }
                Some(Matcher::Exact(s))
            }
            (None, Some(v)) => {
                let s = self.string(&format!("{at}: `{re_key}`"), v)?;
                match regex::Regex::new(&s) {
                    Ok(re) => Some(Matcher::Regex(re)),
                    Err(e) => {
                        // regex's message draws a caret diagram; its last line says what is wrong.
                        let e = e.to_string();
                        let why = e.lines().last().unwrap_or("").trim_start_matches("error: ");
                        self.problems.push(format!(
                            "{at}: `{re_key}` = {s:?} is not a valid regular expression: {why}"
                        ));
                        None
                    }
                }
            }
        }
    }

    /// Reads a file named in the policy (relative to the policy's folder).
    fn read_file(&mut self, at: &str, what: &str, s: &str) -> Option<Vec<u8>> {
        let path = self.path(s);
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                self.problems
                    .push(format!("{at}: cannot read {what} {}: {e}", path.display()));
                None
            }
        }
    }

    /// `[[rules.attestations]]`: required attestations, their signers and conditions.
    fn attestations(
        &mut self,
        at: &str,
        v: Option<&toml::Value>,
        attestors: &[Attestor],
        attestors_declared: bool,
    ) -> Vec<AttestationRule> {
        let mut out = Vec::new();
        for (aat, t) in self.tables(at, "attestations", "rules.attestations", v) {
            self.unknown(
                &format!("{aat}."),
                t,
                &["predicateType", "attestors", "conditions"],
            );
            let Some(pt) = t
                .get("predicateType")
                .and_then(|v| self.string(&format!("{aat}.predicateType"), v))
                .filter(|s| !s.is_empty())
            else {
                if !t.contains_key("predicateType") {
                    self.problems.push(format!(
                        "{aat}: needs `predicateType`: a URI, or one of cosign's names spdxjson, cyclonedx, slsaprovenance, slsaprovenance1, vuln, openvex, custom"
                    ));
                }
                continue;
            };
            let predicate_type = conditions::predicate_type(&pt).to_string();
            let mut signers = Vec::new();
            match t.get("attestors") {
                None => signers.extend(0..attestors.len()),
                Some(toml::Value::Array(names)) if !names.is_empty() => {
                    for n in names {
                        match n
                            .as_str()
                            .and_then(|n| attestors.iter().position(|a| a.name == n))
                        {
                            Some(idx) => signers.push(idx),
                            None => self.problems.push(format!(
                                "{aat}.attestors: {n} is not the name of one of this rule's attestors ({})",
                                attestors
                                    .iter()
                                    .map(|a| a.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        }
                    }
                }
                Some(v) => self.problems.push(format!(
                    "{aat}.attestors = {v} must be a non-empty list of this rule's attestor names"
                )),
            }
            // Attestors that failed to load are already reported; don't pile on.
            if signers.is_empty() && !t.contains_key("attestors") && !attestors_declared {
                self.problems.push(format!(
                    "{aat}: the rule has no attestors to sign it; add [[rules.attestors]]"
                ));
            }
            let mut conditions = Vec::new();
            match t.get("conditions") {
                None => {}
                Some(toml::Value::Array(cs)) => {
                    for (j, c) in cs.iter().enumerate() {
                        match conditions::Condition::from_toml(&format!("{aat}.conditions[{j}]"), c) {
                            Ok(c) => conditions.push(c),
                            Err(e) => self.problems.push(e),
                        }
                    }
                }
                Some(_) => self.problems.push(format!(
                    "{aat}.conditions must be an array of tables ([[rules.attestations.conditions]])"
                )),
            }
            out.push(AttestationRule {
                predicate_type,
                attestors: signers,
                conditions,
            });
        }
        out
    }

    fn identity(&mut self, at: &str, v: &toml::Value) -> IdentityMatch {
        match v {
            toml::Value::String(s) if s == "repository" => IdentityMatch::Repository,
            toml::Value::String(s) if s == "exact" => IdentityMatch::Exact,
            toml::Value::String(s) if s == "any" => IdentityMatch::Any,
            toml::Value::Table(t) if t.len() == 2 => {
                match (
                    t.get("remapPrefix").and_then(|v| v.as_str()),
                    t.get("signedPrefix").and_then(|v| v.as_str()),
                ) {
                    (Some(p), Some(s)) if !p.is_empty() && !s.is_empty() => {
                        IdentityMatch::RemapPrefix {
                            prefix: p.to_string(),
                            signed_prefix: s.to_string(),
                        }
                    }
                    _ => {
                        self.problems.push(format!("{at}: `signedIdentity` table needs non-empty `remapPrefix` and `signedPrefix` strings"));
                        IdentityMatch::Repository
                    }
                }
            }
            _ => {
                self.problems.push(format!(
                    "{at}: `signedIdentity` = {v} is invalid: expected \"repository\", \"exact\", \"any\" or {{ remapPrefix = \"..\", signedPrefix = \"..\" }}"
                ));
                IdentityMatch::Repository
            }
        }
    }

    fn cache(&mut self, v: Option<&toml::Value>) -> CacheSettings {
        let d = CacheSettings::default();
        let Some(t) = v.and_then(|v| self.table("cache", v)) else {
            return d;
        };
        self.unknown("cache.", t, &["size", "ttl", "negativeTtl", "resolveTtl"]);
        CacheSettings {
            size: match t.get("size") {
                None => d.size,
                Some(toml::Value::Integer(n)) if (1..=10_000_000).contains(n) => *n as usize,
                Some(v) => {
                    self.problems.push(format!(
                        "`cache.size` = {v} is invalid: expected 1 to 10000000"
                    ));
                    d.size
                }
            },
            ttl: self.duration("cache.ttl", t.get("ttl"), d.ttl),
            negative_ttl: self.duration("cache.negativeTtl", t.get("negativeTtl"), d.negative_ttl),
            resolve_ttl: self.duration("cache.resolveTtl", t.get("resolveTtl"), d.resolve_ttl),
        }
    }

    fn fetch(&mut self, v: Option<&toml::Value>) -> FetchSettings {
        let d = FetchSettings::default();
        let Some(t) = v.and_then(|v| self.table("fetch", v)) else {
            return d;
        };
        self.unknown(
            "fetch.",
            t,
            &[
                "timeout",
                "verifyTimeout",
                "maxManifestSize",
                "maxSignatureSize",
                "maxAttestationSize",
                "maxReferrers",
                "maxVerificationBytes",
                "maxVerificationBlobs",
                "maxConcurrentVerifications",
                "maxQueuedVerifications",
            ],
        );
        let count = |p: &mut Self, key: &str, d: usize, max: usize| match t.get(key) {
            None => d,
            Some(toml::Value::Integer(n)) if *n >= 1 && *n as u64 <= max as u64 => *n as usize,
            Some(v) => {
                p.problems.push(format!(
                    "`fetch.{key}` = {v} is invalid: expected a whole number from 1 to {max}"
                ));
                d
            }
        };
        let max_verification_blobs =
            count(self, "maxVerificationBlobs", d.max_verification_blobs, 1024);
        let max_concurrent_verifications = count(
            self,
            "maxConcurrentVerifications",
            d.max_concurrent_verifications,
            256,
        );
        let max_queued_verifications = count(
            self,
            "maxQueuedVerifications",
            d.max_queued_verifications,
            1 << 16,
        );
        FetchSettings {
            max_verification_bytes: self.size(
                "fetch.maxVerificationBytes",
                t.get("maxVerificationBytes"),
                d.max_verification_bytes,
            ),
            max_verification_blobs,
            max_concurrent_verifications,
            max_queued_verifications,
            timeout: self.duration("fetch.timeout", t.get("timeout"), d.timeout),
            verify_timeout: self.duration(
                "fetch.verifyTimeout",
                t.get("verifyTimeout"),
                d.verify_timeout,
            ),
            max_manifest_size: self.size(
                "fetch.maxManifestSize",
                t.get("maxManifestSize"),
                d.max_manifest_size,
            ),
            max_signature_size: self.size(
                "fetch.maxSignatureSize",
                t.get("maxSignatureSize"),
                d.max_signature_size,
            ),
            max_attestation_size: self.size(
                "fetch.maxAttestationSize",
                t.get("maxAttestationSize"),
                d.max_attestation_size,
            ),
            max_referrers: match t.get("maxReferrers") {
                None => d.max_referrers,
                Some(toml::Value::Integer(n)) if (1..=4096).contains(n) => *n as usize,
                Some(v) => {
                    self.problems.push(format!(
                        "`fetch.maxReferrers` = {v} is invalid: expected 1 to 4096"
                    ));
                    d.max_referrers
                }
            },
        }
    }

    fn duration(&mut self, key: &str, v: Option<&toml::Value>, d: Duration) -> Duration {
        let Some(v) = v else { return d };
        match v.as_str().and_then(parse_duration).filter(|d| !d.is_zero()) {
            Some(x) => x,
            None => {
                self.problems.push(format!(
                    "`{key}` = {v} is invalid: expected a positive duration such as \"30s\""
                ));
                d
            }
        }
    }

    fn size(&mut self, key: &str, v: Option<&toml::Value>, d: usize) -> usize {
        let Some(v) = v else { return d };
        match v
            .as_str()
            .and_then(parse_size)
            .filter(|n| (1024..=(64 << 20)).contains(n))
        {
            Some(x) => x,
            None => {
                self.problems.push(format!(
                    "`{key}` = {v} is invalid: expected a size from \"1KiB\" to \"64MiB\""
                ));
                d
            }
        }
    }

    fn mode(&mut self, key: &str, v: &toml::Value) -> Option<Mode> {
        match v.as_str() {
            Some("enforce") => Some(Mode::Enforce),
            Some("audit") => Some(Mode::Audit),
            Some("skip") => Some(Mode::Skip),
            _ => {
                self.problems.push(format!(
                    "{key} = {v} is invalid: expected \"enforce\", \"audit\" or \"skip\""
                ));
                None
            }
        }
    }

    fn patterns(&mut self, key: &str, v: Option<&toml::Value>, required: bool) -> Vec<String> {
        let Some(v) = v else {
            if required {
                self.problems.push(format!("{key} is required: a list of image patterns such as [\"registry.example.com/team/*\"]"));
            }
            return Vec::new();
        };
        let Some(items) = v.as_array() else {
            self.problems
                .push(format!("{key} must be a list of strings"));
            return Vec::new();
        };
        if required && items.is_empty() {
            self.problems.push(format!("{key} must not be empty"));
        }
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(s)
                    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    self.problems.push(format!(
                        "{key}: pattern {s:?} is empty or contains white space"
                    ));
                }
                Some(s) => out.push(s.to_string()),
                None => self.problems.push(format!("{key}: {item} is not a string")),
            }
        }
        out
    }

    fn unknown(&mut self, prefix: &str, t: &toml::Table, known: &[&str]) {
        for k in t.keys().filter(|k| !known.contains(&k.as_str())) {
            self.problems.push(format!(
                "unknown key `{prefix}{k}` (known: {})",
                known.join(", ")
            ));
        }
    }

    /// The tables of an array of tables (`[[header]]`) at `key`, each with its place for
    /// messages (`key[i]`, after `at`); anything else there is reported.
    fn tables<'t>(
        &mut self,
        at: &str,
        key: &str,
        header: &str,
        v: Option<&'t toml::Value>,
    ) -> Vec<(String, &'t toml::Table)> {
        let prefix = if at.is_empty() {
            String::new()
        } else {
            format!("{at}: ")
        };
        let Some(v) = v else { return Vec::new() };
        let Some(items) = v.as_array() else {
            self.problems.push(format!(
                "{prefix}`{key}` must be an array of tables ([[{header}]])"
            ));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let place = format!("{prefix}{key}[{i}]");
            if let Some(t) = self.table(&place, item) {
                out.push((place, t));
            }
        }
        out
    }

    fn table<'t>(&mut self, key: &str, v: &'t toml::Value) -> Option<&'t toml::Table> {
        let t = v.as_table();
        if t.is_none() {
            self.problems.push(format!("`{key}` must be a table"));
        }
        t
    }

    fn string(&mut self, key: &str, v: &toml::Value) -> Option<String> {
        let s = v.as_str().map(str::to_string);
        if s.is_none() {
            self.problems.push(format!("{key} must be a string"));
        }
        s
    }

    fn path(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcYt2jTWMCJ7ctLlUBHnhfOhbbyPs
X4fK9ZxkwNcbhVwBA+hrDMm/S/QAtJAiBB3WJj9mvV0JVBLhjypRtXIiyw==
-----END PUBLIC KEY-----";

    fn parse(text: &str) -> Result<Policy, ConfigErrors> {
        Policy::parse("p.toml", text, Path::new("/nonexistent"))
    }

    /// Globs: `*` spans any characters, `?` one; literal otherwise.
    #[test]
    fn globs() {
        assert!(glob_match(
            "registry.example.com/team/*",
            "registry.example.com/team/app:v1"
        ));
        assert!(glob_match(
            "registry.example.com/team/*",
            "registry.example.com/team/a/b"
        ));
        assert!(!glob_match(
            "registry.example.com/team/*",
            "registry.example.com/other/app"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("team-*", "team-a"));
        assert!(!glob_match("team-*", "team"));
        assert!(glob_match("*/pause:*", "registry.k8s.io/pause:3.9"));
    }

    /// Rules match in order, by image and namespace; unmatched images get the default.
    #[test]
    fn rule_order_and_namespaces() {
        let p = parse(&format!(
            r#"
            default = "audit"
            [[rules]]
            name = "pause"
            imageReferences = ["registry.k8s.io/pause*"]
            mode = "skip"
            [[rules]]
            name = "team"
            imageReferences = ["example.com/team/*"]
            namespaces = ["a", "a-*"]
            [[rules.attestors]]
            name = "k"
            keyData = """{KEY}"""
            "#
        ))
        .unwrap();
        let r = |s: &str| s.parse::<Reference>().unwrap();
        assert_eq!(
            p.matching(&r("registry.k8s.io/pause:3.9"), "x").name(),
            "pause"
        );
        assert_eq!(
            p.matching(&r("example.com/team/app:1"), "a-prod").name(),
            "team"
        );
        assert_eq!(
            p.matching(&r("example.com/team/app:1"), "b").name(),
            "(default)"
        );
        assert_eq!(
            p.matching(&r("example.com/team/app:1"), "b").mode(),
            Mode::Audit
        );
        assert_eq!(p.matching(&r("busybox"), "a").mode(), Mode::Audit);
    }

    /// Every problem in a policy is reported at once with where it is.
    #[test]
    fn all_problems_at_once() {
        let e = parse(
            r#"
            default = "deny"
            colour = 1
            [[rules]]
            name = "a"
            imageReferences = []
            mode = "enforce"
            [[rules]]
            name = "a"
            imageReferences = ["x/*"]
            count = 3
            [[rules.attestors]]
            name = "k"
            key = "missing.pub"
            [[rules]]
            name = "c"
            imageReferences = ["y/*"]
            signedIdentity = "loose"
            [[rules.attestors]]
            name = "bad"
            keyData = "not a key"
            "#,
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "`default` = \"deny\"",
            "unknown key `colour`",
            "must not be empty",
            "needs at least one attestor",
            "cannot read key file /nonexistent/missing.pub",
            "`signedIdentity`",
            "(bad)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
        }
    }

    /// Duplicate rule names are refused.
    #[test]
    fn duplicate_names() {
        let e = parse(
            r#"
            [[rules]]
            name = "a"
            imageReferences = ["x"]
            mode = "skip"
            [[rules]]
            name = "a"
            imageReferences = ["y"]
            mode = "skip"
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    /// docker config.json credentials: base64 `auth`, user/password, scheme-prefixed hosts; errors
    /// never quote secrets.
    #[test]
    fn docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dTpwdw=="}, "r.local:5000": {"username": "a", "password": "b"}}}"#,
        )
        .unwrap();
        let c = read_docker_config(&f).unwrap();
        assert_eq!(
            c["docker.io"],
            Auth::Basic {
                username: "u".into(),
                password: "pw".into()
            }
        );
        assert_eq!(
            c["r.local:5000"],
            Auth::Basic {
                username: "a".into(),
                password: "b".into()
            }
        );
        std::fs::write(&f, r#"{"auths": {"x": {"auth": "c2VjcmV0LW5vLWNvbG9u"}}}"#).unwrap();
        let e = read_docker_config(&f).unwrap_err();
        assert!(e.contains("user:password") && !e.contains("secret"), "{e}");
    }

    /// Each load gets a new generation.
    /// Certificate attestors: every missing or contradictory piece is named, all at once.
    #[test]
    fn certificate_attestor_problems() {
        let e = parse(&format!(
            r#"
[[rules]]
name = "r"
imageReferences = ["a/*"]
[[rules.attestors]]
name = "no-identity"
keyless = {{ roots = "fulcio.pem" }}
[[rules.attestors]]
name = "bad-regex"
keyless = {{ subjectRegExp = "(", issuer = "https://accounts.google.com", roots = "f.pem" }}
[[rules.attestors]]
name = "both"
keyData = """{KEY}"""
keyless = {{ subject = "a@b", issuer = "i" }}
[[rules.attestors]]
name = "no-roots"
certificates = {{ subject = "a@b" }}
[[rules.attestors]]
name = "contradiction"
keyData = """{KEY}"""
ignoreTlog = true
rekorKey = "rekor.pub"
"#
        ))
        .unwrap_err();
        let all = e.problems.join("\n");
        assert!(
            all.contains("(no-identity): `keyless`: needs `subject` or `subjectRegExp`"),
            "{all}"
        );
        assert!(
            all.contains("(no-identity): `keyless`: needs `issuer` or `issuerRegExp`"),
            "{all}"
        );
        assert!(
            all.contains(
                "`subjectRegExp` = \"(\" is not a valid regular expression: unclosed group"
            ),
            "{all}"
        );
        assert!(all.contains("(both): give exactly one of `key`"), "{all}");
        assert!(all.contains("found keyData and keyless"), "{all}");
        assert!(
            all.contains("(no-roots): `certificates`: needs `roots`"),
            "{all}"
        );
        assert!(
            all.contains("(contradiction): `rekorKey` and `ignoreTlog = true`"),
            "{all}"
        );
    }

    /// Proof knobs for Sigstore bundles: an attestor-level trustedRoot gives Rekor logs
    /// (required unless ignoreTlog) and TSAs; `timestampAuthorities` adds a TSA chain;
    /// `minTimestamps` needs TSAs and a small whole number; a keyless trusted root belongs in
    /// its table. Every misuse is named.
    #[test]
    fn bundle_proof_knobs() {
        use crate::verify::cosign::trust::certificates::tests::{Spec, make};
        let dir = tempfile::tempdir().unwrap();
        let key = PublicKey::from_pem("rekor", KEY.as_bytes()).unwrap();
        let mut root = RootBuilder::default();
        root.rekor_key("rekor", &key);
        let root = serde_json::to_string(&root.build().unwrap()).unwrap();
        std::fs::write(dir.path().join("root.json"), root).unwrap();
        let tsa = make(&Spec::ca("tsa"), None);
        std::fs::write(dir.path().join("tsa.pem"), tsa.pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "no certificates here\n").unwrap();
        let policy = |attestors: &str| {
            Policy::parse(
                "p.toml",
                &format!("[[rules]]\nname = \"r\"\nimageReferences = [\"a/*\"]\n{attestors}"),
                dir.path(),
            )
        };
        let ok = policy(&format!(
            r#"
[[rules.attestors]]
name = "logged"
keyData = """{KEY}"""
trustedRoot = "root.json"
[[rules.attestors]]
name = "stamped"
keyData = """{KEY}"""
trustedRoot = "root.json"
ignoreTlog = true
timestampAuthorities = "tsa.pem"
minTimestamps = 2
[[rules.attestors]]
name = "bare"
keyData = """{KEY}"""
"#
        ))
        .unwrap();
        let a = &ok.rules[0].attestors;
        assert!(a[0].rekor.is_some());
        assert!(a[0].transparency.require_tlog && a[0].transparency.logs() == 1);
        assert!(a[1].rekor.is_none() && !a[1].transparency.require_tlog);
        assert_eq!(a[1].transparency.timestamp_authorities(), 1);
        assert_eq!(a[1].transparency.min_timestamps, 2);
        assert!(!a[2].transparency.can_check_evidence() && !a[2].transparency.require_tlog);

        let e = policy(&format!(
            r#"
[[rules.attestors]]
name = "no-tsa"
keyData = """{KEY}"""
minTimestamps = 1
[[rules.attestors]]
name = "too-many"
keyData = """{KEY}"""
minTimestamps = 9
[[rules.attestors]]
name = "word"
keyData = """{KEY}"""
minTimestamps = "one"
[[rules.attestors]]
name = "empty-tsa"
keyData = """{KEY}"""
timestampAuthorities = "empty.pem"
[[rules.attestors]]
name = "keyless-root"
keyless = {{ subject = "a@b", issuer = "https://i", roots = "tsa.pem" }}
trustedRoot = "root.json"
"#
        ))
        .unwrap_err();
        let all = e.problems.join("\n");
        assert!(
            all.contains("(no-tsa): `minTimestamps` = 1 needs timestamp authorities"),
            "{all}"
        );
        assert!(
            all.contains("(too-many): `minTimestamps` = 9 is invalid"),
            "{all}"
        );
        assert!(
            all.contains("(word): `minTimestamps` = \"one\" is invalid"),
            "{all}"
        );
        assert!(
            all.contains("(empty-tsa): `timestampAuthorities` empty.pem: no CERTIFICATE block"),
            "{all}"
        );
        assert!(
            all.contains("(keyless-root): for a keyless attestor the trusted root goes inside"),
            "{all}"
        );
        assert_eq!(e.problems.len(), 5, "{all}");
    }

    /// Attestation requirements: cosign's type names expand, attestors are named from the
    /// rule, conditions parse; unknown attestor names and missing types are reported.
    #[test]
    fn attestation_requirements() {
        let p = parse(&format!(
            r#"
[[rules]]
name = "r"
imageReferences = ["a/*"]
[[rules.attestors]]
name = "release"
keyData = """{KEY}"""
[[rules.attestors]]
name = "sbom"
keyData = """{KEY}"""
[[rules.attestations]]
predicateType = "spdxjson"
attestors = ["sbom"]
[[rules.attestations]]
predicateType = "https://example.com/custom/v1"
"#
        ))
        .unwrap();
        let a = &p.rules[0].attestations;
        assert_eq!(a[0].predicate_type, "https://spdx.dev/Document");
        assert_eq!(a[0].attestors, vec![1]);
        assert_eq!(a[1].predicate_type, "https://example.com/custom/v1");
        assert_eq!(a[1].attestors, vec![0, 1]);

        let e = parse(&format!(
            r#"
[[rules]]
name = "r"
imageReferences = ["a/*"]
[[rules.attestors]]
name = "release"
keyData = """{KEY}"""
[[rules.attestations]]
attestors = ["nobody"]
[[rules.attestations]]
predicateType = "cyclonedx"
attestors = ["nobody"]
"#
        ))
        .unwrap_err();
        let all = e.problems.join("\n");
        assert!(
            all.contains("attestations[0]: needs `predicateType`"),
            "{all}"
        );
        assert!(
            all.contains("attestations[1].attestors: \"nobody\" is not the name of one of this rule's attestors (release)"),
            "{all}"
        );
    }

    #[test]
    fn generations_differ() {
        assert_ne!(parse("").unwrap().generation, parse("").unwrap().generation);
    }

    /// Whether pattern `p` matches image `i` (both as written in a policy / pod spec).
    fn m(p: &str, i: &str) -> bool {
        let image = super::super::reference::parse(i).unwrap();
        Pattern::parse(p).unwrap().matches(&Normal::of(&image))
    }

    /// Issue 10, example 1: a wildcard in the host part stays in the host. `*.corp.example/*`
    /// does not match `evil-registry/x.corp.example/app` (a Docker Hub image whose path
    /// contains the host), nor a host that merely starts with it.
    #[test]
    fn host_wildcard_never_reaches_the_path() {
        assert!(!m("*.corp.example/*", "evil-registry/x.corp.example/app"));
        assert!(!m("*.corp.example/*", "docker.io/x.corp.example/app"));
        assert!(!m("*.corp.example/*", "x.corp.example.evil.io/app"));
        assert!(!m("*.corp.example/*", "x.corp.example:5000/app"));
        assert!(m("*.corp.example/*", "x.corp.example/app"));
        assert!(m("*.corp.example/*", "a.b.corp.example/team/app:v1"));
        assert!(m("*.corp.example:*/*", "x.corp.example:5000/app"));
        assert!(m("*/library/nginx:*", "nginx:1.25"));
    }

    /// Issue 10, example 2: a digest reference is matched by repository and digest; a tag next
    /// to the digest (which the runtime ignores) selects nothing.
    #[test]
    fn digest_references_match_by_digest() {
        let d = format!("sha256:{}", "e".repeat(64));
        let pinned = format!("reg.example/app:release-1@{d}");
        assert!(!m("reg.example/app:release-*", &pinned));
        assert!(m("reg.example/app:release-*", "reg.example/app:release-1"));
        assert!(m("reg.example/app", &pinned));
        assert!(m("reg.example/app*", &pinned));
        assert!(m(&format!("reg.example/app@{d}"), &pinned));
        assert!(!m(
            &format!("reg.example/app@sha256:{}", "f".repeat(64)),
            &pinned
        ));
    }

    /// Issue 10, example 3: host spellings are normalized as the runtime treats them (case,
    /// the default HTTPS port, Docker Hub's names), in patterns and images; `localhost` and
    /// `127.0.0.1` stay different hosts.
    #[test]
    fn host_spellings() {
        assert!(m("ghcr.io/org/*", "GHCR.IO/org/app:v1"));
        assert!(m("ghcr.io/org/*", "ghcr.io:443/org/app:v1"));
        assert!(m("GHCR.io:443/org/*", "ghcr.io/org/app:v1"));
        assert!(!m("ghcr.io/org/*", "ghcr.io:8443/org/app:v1"));
        assert!(m("localhost:5300/*", "localhost:5300/app"));
        assert!(!m("localhost:5300/*", "127.0.0.1:5300/app"));
        assert!(!m("127.0.0.1:5300/*", "localhost:5300/app"));
        assert!(m("docker.io/library/*", "nginx"));
        assert!(m("index.docker.io/library/*", "nginx"));
        assert!(m("docker.io/*", "registry-1.docker.io/team/app"));
        // An upper-case first component is a host (as containerd reads it), not Docker Hub.
        assert!(!m("docker.io/*", "Evil/app"));
        assert!(m("Evil/*", "Evil/app"));
        assert!(
            !m("evil/*", "Evil/app"),
            "a lower-case first component is a Docker Hub user"
        );
    }

    /// Patterns without a registry part are Docker Hub names, normalized like references;
    /// `*` alone matches everything; a wildcard with no registry part is refused.
    #[test]
    fn pattern_forms() {
        assert!(m("nginx", "docker.io/library/nginx:latest"));
        assert!(m("nginx:1.*", "nginx:1.25"));
        assert!(!m("nginx:1.*", "nginx:2.0"));
        assert!(m("nginx*", "nginx-unprivileged"));
        assert!(m("team/*", "team/app:v1"));
        assert!(!m("team/*", "ghcr.io/team/app:v1"));
        assert!(m("*", "ghcr.io/team/app:v1"));
        assert!(m("*/*", "ghcr.io/team/app:v1"));
        assert!(m("reg.example/team/*", "reg.example/team/a/b:v1"));
        assert!(!m("reg.example/team/*", "reg.example/teamx/app"));
        assert!(m("reg.example/team*", "reg.example/teamx/app"));
        assert!(m("reg.example/app:v?", "reg.example/app:v1"));
        let e = Pattern::parse("*nginx*").unwrap_err();
        assert!(e.contains("*/*nginx*"), "{e}");
        assert!(Pattern::parse("reg.example/").is_err());
        let errs = parse(
            r#"
            [[rules]]
            name = "x"
            imageReferences = ["*:latest"]
            mode = "skip"
            "#,
        )
        .unwrap_err();
        assert!(errs.problems[0].contains("no registry part"), "{errs:?}");
    }

    /// `[sandbox]`, `tokenHosts` and the verification bounds parse, with every problem named.
    #[test]
    fn sandbox_token_hosts_and_bounds() {
        let p = parse(
            r#"
            [sandbox]
            mode = "warn"
            image = "registry.k8s.io/pause:3.10"
            [registries."registry.gitlab.com"]
            tokenHosts = ["gitlab.com"]
            [fetch]
            maxVerificationBytes = "8MiB"
            maxVerificationBlobs = 10
            maxConcurrentVerifications = 2
            maxQueuedVerifications = 5
            "#,
        )
        .unwrap();
        assert_eq!(p.sandbox.mode, SandboxMode::Warn);
        assert_eq!(
            p.sandbox.image.as_deref(),
            Some("registry.k8s.io/pause:3.10")
        );
        assert_eq!(
            p.registry("registry.gitlab.com").token_hosts,
            ["gitlab.com"]
        );
        assert_eq!(
            (
                p.fetch.max_verification_bytes,
                p.fetch.max_verification_blobs,
                p.fetch.max_concurrent_verifications,
                p.fetch.max_queued_verifications
            ),
            (8 << 20, 10, 2, 5)
        );
        assert_eq!(parse("").unwrap().sandbox.mode, SandboxMode::Enforce);
        let e = parse(
            r#"
            [sandbox]
            mode = "off"
            image = "Bad Image"
            [registries."r.example"]
            tokenHosts = ["https://auth.example/token"]
            [fetch]
            maxConcurrentVerifications = 0
            "#,
        )
        .unwrap_err();
        let all = e.problems.join("\n");
        for needle in [
            "sandbox.mode",
            "sandbox.image",
            "tokenHosts",
            "maxConcurrentVerifications",
        ] {
            assert!(all.contains(needle), "{needle} not reported in {all}");
        }
    }
}
