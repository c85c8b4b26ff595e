//! The decision: which images may reach the runtime.
//!
//! ```text
//! PullImage(image, auth, namespace)
//!   -> policy::Policy::matching(image, namespace)       rule (or default) and its mode
//!   -> skip? allow.  default without attestors? deny (enforce) / allow and report (audit)
//!   -> resolve tag -> digest (registry HEAD; cached briefly, never an allow key)
//!   -> cache::Cache keyed (repository, digest, policy generation, rule)   hit: microseconds
//!   -> miss: discovery: REPO:sha256-<hex>.sig (and .att), the referrers API and the referrers
//!            tag at once; `.sig` layers by cosign::verify_layer, Sigstore bundles by
//!            cosign::bundle per attestor; at least `count` distinct attestors must have signed,
//!            in either format (single flight)
//!   -> allowed: forward the pull, then confirm the digest containerd actually stored (I1): a tag
//!      that moved to an unverified digest during the pull gets the image removed and the pull denied
//!   -> denied: `SignatureValidationFailed: <image>: <reason>` (or `RegistryUnavailable: ...`),
//!      status Unknown, which the kubelet shows in the pod's events; nothing reaches the runtime
//! ```
//!
//! [`Verifier::check_image`] is the same decision without a runtime (`cri-guard verify`).

mod attestations;
pub mod cache;
pub mod cosign;
mod discovery;
pub mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use oci_client::Reference;
use tracing::{info, warn};

use crate::cri;
use crate::proxy::grpc::{Code, Status};
use crate::proxy::intercept::{BoxFuture, Call, Guard, Verdict};
use crate::registry::{Auth, Registry, RegistryConfig, RegistryError, valid_digest};
use cache::{Cache, Key};
use cosign::Expected;
use cosign::bundle::{Artifact, BundleExpect, BundleFailure, SIGN_PREDICATE_TYPE, VerifiedBundle};
use discovery::{Found, Want};
use policy::{Attestor, Matched, Mode, Policy, Rule, repository_of};

/// Media type of cosign signature layers.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The result of verifying one digest under one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Signed by these attestors (at least the rule's `count`), with every required
    /// attestation.
    Verified {
        attestors: Vec<String>,
        /// The attestations found and what became of each (empty without required ones).
        attestations: Findings,
    },
    /// Not verified, and why.
    Denied(Denial),
}

/// Why an image is not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The registry could not be reached (the kubelet's `RegistryUnavailable`).
    pub unavailable: bool,
    pub reason: String,
    /// The attestations found and what became of each, when attestations were checked.
    pub attestations: Findings,
}

/// The attestations found for an image; shared, so a cache hit does not copy them.
pub type Findings = Arc<[Finding]>;

/// One attestation found for an image (a layer of its `.att` manifest) and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The statement's predicate type once verified; before that, what the layer claims.
    pub predicate_type: String,
    /// Whether it satisfied a requirement of the rule.
    pub accepted: bool,
    /// Who signed it and the conditions met, or why it does not count.
    pub detail: String,
}

impl Denial {
    fn new(reason: impl Into<String>) -> Denial {
        Denial {
            unavailable: false,
            reason: reason.into(),
            attestations: Findings::default(),
        }
    }

    fn registry(e: &RegistryError, what: &str) -> Denial {
        Denial {
            unavailable: e.is_unavailable(),
            reason: format!("{what}: {e}"),
            attestations: Findings::default(),
        }
    }

    /// The gRPC status the kubelet understands (design.md section 3).
    pub fn status(&self, image: &str) -> Status {
        let prefix = if self.unavailable {
            "RegistryUnavailable"
        } else {
            "SignatureValidationFailed"
        };
        Status::new(Code::Unknown, format!("{prefix}: {image}: {}", self.reason))
    }
}

/// A decision about one image, with what it was based on.
#[derive(Debug, Clone)]
pub struct Decision {
    pub image: String,
    pub digest: Option<String>,
    pub rule: String,
    pub mode: Mode,
    pub outcome: Option<Outcome>,
    /// The outcome came from the cache.
    pub cached: bool,
    /// What the proxy does: forward (true) or refuse (false).
    pub allowed: bool,
}

impl Decision {
    /// A one-line reason for logs and the CLI.
    pub fn reason(&self) -> String {
        match (&self.outcome, self.mode) {
            (_, Mode::Skip) => format!("rule {:?} skips verification", self.rule),
            (
                Some(Outcome::Verified {
                    attestors,
                    attestations,
                }),
                _,
            ) => {
                let accepted: Vec<&str> = attestations
                    .iter()
                    .filter(|f| f.accepted)
                    .map(|f| f.predicate_type.as_str())
                    .collect();
                if accepted.is_empty() {
                    format!("signed by {}", attestors.join(", "))
                } else {
                    format!(
                        "signed by {}; attested: {}",
                        attestors.join(", "),
                        accepted.join(", ")
                    )
                }
            }
            (Some(Outcome::Denied(d)), _) => d.reason.clone(),
            (None, _) => "no decision".into(),
        }
    }

    /// The attestations found for the image and what became of each (for `cri-guard verify`).
    pub fn attestations(&self) -> &[Finding] {
        match &self.outcome {
            Some(Outcome::Verified { attestations, .. }) => attestations,
            Some(Outcome::Denied(d)) => &d.attestations,
            None => &[],
        }
    }
}

struct State {
    policy: Policy,
    registry: Registry,
    decisions: Cache<Key, Outcome>,
    resolutions: Cache<(String, Auth), Result<String, Denial>>,
}

/// The image guard: policy, registry client and caches. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    state: Arc<RwLock<Arc<State>>>,
    /// The runtime's CRI socket, for confirming what a pull stored and looking up images.
    upstream: Option<PathBuf>,
    runtime:
        Arc<OnceLock<cri::image_service_client::ImageServiceClient<tonic::transport::Channel>>>,
    /// Credentials the kubelet sent with allowed pulls, per registry; in memory only (I6).
    remembered: Arc<Mutex<HashMap<String, Auth>>>,
}

impl Verifier {
    /// A verifier for `policy`; `upstream` is the runtime's socket (None: no runtime, e.g. the CLI).
    pub fn new(policy: Policy, upstream: Option<PathBuf>) -> Result<Verifier, RegistryError> {
        let state = Self::state(policy)?;
        Ok(Verifier {
            state: Arc::new(RwLock::new(Arc::new(state))),
            upstream,
            runtime: Arc::new(OnceLock::new()),
            remembered: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn state(policy: Policy) -> Result<State, RegistryError> {
        let registry = Registry::new(RegistryConfig {
            hosts_dir: policy.hosts_dir.clone(),
            insecure: policy
                .registries
                .iter()
                .filter(|(_, s)| s.insecure)
                .map(|(n, _)| n.clone())
                .collect(),
            timeout: policy.fetch.timeout,
            max_manifest_size: policy.fetch.max_manifest_size,
        })?;
        Ok(State {
            decisions: Cache::new(policy.cache.size),
            resolutions: Cache::new(policy.cache.size.min(4096)),
            registry,
            policy,
        })
    }

    /// Replaces the policy. Decisions made under the old one are gone (new generation, new cache).
    pub fn reload(&self, policy: Policy) -> Result<(), RegistryError> {
        let state = Arc::new(Self::state(policy)?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(())
    }

    fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Cache counters: (hits, misses, verifications run).
    pub fn stats(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.current().decisions.stats;
        (
            s.hits.load(Relaxed),
            s.misses.load(Relaxed),
            s.verifications.load(Relaxed),
        )
    }

    /// HTTP requests sent to registries by the current policy's client (round-trip accounting
    /// for tests and benchmarks).
    pub fn registry_requests(&self) -> u64 {
        self.current().registry.requests()
    }

    /// Decides on `image` for a pod in `namespace`.
    pub async fn check_image(&self, image: &str, namespace: &str, auth: &Auth) -> Decision {
        match image.parse::<Reference>() {
            Ok(reference) => {
                self.check_reference(&reference, None, namespace, auth)
                    .await
            }
            Err(e) => Decision {
                image: image.to_string(),
                digest: None,
                rule: "(none)".into(),
                mode: Mode::Enforce,
                outcome: Some(Outcome::Denied(Denial::new(format!(
                    "not a valid image reference: {e}"
                )))),
                cached: false,
                allowed: false,
            },
        }
    }

    /// Decides on `reference` (its name picks the rule); with `digest`, that digest is verified
    /// instead of resolving the reference (CreateContainer: the digest the runtime holds).
    pub async fn check_reference(
        &self,
        reference: &Reference,
        digest: Option<&str>,
        namespace: &str,
        auth: &Auth,
    ) -> Decision {
        let state = self.current();
        let mut d = Decision {
            image: reference.whole(),
            digest: digest.map(str::to_string),
            rule: "(none)".into(),
            mode: Mode::Enforce,
            outcome: None,
            cached: false,
            allowed: false,
        };
        let matched = state.policy.matching(reference, namespace);
        d.rule = matched.name().to_string();
        d.mode = matched.mode();
        if d.mode == Mode::Skip {
            d.allowed = true;
            return d;
        }
        let Matched::Rule(index, rule) = matched else {
            d.outcome = Some(Outcome::Denied(Denial::new(format!(
                "no policy rule matches this image{} (policy default: {})",
                if namespace.is_empty() {
                    String::new()
                } else {
                    format!(" in namespace {namespace}")
                },
                d.mode.as_str()
            ))));
            d.allowed = d.mode == Mode::Audit;
            return d;
        };
        let timeout = state.policy.fetch.verify_timeout;
        let work = self.decide_rule(&state, reference, index, rule, auth, &mut d);
        if tokio::time::timeout(timeout, work).await.is_err() {
            d.outcome = Some(Outcome::Denied(Denial {
                unavailable: true,
                reason: format!(
                    "verification did not finish within {timeout:?} (fetch.verifyTimeout)"
                ),
                attestations: Findings::default(),
            }));
        }
        d.allowed = matches!(d.outcome, Some(Outcome::Verified { .. })) || d.mode == Mode::Audit;
        d
    }

    async fn decide_rule(
        &self,
        state: &State,
        reference: &Reference,
        index: usize,
        rule: &Rule,
        auth: &Auth,
        d: &mut Decision,
    ) {
        let resolved = match d.digest.clone() {
            Some(digest) => Ok(digest),
            None => self.resolve(state, reference, auth).await,
        };
        let digest = match resolved {
            Ok(digest) => digest,
            Err(denial) => {
                d.outcome = Some(Outcome::Denied(denial));
                return;
            }
        };
        d.digest = Some(digest.clone());
        let (outcome, cached) = self
            .verify_digest(state, reference, index, rule, &digest, auth)
            .await;
        d.outcome = Some(outcome);
        d.cached = cached;
    }

    async fn resolve(
        &self,
        state: &State,
        reference: &Reference,
        auth: &Auth,
    ) -> Result<String, Denial> {
        if let Some(digest) = reference.digest() {
            return if valid_digest(digest) {
                Ok(digest.to_string())
            } else {
                Err(Denial::new(format!("{digest} is not a sha256 digest")))
            };
        }
        let key = (reference.whole(), auth.clone());
        let ttl = state.policy.cache.resolve_ttl;
        let neg = state.policy.cache.negative_ttl;
        state
            .resolutions
            .get_or_fill(
                key,
                || async {
                    state
                        .registry
                        .resolve(reference, auth)
                        .await
                        .map_err(|e| Denial::registry(&e, "cannot resolve the tag to a digest"))
                },
                |r| if r.is_ok() { ttl } else { neg },
            )
            .await
            .0
    }

    /// The (cached) outcome of verifying `digest` of `reference` under `rule`.
    async fn verify_digest(
        &self,
        state: &State,
        reference: &Reference,
        index: usize,
        rule: &Rule,
        digest: &str,
        auth: &Auth,
    ) -> (Outcome, bool) {
        let Some(raw) = digest_bytes(digest) else {
            return (
                Outcome::Denied(Denial::new(format!("{digest} is not a sha256 digest"))),
                false,
            );
        };
        let scope = match rule.identity {
            cosign::IdentityMatch::Exact => reference.whole(),
            _ => repository_of(reference),
        };
        let key = Key {
            scope: scope.into(),
            digest: raw,
            generation: state.policy.generation,
            rule: index,
        };
        let (ttl, neg) = (state.policy.cache.ttl, state.policy.cache.negative_ttl);
        state
            .decisions
            .get_or_fill(
                key,
                || verify_image(state, reference, rule, digest, auth),
                |o| {
                    if matches!(o, Outcome::Verified { .. }) {
                        ttl
                    } else {
                        neg
                    }
                },
            )
            .await
    }

    /// A client of the runtime's ImageService (connects lazily, reconnects by itself).
    fn runtime(
        &self,
    ) -> Option<cri::image_service_client::ImageServiceClient<tonic::transport::Channel>> {
        let upstream = self.upstream.as_ref()?;
        Some(
            self.runtime
                .get_or_init(|| cri::image_client(upstream))
                .clone(),
        )
    }

    /// Credentials for `registry`: those of the last allowed pull from it, else the node's.
    fn auth_for(&self, registry: &str) -> Auth {
        if let Some(a) = self
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
        {
            return a.clone();
        }
        self.current()
            .policy
            .node_credentials
            .get(registry)
            .cloned()
            .unwrap_or_default()
    }

    fn remember(&self, registry: &str, auth: &Auth) {
        if *auth != Auth::Anonymous {
            self.remembered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(registry.to_string(), auth.clone());
        }
    }

    /// Decides whether a container may be created from the image `req` names (invariant I2).
    ///
    /// The runtime is asked what the image is (ImageStatus: id, repo digests, tags). The name
    /// the kubelet used (`user_specified_image`, else `image` when it is a name) picks the rule
    /// for its repository; each repo digest the runtime holds is then verified, that repository's
    /// first, each under the rule for its own repository in the pod's namespace. The container
    /// is allowed if one of them is allowed. An image without any repo digest (built or imported
    /// on the node) can only be allowed by a `skip` (or `audit`) rule for one of its names.
    pub async fn check_create(
        &self,
        req: &cri::CreateContainerRequest,
        namespace: &str,
    ) -> Result<Decision, Status> {
        let spec = req.config.as_ref().and_then(|c| c.image.as_ref());
        let (image, user) = spec
            .map(|s| (s.image.as_str(), s.user_specified_image.as_str()))
            .unwrap_or(("", ""));
        let shown = if user.is_empty() { image } else { user };
        let deny = |reason: String| Denial::new(reason).status(shown);
        if image.is_empty() {
            return Err(deny("the container config names no image".into()));
        }
        let Some(mut runtime) = self.runtime() else {
            return Err(deny(
                "cri-guard has no runtime to look the image up in".into(),
            ));
        };
        let status = runtime
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(|e| {
                deny(format!(
                    "cannot look the image up in the runtime: {}",
                    e.message()
                ))
            })?;
        let Some(found) = status.into_inner().image else {
            return Err(deny(format!("the runtime has no image {image}")));
        };
        let named = [user, image]
            .into_iter()
            .filter(|n| !n.is_empty() && !n.starts_with("sha256:"))
            .find_map(|n| n.parse::<Reference>().ok());
        let mut digests: Vec<(Reference, String)> = found
            .repo_digests
            .iter()
            .filter_map(|rd| {
                let (name, digest) = rd.split_once('@')?;
                Some((name.parse::<Reference>().ok()?, digest.to_string()))
            })
            .collect();
        let named_repo = named.as_ref().map(repository_of);
        digests.sort_by_key(|(r, _)| Some(repository_of(r)) != named_repo);

        if digests.is_empty() {
            let names = named.iter().cloned().chain(
                found
                    .repo_tags
                    .iter()
                    .filter_map(|t| t.parse::<Reference>().ok()),
            );
            for name in names {
                let d = self
                    .check_reference(&name, None, namespace, &Auth::Anonymous)
                    .await;
                if d.mode == Mode::Skip || (d.mode == Mode::Audit && d.allowed) {
                    return Ok(d);
                }
            }
            return Err(deny(format!(
                "image {} has no registry digest (built or imported on the node), so it carries no \
                 signature; only a `skip` rule for its name can allow it",
                found.id
            )));
        }
        let mut reasons = Vec::new();
        for (repo, digest) in &digests {
            let rule_ref = match &named {
                Some(n) if repository_of(n) == repository_of(repo) => n.clone(),
                _ => repo.clone(),
            };
            let auth = self.auth_for(repo.registry());
            let d = self
                .check_reference(&rule_ref, Some(digest), namespace, &auth)
                .await;
            if d.allowed {
                return Ok(d);
            }
            reasons.push(format!("{}@{digest}: {}", repository_of(repo), d.reason()));
        }
        Err(deny(format!(
            "no digest of this image passes the policy: {}",
            reasons.join("; ")
        )))
    }

    /// The runtime's sandbox (pause) image, from its verbose Status (containerd reports its CRI
    /// config there), and the decision the policy gives it. The runtime pulls this image itself,
    /// never through PullImage, so cri-guard checks it at start and on every policy reload.
    pub async fn check_sandbox_image(&self) -> Option<Decision> {
        let upstream = self.upstream.as_ref()?;
        let status = cri::runtime_client(upstream)
            .status(cri::StatusRequest { verbose: true })
            .await
            .ok()?
            .into_inner();
        let config: serde_json::Value = serde_json::from_str(status.info.get("config")?).ok()?;
        let image = config.get("sandboxImage")?.as_str()?.to_string();
        let registry = image.parse::<Reference>().ok()?.registry().to_string();
        Some(
            self.check_image(&image, "", &self.auth_for(&registry))
                .await,
        )
    }

    /// After an allowed pull: the digests containerd recorded for this repository must include a
    /// verified one; otherwise the image is removed and the pull denied (I1).
    async fn confirm_pull(
        self,
        reference: Reference,
        namespace: String,
        auth: Auth,
        verified: String,
        pulled: cri::PullImageResponse,
    ) -> Result<(), Status> {
        let image = reference.whole();
        let Some(mut client) = self.runtime() else {
            return Ok(());
        };
        let spec = Some(cri::ImageSpec {
            image: pulled.image_ref.clone(),
            ..Default::default()
        });
        let repo = repository_of(&reference);
        let stored: Vec<String> = match client
            .image_status(cri::ImageStatusRequest {
                image: spec.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .image
                .map(|i| i.repo_digests)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|rd| {
                    rd.split_once('@')
                        .filter(|(n, _)| *n == repo)
                        .map(|(_, d)| d.to_string())
                })
                .collect(),
            Err(e) => {
                warn!(image, error = %e.message(), "cannot read what the runtime stored");
                Vec::new()
            }
        };
        if stored.contains(&verified) {
            return Ok(());
        }
        // The tag moved between our check and the runtime's pull: the stored digest decides.
        let mut why = format!(
            "the runtime stored {} instead of the verified {verified}",
            stored.join(", ")
        );
        for d in &stored {
            let pinned = Reference::with_digest(
                reference.registry().into(),
                reference.repository().into(),
                d.clone(),
            );
            let decision = self.check_image(&pinned.whole(), &namespace, &auth).await;
            if decision.allowed {
                return Ok(());
            }
            why = format!(
                "the tag moved during the pull: the runtime stored {d}, which failed: {}",
                decision.reason()
            );
        }
        let removed = client
            .remove_image(cri::RemoveImageRequest { image: spec })
            .await;
        warn!(image, stored = ?stored, removed = removed.is_ok(), "pulled digest not verified; image removed");
        Err(Denial::new(why).status(&image))
    }
}

/// Verifies `digest` under `rule`: its signatures in either format, then the attestations
/// the rule requires. Discovery (`discovery.rs`) looks in all places at once.
async fn verify_image(
    state: &State,
    reference: &Reference,
    rule: &Rule,
    digest: &str,
    auth: &Auth,
) -> Outcome {
    let repo = rule.signatures_repository.as_ref().unwrap_or(reference);
    let needs_attestations = !rule.attestations.is_empty();
    let mut found = discovery::discover(state, repo, digest, needs_attestations, auth).await;
    let attestors =
        match verify_signatures(state, repo, reference, rule, digest, auth, &mut found).await {
            Ok(a) => a,
            Err(denial) => return Outcome::Denied(denial),
        };
    if !needs_attestations {
        return Outcome::Verified {
            attestors,
            attestations: Findings::default(),
        };
    }
    match attestations::verify(state, repo, rule, digest, auth, &mut found).await {
        Ok(findings) => Outcome::Verified {
            attestors,
            attestations: findings.into(),
        },
        Err(denial) => Outcome::Denied(denial),
    }
}

/// Verifies one Sigstore bundle (JSON) of the image `digest` with one attestor of `rule`: the
/// bundle's signature, certificate and proofs as the attestor requires
/// ([`cosign::bundle::verify_bundle`]), its statement about this digest, and of
/// `predicate_type` (`sign/v1` for a signature, the attestation's type for an attestation).
/// Sigstore bundles carry no docker-reference, so a rule that requires the signed tag
/// (`signedIdentity = "exact"`) cannot be met by one. Returns the signer's identity (for
/// certificates) and the statement.
pub fn verify_image_bundle(
    rule: &Rule,
    attestor: &Attestor,
    bundle: &[u8],
    digest: &str,
    predicate_type: Option<&str>,
) -> Result<VerifiedBundle, BundleFailure> {
    if rule.identity == cosign::IdentityMatch::Exact {
        return Err(BundleFailure::Missing {
            reason: format!(
                "rule {:?} requires the signed tag (signedIdentity = \"exact\"), which a Sigstore bundle does not carry",
                rule.name
            ),
        });
    }
    cosign::bundle::verify_bundle(
        bundle,
        &attestor.authority,
        &attestor.transparency,
        &BundleExpect {
            artifact: Artifact::Digest(digest),
            predicate_type,
        },
    )
}

/// Who verified, as a decision names them: the attestor, and for certificate signers the
/// identity it proved.
fn signer_name(attestor: &Attestor, identity: Option<String>) -> String {
    match identity {
        Some(id) => format!("{} as {id}", attestor.name),
        None => attestor.name.clone(),
    }
}

/// Checks the image's signatures in both formats against the rule's attestors (a valid one in
/// either format counts); returns who signed, or the denial naming the most telling failure.
async fn verify_signatures(
    state: &State,
    repo: &Reference,
    reference: &Reference,
    rule: &Rule,
    digest: &str,
    auth: &Auth,
    found: &mut Found,
) -> Result<Vec<String>, Denial> {
    let expected = Expected {
        digest,
        reference,
        identity: &rule.identity,
    };
    // (specificity, message) of every failed check, across formats.
    let mut failures: Vec<(u8, String)> = Vec::new();
    let mut signed_by: Vec<Option<String>> = vec![None; rule.attestors.len()];
    let (sig_place, sig_found, sig_layers) = match &found.sig {
        Ok(a) => (a.place.clone(), a.found, a.layers.len()),
        Err(_) => (String::new(), false, 0),
    };
    if let Ok(attached) = &found.sig {
        for (i, attestor) in rule.attestors.iter().enumerate() {
            for layer in &attached.layers {
                match cosign::verify_layer(
                    layer,
                    &attestor.authority,
                    &expected,
                    attestor.rekor.as_ref(),
                ) {
                    Ok(v) => {
                        signed_by[i] = Some(signer_name(attestor, v.identity));
                        break;
                    }
                    Err(f) => failures.push((f.specificity(), f.to_string())),
                }
            }
        }
    }
    let count = |s: &[Option<String>]| s.iter().filter(|x| x.is_some()).count();
    if count(&signed_by) < rule.count && found.referrers.error.is_none() {
        let mut wants = vec![Want::Signatures];
        if !rule.attestations.is_empty() {
            // Fetched in the same round, for the attestations that follow.
            wants.push(Want::Attestations);
        }
        let bundles = found
            .referrers
            .bundles(state, repo, digest, &wants, auth)
            .await;
        // Those claimed to be signatures, or not claimed to be anything.
        for b in bundles.iter().filter(|b| {
            b.claimed
                .as_deref()
                .is_none_or(|c| c == SIGN_PREDICATE_TYPE)
        }) {
            let bytes = match &b.bytes {
                Ok(bytes) => bytes,
                Err(why) => {
                    failures.push((1, format!("{}: {why}", b.place)));
                    continue;
                }
            };
            for (i, attestor) in rule.attestors.iter().enumerate() {
                if signed_by[i].is_some() {
                    continue;
                }
                match verify_image_bundle(rule, attestor, bytes, digest, Some(SIGN_PREDICATE_TYPE))
                {
                    Ok(v) => signed_by[i] = Some(signer_name(attestor, v.identity)),
                    Err(f) => failures.push((f.specificity(), f.to_string())),
                }
            }
        }
    }
    let signed: Vec<String> = signed_by.iter().flatten().cloned().collect();
    if signed.len() >= rule.count {
        return Ok(signed);
    }
    if !signed.is_empty() {
        let missing: Vec<&str> = rule
            .attestors
            .iter()
            .zip(&signed_by)
            .filter(|(_, s)| s.is_none())
            .map(|(a, _)| a.name.as_str())
            .collect();
        return Err(Denial::new(format!(
            "signed by {} of the {} required attestors ({}); not signed by {}",
            signed.len(),
            rule.count,
            signed.join(", "),
            missing.join(", ")
        )));
    }
    // Nothing verified: the most telling failure, else what was (not) found where.
    if let Some((_, f)) = failures.iter().max_by_key(|(s, _)| *s) {
        return Err(Denial::new(format!("no valid signature: {f}")));
    }
    let referrers = &found.referrers;
    if let Err(denial) = &found.sig {
        return Err(denial.clone());
    }
    if let Some(denial) = &referrers.error {
        return Err(denial.clone());
    }
    if let Some(denial) = &referrers.unavailable {
        return Err(denial.clone());
    }
    let new_format = referrers.nothing("bundle");
    Err(Denial::new(if !sig_found {
        format!("no signature found (nothing at {sig_place}; {new_format})")
    } else if sig_layers == 0 {
        let skipped = match &found.sig {
            Ok(a) if !a.skipped.is_empty() => a.skipped.join(", "),
            _ => "no layers".to_string(),
        };
        format!("no cosign signature layer at {sig_place} (found: {skipped}); {new_format}")
    } else {
        format!("no valid signature ({new_format})")
    }))
}

fn digest_bytes(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Guard for Verifier {
    fn decide<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let req = match call {
                Call::Pull(req) => req,
                Call::Create(req) => {
                    let namespace = call.namespace();
                    return match self.check_create(req, namespace).await {
                        Ok(d) => {
                            if matches!(d.outcome, Some(Outcome::Denied(_))) {
                                warn!(image = %d.image, namespace, rule = %d.rule, reason = %d.reason(), "audit: would have denied this container");
                            }
                            info!(image = %d.image, digest = d.digest.as_deref().unwrap_or(""), namespace, rule = %d.rule,
                                  cached = d.cached, reason = %d.reason(), "create decision: allowed");
                            Verdict::Forward
                        }
                        Err(status) => {
                            info!(namespace, reason = %status.message, "create decision: denied");
                            Verdict::Deny(status)
                        }
                    };
                }
            };
            let image = call.image().to_string();
            let namespace = call.namespace().to_string();
            let auth = Auth::from_cri(req.auth.as_ref());
            let d = self.check_image(&image, &namespace, &auth).await;
            let (hits, misses, runs) = self.stats();
            info!(
                image = %image,
                namespace = %namespace,
                digest = d.digest.as_deref().unwrap_or(""),
                rule = %d.rule,
                mode = d.mode.as_str(),
                allowed = d.allowed,
                cached = d.cached,
                reason = %d.reason(),
                cache_hits = hits,
                cache_misses = misses,
                verifications = runs,
                "pull decision"
            );
            match (&d.outcome, d.allowed) {
                (Some(Outcome::Denied(denial)), false) => Verdict::Deny(denial.status(&image)),
                (_, false) => Verdict::Deny(Denial::new(d.reason()).status(&image)),
                (Some(Outcome::Denied(_)), true) => {
                    warn!(image = %image, namespace = %namespace, rule = %d.rule, reason = %d.reason(), "audit: would have denied this pull");
                    Verdict::Forward
                }
                (Some(Outcome::Verified { .. }), true) => {
                    let (Some(digest), Ok(reference)) =
                        (d.digest.clone(), image.parse::<Reference>())
                    else {
                        return Verdict::Deny(
                            Denial::new("internal: verified without a digest").status(&image),
                        );
                    };
                    self.remember(reference.registry(), &auth);
                    let this = self.clone();
                    Verdict::ForwardThen(Box::new(move |pulled| {
                        Box::pin(this.confirm_pull(reference, namespace, auth, digest, pulled))
                    }))
                }
                (None, true) => Verdict::Forward,
            }
        })
    }
}
