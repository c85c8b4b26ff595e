//! The decision: which images may reach the runtime.
//!
//! ```text
//! PullImage(image, auth, namespace)
//!   -> reference::parse(image)                           as containerd reads it; malformed: deny
//!   -> policy::Policy::matching(image, namespace)       rule (or default) and its mode
//!   -> skip? allow.  default without attestors? deny (enforce) / allow and report (audit)
//!   -> resolve tag -> digest (registry HEAD; cached briefly, never an allow key)
//!   -> cache::Cache keyed (repository, digest, policy generation, rule)   hit: microseconds
//!   -> miss: a verification slot (bounded, with a bounded queue) and a fetch budget, then
//!            discovery: REPO:sha256-<hex>.sig (and .att), the referrers API and the referrers
//!            tag at once; `.sig` layers by cosign::verify_layer, Sigstore bundles by
//!            cosign::bundle per attestor; at least `count` distinct attestors must have signed,
//!            in either format (single flight per credential; an allow is shared, a denial
//!            stays with the credentials that got it)
//!   -> allowed: forward the pull, then confirm the digest containerd actually stored (I1): a tag
//!      that moved to an unverified digest during the pull gets the image removed and the pull denied
//!   -> denied: `SignatureValidationFailed: <image>: <reason>` (or `RegistryUnavailable: ...`),
//!      status Unknown, which the kubelet shows in the pod's events; nothing reaches the runtime
//!
//! CreateContainer(pod_sandbox_id, image)
//!   -> the pod's namespace from the runtime's record of the sandbox (PodSandboxStatus), never
//!      from the request; the image from the runtime (ImageStatus: id, repo digests, tags)
//!   -> a name the caller gives selects a rule only if the runtime holds it for that image
//!   -> each repo digest decided like a pull; allowed: forwarded pinned to the image id checked
//!      (the id appended to the original bytes), so the runtime cannot resolve the name again
//!
//! RunPodSandbox(config)
//!   -> the runtime's sandbox image (verbose Status, else `[sandbox] image`, plus pinned images)
//!   -> held: decided like a create; absent: verified and pulled by cri-guard (then confirmed)
//!   -> fails: refused (`[sandbox] mode = "enforce"`, the default) or logged (`"warn"`)
//! ```
//!
//! [`Verifier::check_image`] is the same decision without a runtime (`cri-guard verify`).

mod attestations;
pub mod cache;
pub mod cosign;
mod discovery;
pub mod policy;
pub mod reference;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use oci_client::Reference;
use prost::Message as _;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::warn;

use crate::cri;
use crate::metrics::{self, DecisionLog, METRICS, ReasonClass};
use crate::proxy::grpc::{Code, Status, Text};
use crate::proxy::intercept::{BoxFuture, Call, Guard, Verdict};
use crate::registry::{Auth, Budget, Registry, RegistryConfig, RegistryError, valid_digest};
use cache::{Cache, Key};
use cosign::Expected;
use cosign::bundle::{Artifact, BundleExpect, BundleFailure, SIGN_PREDICATE_TYPE, VerifiedBundle};
use discovery::{Found, Want};
use policy::{Attestor, Matched, Mode, Policy, Rule, SandboxMode, repository_of};
use reference::Normal;

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
    /// cri-guard was at its bound of concurrent verifications: nothing was checked, and the
    /// denial is not cached.
    pub busy: bool,
    pub reason: String,
    /// The attestations found and what became of each, when attestations were checked.
    pub attestations: Findings,
    /// What kind of denial it is (the metrics' `reason` label).
    pub class: ReasonClass,
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
        Denial::of(ReasonClass::Other, reason)
    }

    fn of(class: ReasonClass, reason: impl Into<String>) -> Denial {
        Denial {
            unavailable: false,
            busy: false,
            reason: reason.into(),
            attestations: Findings::default(),
            class,
        }
    }

    fn registry(e: &RegistryError, what: &str) -> Denial {
        Denial {
            unavailable: e.is_unavailable(),
            busy: false,
            reason: format!("{what}: {e}"),
            attestations: Findings::default(),
            class: if e.is_unavailable() {
                ReasonClass::RegistryUnavailable
            } else {
                ReasonClass::RegistryError
            },
        }
    }

    /// This denial, classed as coming from `stage` unless it is classed already.
    fn in_stage(mut self, stage: ReasonClass) -> Denial {
        if self.class == ReasonClass::Other {
            self.class = stage;
        }
        self
    }

    /// The gRPC status the kubelet understands (design.md section 3). A busy refusal is
    /// `ResourceExhausted`: not a verdict on the image; the kubelet retries with backoff.
    pub fn status(&self, image: &str) -> Status {
        if self.busy {
            return Status::new(
                Code::ResourceExhausted,
                format!("cri-guard: {image}: {}", self.reason),
            );
        }
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

    /// The kind of reason (the metrics' `reason` label).
    pub fn class(&self) -> ReasonClass {
        match (&self.outcome, self.mode) {
            (_, Mode::Skip) => ReasonClass::Skipped,
            (Some(Outcome::Verified { .. }), _) => ReasonClass::Verified,
            (Some(Outcome::Denied(d)), _) => d.class,
            (None, _) => ReasonClass::Other,
        }
    }

    /// What the proxy's decision line and metrics call this decision's result.
    pub fn verdict(&self) -> metrics::Verdict {
        match (&self.outcome, self.allowed) {
            (_, false) => metrics::Verdict::Deny,
            (Some(Outcome::Denied(_)), true) => metrics::Verdict::WouldDeny,
            _ => metrics::Verdict::Allow,
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
    /// Tag resolutions, per credential fingerprint (a registry may answer callers differently).
    resolutions: Cache<(String, [u8; 32]), Result<String, Denial>>,
    limiter: Limiter,
}

/// The bound on verifications running at once, with a bounded queue in front of it.
struct Limiter {
    slots: Semaphore,
    waiting: AtomicUsize,
    running: usize,
    queue: usize,
}

/// Counts a caller in the queue while it waits, also when its future is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    fn new(running: usize, queue: usize) -> Limiter {
        Limiter {
            slots: Semaphore::new(running),
            waiting: AtomicUsize::new(0),
            running,
            queue,
        }
    }

    /// A verification slot: at once if one is free, after waiting in the queue if there is
    /// room in it, else a busy refusal (never an allow).
    async fn enter(&self) -> Result<SemaphorePermit<'_>, Denial> {
        if let Ok(p) = self.slots.try_acquire() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(Denial {
                busy: true,
                ..Denial::of(
                    ReasonClass::Busy,
                    format!(
                        "not verified now: cri-guard is running its limit of {} verifications with \
                     {} more waiting (fetch.maxConcurrentVerifications, \
                     fetch.maxQueuedVerifications); the kubelet retries",
                        self.running, self.queue
                    ),
                )
            });
        }
        let _waiting = Waiting(&self.waiting);
        self.slots
            .acquire()
            .await
            .map_err(|_| Denial::new("internal: the verification slots are closed"))
    }
}

/// The image guard: policy, registry client and caches. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    state: Arc<RwLock<Arc<State>>>,
    /// The runtime's CRI socket, for confirming what a pull stored and looking up images.
    upstream: Option<PathBuf>,
    images: Arc<OnceLock<cri::image_service_client::ImageServiceClient<tonic::transport::Channel>>>,
    sandboxes:
        Arc<OnceLock<cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>>>,
    /// Credentials the kubelet sent with allowed pulls, per registry (the most recently used
    /// [`MAX_REMEMBERED`] registries); in memory only (I6).
    remembered: Arc<Mutex<lru::LruCache<String, Auth>>>,
}

/// Registries whose pull credentials are remembered (pod authors choose registry names).
const MAX_REMEMBERED: usize = 1024;

impl Verifier {
    /// A verifier for `policy`; `upstream` is the runtime's socket (None: no runtime, e.g. the CLI).
    pub fn new(policy: Policy, upstream: Option<PathBuf>) -> Result<Verifier, RegistryError> {
        let state = Self::state(policy)?;
        Ok(Verifier {
            state: Arc::new(RwLock::new(Arc::new(state))),
            upstream,
            images: Arc::new(OnceLock::new()),
            sandboxes: Arc::new(OnceLock::new()),
            remembered: Arc::new(Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_REMEMBERED).unwrap_or(std::num::NonZeroUsize::MIN),
            ))),
        })
    }

    fn state(policy: Policy) -> Result<State, RegistryError> {
        let registry = Registry::new(registry_config(&policy))?;
        Ok(State {
            decisions: Cache::new(policy.cache.size).counting_evictions(),
            resolutions: Cache::new(policy.cache.size.min(4096)),
            limiter: Limiter::new(
                policy.fetch.max_concurrent_verifications,
                policy.fetch.max_queued_verifications,
            ),
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

    /// Decisions held in the decision cache now (for metrics).
    pub fn cache_entries(&self) -> usize {
        self.current().decisions.len()
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

    /// Decides on `image` for a pod in `namespace`; `auth` are credentials for the image's
    /// registry (they go to no other host).
    pub async fn check_image(&self, image: &str, namespace: &str, auth: &Auth) -> Decision {
        match reference::parse(image) {
            Ok(reference) => {
                self.check_reference(&reference, None, namespace, auth)
                    .await
            }
            Err(e) => Decision {
                image: image.to_string(),
                digest: None,
                rule: "(none)".into(),
                mode: Mode::Enforce,
                outcome: Some(Outcome::Denied(Denial::of(
                    ReasonClass::InvalidRequest,
                    format!("not a valid image reference: {e}"),
                ))),
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
            d.outcome = Some(Outcome::Denied(no_rule(namespace, d.mode)));
            d.allowed = d.mode == Mode::Audit;
            return d;
        };
        let timeout = state.policy.fetch.verify_timeout;
        let work = self.decide_rule(&state, reference, index, rule, auth, &mut d);
        if tokio::time::timeout(timeout, work).await.is_err() {
            d.outcome = Some(Outcome::Denied(Denial {
                unavailable: true,
                busy: false,
                reason: format!(
                    "verification did not finish within {timeout:?} (fetch.verifyTimeout)"
                ),
                attestations: Findings::default(),
                class: ReasonClass::RegistryUnavailable,
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
        METRICS.cache_lookup(cached);
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
        let key = (reference.whole(), auth.fingerprint());
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
    ///
    /// An allow is looked up and stored without a credential (anyone may share it); the
    /// verification itself, and a denial, are keyed by the caller's credential fingerprint, so a
    /// denial that missing or refused credentials caused is never served to other credentials.
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
        let shared = Key {
            scope: scope.into(),
            digest: raw,
            generation: state.policy.generation,
            rule: index,
            credential: None,
        };
        if let Some(o) = state.decisions.lookup(&shared) {
            return (o, true);
        }
        let key = Key {
            credential: Some(auth.fingerprint()),
            ..shared.clone()
        };
        let own = key.clone();
        let fetch = &state.policy.fetch;
        let (ttl, neg) = (state.policy.cache.ttl, state.policy.cache.negative_ttl);
        state
            .decisions
            .get_or_fill_with(
                key,
                || async {
                    let _slot = match state.limiter.enter().await {
                        Ok(slot) => slot,
                        Err(busy) => return Outcome::Denied(busy),
                    };
                    let started = std::time::Instant::now();
                    let outcome =
                        Budget::new(fetch.max_verification_bytes, fetch.max_verification_blobs)
                            .scope(verify_image(state, reference, rule, digest, auth))
                            .await;
                    let verified = matches!(outcome, Outcome::Verified { .. });
                    METRICS.verification(verified, started.elapsed());
                    outcome
                },
                move |o| match o {
                    Outcome::Verified { .. } => Some((shared, ttl)),
                    Outcome::Denied(d) if d.busy => None,
                    Outcome::Denied(_) => Some((own, neg)),
                },
            )
            .await
    }

    /// A client of the runtime's ImageService (connects lazily, reconnects by itself).
    fn images(
        &self,
    ) -> Option<cri::image_service_client::ImageServiceClient<tonic::transport::Channel>> {
        let upstream = self.upstream.as_ref()?;
        Some(
            self.images
                .get_or_init(|| cri::image_client(upstream))
                .clone(),
        )
    }

    /// A client of the runtime's RuntimeService (connects lazily, reconnects by itself).
    fn sandboxes(
        &self,
    ) -> Option<cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>> {
        let upstream = self.upstream.as_ref()?;
        Some(
            self.sandboxes
                .get_or_init(|| cri::runtime_client(upstream))
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

    /// Credentials to use for `registry` when deciding on images the runtime holds (as if a
    /// pull from it had been allowed with them), e.g. from a docker config for `cri-guard audit`.
    pub fn add_credentials(&self, registry: &str, auth: &Auth) {
        self.remember(registry, auth);
    }

    fn remember(&self, registry: &str, auth: &Auth) {
        if *auth != Auth::Anonymous {
            self.remembered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(registry.to_string(), auth.clone());
        }
    }

    /// What the runtime holds under `image` (a name or an id), if anything.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>, String> {
        let Some(mut runtime) = self.images() else {
            return Err("cri-guard has no runtime to look the image up in".into());
        };
        runtime
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map(|r| r.into_inner().image)
            .map_err(|e| format!("cannot look the image up in the runtime: {}", e.message()))
    }

    /// The namespace of sandbox `id` as the runtime recorded it.
    /// The (namespace, name) of sandbox `id` as the runtime recorded them.
    async fn sandbox_namespace(&self, id: &str) -> Result<(String, String), String> {
        if id.is_empty() {
            return Err("the request names no pod sandbox".into());
        }
        let Some(mut runtime) = self.sandboxes() else {
            return Err("cri-guard has no runtime to look the pod sandbox up in".into());
        };
        let status = runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .map_err(|e| {
                format!(
                    "cannot look the pod sandbox {id} up in the runtime: {}",
                    e.message()
                )
            })?
            .into_inner();
        status
            .status
            .and_then(|s| s.metadata)
            .map(|m| (m.namespace, m.name))
            .ok_or_else(|| format!("the runtime reports no metadata for pod sandbox {id}"))
    }

    /// Decides whether a container may be created from the image `req` names (invariant I2);
    /// returns the decision and, when `req` names the image other than by the id checked, the
    /// field to append so the runtime creates it from exactly that image.
    ///
    /// Nothing in the request is trusted: the pod's namespace is the runtime's record of the
    /// sandbox `pod_sandbox_id` (PodSandboxStatus), not the request's `sandbox_config`; the
    /// image is what the runtime holds (ImageStatus: id, repo digests, tags); a name the
    /// request gives (`user_specified_image`, `image`) selects a rule only if the runtime holds
    /// that name for that image. See [`Verifier::check_held`].
    pub async fn check_create(
        &self,
        req: &cri::CreateContainerRequest,
    ) -> Result<(Decision, Option<Bytes>), Status> {
        let (result, facts) = self.create_decision(req).await;
        result.map_err(|denial| denial.status(&facts.shown))
    }

    /// [`Verifier::check_create`], with what it found out about the pod for the decision line.
    async fn create_decision(
        &self,
        req: &cri::CreateContainerRequest,
    ) -> (Result<(Decision, Option<Bytes>), Denial>, CreateFacts) {
        let spec = req.config.as_ref().and_then(|c| c.image.as_ref());
        let (image, user) = spec
            .map(|s| (s.image.as_str(), s.user_specified_image.as_str()))
            .unwrap_or(("", ""));
        let mut facts = CreateFacts {
            shown: if user.is_empty() { image } else { user }.to_string(),
            ..CreateFacts::default()
        };
        if image.is_empty() {
            let why = "the container config names no image";
            return (Err(Denial::of(ReasonClass::InvalidRequest, why)), facts);
        }
        match self.sandbox_namespace(&req.pod_sandbox_id).await {
            Ok((namespace, pod)) => (facts.namespace, facts.pod) = (namespace, pod),
            Err(why) => return (Err(Denial::of(ReasonClass::Runtime, why)), facts),
        }
        let found = match self.image_status(image).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                let why = format!("the runtime has no image {image}");
                return (Err(Denial::of(ReasonClass::Runtime, why)), facts);
            }
            Err(why) => return (Err(Denial::of(ReasonClass::Runtime, why)), facts),
        };
        let d = match self
            .check_held(&found, &[user, image], &facts.namespace)
            .await
        {
            Ok(d) => d,
            Err(denial) => return (Err(denial), facts),
        };
        let pin = (image != found.id).then(|| {
            cri::CreateContainerRequest {
                config: Some(cri::ContainerConfig {
                    image: Some(cri::ImageSpec {
                        image: found.id.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec()
            .into()
        });
        (Ok((d, pin)), facts)
    }

    /// Decides on an image the runtime holds (an entry of its ListImages) as CreateContainer
    /// would for a pod in `namespace` that names it by its first tag; `Err` is the denial's
    /// reason.
    pub async fn check_stored(
        &self,
        image: &cri::Image,
        namespace: &str,
    ) -> Result<Decision, String> {
        let names: Vec<&str> = image.repo_tags.iter().map(String::as_str).collect();
        self.check_held(image, &names, namespace)
            .await
            .map_err(|d| d.reason)
    }

    /// Decides on an image the runtime holds, for a pod in `namespace`.
    ///
    /// `names` are what the caller called the image; one selects a rule only if the runtime
    /// holds that name for this image (a tag among its repo tags, a digest reference among its
    /// repo digests). Each repo digest is verified, the held name's repository first, each under
    /// the rule for its own repository (the held name, when it is that repository). Allowed if
    /// one of them is. An image without any repo digest (built or imported on the node) can
    /// only be allowed by a `skip` (or `audit`) rule for a name it holds.
    async fn check_held(
        &self,
        found: &cri::Image,
        names: &[&str],
        namespace: &str,
    ) -> Result<Decision, Denial> {
        let named = names
            .iter()
            .filter(|n| !n.is_empty() && !n.starts_with("sha256:"))
            .filter_map(|n| reference::parse(n).ok())
            .find(|r| holds(found, r));
        let named_repo = named.as_ref().map(|n| Normal::of(n).repository());
        let mut digests: Vec<(Reference, String)> = found
            .repo_digests
            .iter()
            .filter_map(|rd| {
                let r = reference::parse(rd).ok()?;
                let d = r.digest()?.to_string();
                Some((r, d))
            })
            .collect();
        digests.sort_by_key(|(r, _)| Some(Normal::of(r).repository()) != named_repo);

        if digests.is_empty() {
            let state = self.current();
            let names = named.iter().cloned().chain(
                found
                    .repo_tags
                    .iter()
                    .filter_map(|t| reference::parse(t).ok()),
            );
            for name in names {
                let matched = state.policy.matching(&name, namespace);
                if matches!(matched.mode(), Mode::Skip | Mode::Audit) {
                    let audit = matched.mode() == Mode::Audit;
                    return Ok(Decision {
                        image: name.whole(),
                        digest: None,
                        rule: matched.name().to_string(),
                        mode: matched.mode(),
                        outcome: audit.then(|| Outcome::Denied(Denial::new(no_digest(&found.id)))),
                        cached: false,
                        allowed: true,
                    });
                }
            }
            return Err(Denial::of(ReasonClass::NoDigest, no_digest(&found.id)));
        }
        let mut reasons = Vec::new();
        let mut class = ReasonClass::Other;
        for (repo, digest) in &digests {
            let rule_ref = match &named {
                Some(n) if Normal::of(n).repository() == Normal::of(repo).repository() => n.clone(),
                _ => repo.clone(),
            };
            let auth = self.auth_for(repo.registry());
            let d = self
                .check_reference(&rule_ref, Some(digest), namespace, &auth)
                .await;
            if d.allowed {
                return Ok(d);
            }
            class = d.class();
            reasons.push(format!("{}@{digest}: {}", repository_of(repo), d.reason()));
        }
        Err(Denial::of(
            class,
            format!(
                "no digest of this image passes the policy: {}",
                reasons.join("; ")
            ),
        ))
    }

    /// The names of the runtime's sandbox (pause) image, and where they come from.
    ///
    /// containerd 1.x reports it in its verbose Status (`config.sandboxImage`); containerd 2.x
    /// does not report it over CRI at all until the image is pulled, and then marks it `pinned`.
    /// So: the verbose Status; else the policy's `[sandbox] image`; plus the id of every image
    /// the runtime lists as pinned. Empty: nothing says which image the runtime will use.
    async fn sandbox_images(&self) -> Result<Vec<String>, String> {
        let Some(mut runtime) = self.sandboxes() else {
            return Err("cri-guard has no runtime to ask".into());
        };
        let status = runtime
            .status(cri::StatusRequest { verbose: true })
            .await
            .map_err(|e| format!("the runtime's Status failed: {}", e.message()))?
            .into_inner();
        let reported = status
            .info
            .get("config")
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|c| c.get("sandboxImage")?.as_str().map(str::to_string))
            .filter(|s| !s.is_empty());
        if let Some(name) = reported {
            return Ok(vec![name]);
        }
        let mut names: Vec<String> = self
            .current()
            .policy
            .sandbox
            .image
            .iter()
            .cloned()
            .collect();
        let Some(mut images) = self.images() else {
            return Ok(names);
        };
        let listed = images
            .list_images(cri::ListImagesRequest::default())
            .await
            .map_err(|e| format!("the runtime's ListImages failed: {}", e.message()))?
            .into_inner();
        names.extend(listed.images.into_iter().filter(|i| i.pinned).map(|i| i.id));
        Ok(names)
    }

    /// The runtime's sandbox (pause) image and the decision the policy gives it: on what the
    /// runtime holds, else on what the registry has; nothing is pulled. For the report at
    /// start and after a reload.
    pub async fn check_sandbox_image(&self) -> Option<Decision> {
        let name = self.sandbox_images().await.ok()?.into_iter().next()?;
        if let Ok(Some(found)) = self.image_status(&name).await {
            let d = self.check_held(&found, &[&name], "").await;
            return Some(d.unwrap_or_else(|denial| Decision {
                image: name.clone(),
                digest: None,
                rule: "(none)".into(),
                mode: Mode::Enforce,
                outcome: Some(Outcome::Denied(denial)),
                cached: false,
                allowed: false,
            }));
        }
        let registry = reference::parse(&name).ok()?.registry().to_string();
        Some(self.check_image(&name, "", &self.auth_for(&registry)).await)
    }

    /// Decides on a RunPodSandbox: the runtime's sandbox image must pass the policy for the
    /// pod's namespace. An image the runtime holds is decided like a create's; one it does not
    /// hold yet is verified, then pulled by cri-guard and confirmed (so the runtime finds the
    /// verified image and pulls nothing itself). `[sandbox] mode = "warn"` logs a failure
    /// instead of refusing.
    pub async fn check_sandbox(&self, req: &cri::RunPodSandboxRequest) -> Result<(), Status> {
        let namespace = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.namespace.clone())
            .unwrap_or_default();
        match self.sandbox_decision(&namespace).await {
            Ok(_) => Ok(()),
            Err((denial, image)) => match self.current().policy.sandbox.mode {
                SandboxMode::Warn => Ok(()),
                SandboxMode::Enforce => Err(denial.status(&image)),
            },
        }
    }

    /// The sandbox image's decision (the last one, if the runtime names several), or the
    /// denial and the image it is about.
    async fn sandbox_decision(
        &self,
        namespace: &str,
    ) -> Result<Option<Decision>, (Denial, String)> {
        let unknown = "(sandbox image)".to_string();
        let names = self.sandbox_images().await.map_err(|e| {
            let why = format!("cannot tell which sandbox image the runtime uses: {e}");
            (Denial::of(ReasonClass::Runtime, why), unknown.clone())
        })?;
        if names.is_empty() {
            return Err((
                Denial::of(
                    ReasonClass::Runtime,
                    "cannot tell which sandbox image the runtime uses: it does not report it before \
                     pulling it (containerd 2.x); set `[sandbox] image` in the policy to the runtime's \
                     sandbox image (containerd 2.x: pinned_images.sandbox of the \
                     io.containerd.cri.v1.images plugin)",
                ),
                unknown,
            ));
        }
        let mut last = None;
        for name in &names {
            let deny = |reason: String| (Denial::of(ReasonClass::Runtime, reason), name.clone());
            if let Some(found) = self.image_status(name).await.map_err(deny)? {
                let d = self
                    .check_held(&found, &[name], namespace)
                    .await
                    .map_err(|d| (d, name.clone()))?;
                last = Some(d);
                continue;
            }
            // Not on the node yet: decide on what the registry has, then pull it ourselves
            // and confirm what the runtime stored.
            let reference = reference::parse(name).map_err(|e| {
                let why = format!("not a valid image reference: {e}");
                (Denial::of(ReasonClass::InvalidRequest, why), name.clone())
            })?;
            let auth = self.auth_for(reference.registry());
            let d = self.check_image(name, namespace, &auth).await;
            if !d.allowed {
                return Err(match &d.outcome {
                    Some(Outcome::Denied(denial)) => (denial.clone(), name.clone()),
                    _ => (Denial::new(d.reason()), name.clone()),
                });
            }
            let (Some(digest), Some(Outcome::Verified { .. })) = (&d.digest, &d.outcome) else {
                // skip or audit: the runtime may pull it itself.
                last = Some(d);
                continue;
            };
            let Some(mut images) = self.images() else {
                return Err(deny("cri-guard has no runtime to pull into".into()));
            };
            let pulled = images
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: name.clone(),
                        ..Default::default()
                    }),
                    auth: to_cri_auth(&auth),
                    sandbox_config: None,
                })
                .await
                .map_err(|e| {
                    deny(format!(
                        "cri-guard could not pull the sandbox image: {}",
                        e.message()
                    ))
                })?
                .into_inner();
            self.clone()
                .confirm_pull(
                    reference,
                    namespace.to_string(),
                    auth,
                    digest.clone(),
                    pulled,
                )
                .await
                .map_err(|denial| (denial, name.clone()))?;
            last = Some(d);
        }
        Ok(last)
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
    ) -> Result<(), Denial> {
        let image = reference.whole();
        let Some(mut client) = self.images() else {
            return Ok(());
        };
        let spec = Some(cri::ImageSpec {
            image: pulled.image_ref.clone(),
            ..Default::default()
        });
        let repo = Normal::of(&reference).repository();
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
                    let r = reference::parse(&rd).ok()?;
                    let d = r.digest()?.to_string();
                    (Normal::of(&r).repository() == repo).then_some(d)
                })
                .collect(),
            Err(e) => {
                warn!(image = %Text(&image), error = %Text(e.message()), "cannot read what the runtime stored");
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
        warn!(image = %Text(&image), stored = ?stored, removed = removed.is_ok(), "pulled digest not verified; image removed");
        Err(Denial::of(ReasonClass::TagMoved, why))
    }
}

/// How a policy says registries are reached (hosts.toml, plain HTTP, timeouts, token hosts):
/// what the verifier's registry client uses, and `cri-guard audit` to list registries.
pub fn registry_config(policy: &Policy) -> RegistryConfig {
    RegistryConfig {
        hosts_dir: policy.hosts_dir.clone(),
        insecure: policy
            .registries
            .iter()
            .filter(|(_, s)| s.insecure)
            .map(|(n, _)| n.clone())
            .collect(),
        timeout: policy.fetch.timeout,
        max_manifest_size: policy.fetch.max_manifest_size,
        token_hosts: policy
            .registries
            .iter()
            .filter(|(_, s)| !s.token_hosts.is_empty())
            .map(|(n, s)| (n.clone(), s.token_hosts.clone()))
            .collect(),
    }
}

/// What a create decision learnt about the call, for its decision line.
#[derive(Debug, Default)]
struct CreateFacts {
    /// The image as the request names it (the name it was asked for, else the id).
    shown: String,
    /// The pod's namespace and name, as the runtime recorded them.
    namespace: String,
    pod: String,
}

/// Whether the runtime holds name `r` for image `found`.
fn holds(found: &cri::Image, r: &Reference) -> bool {
    let n = Normal::of(r);
    let list = if r.digest().is_some() {
        &found.repo_digests
    } else {
        &found.repo_tags
    };
    list.iter()
        .filter_map(|x| reference::parse(x).ok())
        .any(|x| Normal::of(&x) == n)
}

fn no_rule(namespace: &str, mode: Mode) -> Denial {
    Denial::of(
        ReasonClass::NoRule,
        format!(
            "no policy rule matches this image{} (policy default: {})",
            if namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace {namespace}")
            },
            mode.as_str()
        ),
    )
}

fn no_digest(id: &str) -> String {
    format!(
        "image {id} has no registry digest (built or imported on the node), so it carries no \
         signature; only a `skip` rule for a name the runtime holds for it can allow it"
    )
}

/// The CRI form of credentials cri-guard holds (None: the runtime uses its own configuration).
fn to_cri_auth(auth: &Auth) -> Option<cri::AuthConfig> {
    match auth {
        Auth::Anonymous => None,
        Auth::Basic { username, password } => Some(cri::AuthConfig {
            username: username.clone(),
            password: password.clone(),
            ..Default::default()
        }),
        Auth::Bearer(t) => Some(cri::AuthConfig {
            registry_token: t.clone(),
            ..Default::default()
        }),
    }
}

impl State {
    /// The credentials to fetch from `repo` for an image at `image`: the caller's `auth` (given
    /// for the image's registry) only if `repo` is on that registry; for another registry (a
    /// `signaturesRepository` elsewhere) the node's credentials for it, or none (I6).
    fn auth_for_repo(&self, repo: &Reference, image: &Reference, auth: &Auth) -> Auth {
        if repo.registry() == image.registry() {
            return auth.clone();
        }
        self.policy
            .node_credentials
            .get(repo.registry())
            .cloned()
            .unwrap_or_default()
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
    // Credentials given for the image's registry go to no other (I6).
    let auth = &state.auth_for_repo(repo, reference, auth);
    let needs_attestations = !rule.attestations.is_empty();
    let mut found = discovery::discover(state, repo, digest, needs_attestations, auth).await;
    let attestors =
        match verify_signatures(state, repo, reference, rule, digest, auth, &mut found).await {
            Ok(a) => a,
            Err(denial) => return Outcome::Denied(denial.in_stage(ReasonClass::BadSignature)),
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
        Err(denial) => Outcome::Denied(denial.in_stage(ReasonClass::Attestation)),
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

/// Why tag-based signatures and attestations (`.sig`, `.att`) can't satisfy `attestor`, if
/// they can't: they carry no RFC 3161 timestamp cri-guard reads, so an attestor that requires
/// timestamps accepts only Sigstore bundles.
fn tag_based_unsupported(attestor: &Attestor) -> Option<String> {
    let n = attestor.transparency.min_timestamps;
    (n > 0).then(|| {
        format!(
            "attestor {} requires {n} RFC 3161 timestamp(s) (minTimestamps), which only Sigstore bundles carry; the .sig/.att tags do not count for it",
            attestor.name
        )
    })
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
            if let Some(why) = tag_based_unsupported(attestor) {
                if !attached.layers.is_empty() {
                    failures.push((3, why));
                }
                continue;
            }
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
    Err(if !sig_found {
        Denial::of(
            ReasonClass::Unsigned,
            format!("no signature found (nothing at {sig_place}; {new_format})"),
        )
    } else if sig_layers == 0 {
        let skipped = match &found.sig {
            Ok(a) if !a.skipped.is_empty() => a.skipped.join(", "),
            _ => "no layers".to_string(),
        };
        Denial::of(
            ReasonClass::Unsigned,
            format!("no cosign signature layer at {sig_place} (found: {skipped}); {new_format}"),
        )
    } else {
        Denial::new(format!("no valid signature ({new_format})"))
    })
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
            let started = std::time::Instant::now();
            match call {
                Call::Pull(req) => self.decide_pull(req, started).await,
                Call::Create(req) => self.decide_create(req, started).await,
                Call::RunSandbox(req) => self.decide_sandbox(req, started).await,
            }
        })
    }
}

/// The decision line of a [`Decision`] on a call.
fn log_decision(
    method: &'static str,
    d: &Decision,
    namespace: &str,
    pod: &str,
    started: std::time::Instant,
) {
    DecisionLog {
        method,
        image: &d.image,
        digest: d.digest.as_deref().unwrap_or(""),
        namespace,
        pod,
        rule: &d.rule,
        mode: d.mode.as_str(),
        verdict: d.verdict(),
        class: d.class(),
        reason: &d.reason(),
        cached: d.cached,
        duration: started.elapsed(),
    }
    .emit();
}

/// The decision line of a refusal that no rule decided (the request or the runtime's answer
/// did not get that far).
fn log_refusal(
    method: &'static str,
    image: &str,
    denial: &Denial,
    namespace: &str,
    pod: &str,
    started: std::time::Instant,
) {
    DecisionLog {
        method,
        image,
        digest: "",
        namespace,
        pod,
        rule: "(none)",
        mode: "",
        verdict: metrics::Verdict::Deny,
        class: denial.class,
        reason: &denial.reason,
        cached: false,
        duration: started.elapsed(),
    }
    .emit();
}

/// The pod's name and namespace a request's sandbox config claims.
fn claimed_pod(config: Option<&cri::PodSandboxConfig>) -> (&str, &str) {
    config
        .and_then(|c| c.metadata.as_ref())
        .map(|m| (m.namespace.as_str(), m.name.as_str()))
        .unwrap_or(("", ""))
}

impl Verifier {
    async fn decide_sandbox(
        &self,
        req: &cri::RunPodSandboxRequest,
        started: std::time::Instant,
    ) -> Verdict {
        const METHOD: &str = "RunPodSandbox";
        let (namespace, pod) = claimed_pod(req.config.as_ref());
        match self.sandbox_decision(namespace).await {
            Ok(Some(d)) => {
                log_decision(METHOD, &d, namespace, pod, started);
                Verdict::Forward
            }
            Ok(None) => Verdict::Forward,
            Err((denial, image)) => {
                if self.current().policy.sandbox.mode == SandboxMode::Warn {
                    // `[sandbox] mode = "warn"`: logged like an audit rule's would-be denial.
                    DecisionLog {
                        method: METHOD,
                        image: &image,
                        digest: "",
                        namespace,
                        pod,
                        rule: "[sandbox]",
                        mode: "warn",
                        verdict: metrics::Verdict::WouldDeny,
                        class: denial.class,
                        reason: &denial.reason,
                        cached: false,
                        duration: started.elapsed(),
                    }
                    .emit();
                    return Verdict::Forward;
                }
                log_refusal(METHOD, &image, &denial, namespace, pod, started);
                Verdict::Deny(denial.status(&image))
            }
        }
    }

    async fn decide_create(
        &self,
        req: &cri::CreateContainerRequest,
        started: std::time::Instant,
    ) -> Verdict {
        const METHOD: &str = "CreateContainer";
        let (result, facts) = self.create_decision(req).await;
        match result {
            Ok((d, pin)) => {
                log_decision(METHOD, &d, &facts.namespace, &facts.pod, started);
                match pin {
                    Some(field) => Verdict::ForwardAppended(field),
                    None => Verdict::Forward,
                }
            }
            Err(denial) => {
                log_refusal(
                    METHOD,
                    &facts.shown,
                    &denial,
                    &facts.namespace,
                    &facts.pod,
                    started,
                );
                Verdict::Deny(denial.status(&facts.shown))
            }
        }
    }

    async fn decide_pull(
        &self,
        req: &cri::PullImageRequest,
        started: std::time::Instant,
    ) -> Verdict {
        const METHOD: &str = "PullImage";
        let image = req.image.as_ref().map(|s| s.image.as_str()).unwrap_or("");
        // The namespace a pull claims is the kubelet's word (no sandbox the runtime knows yet):
        // it decides what may enter the store, never what runs (see docs/threat-model.md).
        let (namespace, pod) = claimed_pod(req.sandbox_config.as_ref());
        let auth = Auth::from_cri(req.auth.as_ref());
        let d = self.check_image(image, namespace, &auth).await;
        log_decision(METHOD, &d, namespace, pod, started);
        match (&d.outcome, d.allowed) {
            (Some(Outcome::Denied(denial)), false) => Verdict::Deny(denial.status(image)),
            (_, false) => Verdict::Deny(Denial::new(d.reason()).status(image)),
            (Some(Outcome::Denied(_)), true) => Verdict::Forward,
            (Some(Outcome::Verified { .. }), true) => {
                let (Some(digest), Ok(reference)) = (d.digest.clone(), reference::parse(image))
                else {
                    return Verdict::Deny(
                        Denial::new("internal: verified without a digest").status(image),
                    );
                };
                self.remember(reference.registry(), &auth);
                let this = self.clone();
                let (namespace, pod) = (namespace.to_string(), pod.to_string());
                let image = image.to_string();
                Verdict::ForwardThen(Box::new(move |pulled| {
                    Box::pin(async move {
                        let r = this
                            .confirm_pull(reference, namespace.clone(), auth, digest, pulled)
                            .await;
                        r.map_err(|denial| {
                            // The pull's verdict changed: a second line says so.
                            log_refusal(METHOD, &image, &denial, &namespace, &pod, started);
                            denial.status(&image)
                        })
                    })
                }))
            }
            (None, true) => Verdict::Forward,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Denials are classed by where they arise: a registry failure keeps its class whatever
    /// stage it came from; in the signature stage, nothing found is `unsigned` and anything else
    /// `bad_signature`; in the attestation stage, `attestation`.
    #[test]
    fn denial_classes() {
        let sig = |reason: &str| {
            Denial::new(reason)
                .in_stage(ReasonClass::BadSignature)
                .class
        };
        // Nothing found is classed where it is found (`unsigned`), whatever its words.
        assert_eq!(
            Denial::of(ReasonClass::Unsigned, "no signature found")
                .in_stage(ReasonClass::BadSignature)
                .class,
            ReasonClass::Unsigned
        );
        assert_eq!(
            sig("no valid signature: wrong key"),
            ReasonClass::BadSignature
        );
        assert_eq!(
            sig("signed by 1 of the 2 required attestors"),
            ReasonClass::BadSignature
        );
        let down = RegistryError::Unreachable {
            url: "http://r/v2/".into(),
            reason: "refused".into(),
        };
        let d = Denial::registry(&down, "cannot fetch").in_stage(ReasonClass::Attestation);
        assert_eq!(d.class, ReasonClass::RegistryUnavailable);
        let bad = RegistryError::Status {
            url: "http://r/v2/".into(),
            status: 403,
        };
        assert_eq!(
            Denial::registry(&bad, "x").class,
            ReasonClass::RegistryError
        );
        assert_eq!(
            Denial::new("missing attestation x")
                .in_stage(ReasonClass::Attestation)
                .class,
            ReasonClass::Attestation
        );
        assert_eq!(no_rule("ns", Mode::Enforce).class, ReasonClass::NoRule);
    }
}
