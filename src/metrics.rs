//! What cri-guard counts, and the one decision line per intercepted call.
//!
//! Every metric lives in one process-wide [`Metrics`] ([`METRICS`]), built once with the
//! `prometheus-client` crate and read by the `/metrics` endpoint ([`http`]). What the proxy and
//! the verifier do to it is one call each:
//!
//! | where | call | cost |
//! |---|---|---|
//! | every relayed call (proxy) | [`Metrics::relayed`], [`Metrics::relay_failed`] | one relaxed atomic add on a counter made at start (no lock, no allocation) |
//! | upstream connect (proxy) | [`Metrics::upstream_connect`] | one atomic add |
//! | each intercepted call (verify) | [`DecisionLog::emit`]: the log line and the decision counters | a label lookup under a read lock, a histogram observation |
//! | each verification run, cache lookup and eviction (verify) | [`Metrics::verification`], [`Metrics::cache_lookup`], [`Metrics::cache_eviction`] | atomics, a histogram |
//! | each registry request (registry) | [`Metrics::registry_request`], [`Metrics::registry_error`] | a label lookup |
//!
//! What is read at scrape time instead of counted (the policy's generation and reload state,
//! the decision cache's size, whether the runtime answers) comes from [`Sources`], which
//! `main` sets once the verifier and reloader exist.
//!
//! Label values are bounded so the number of series is too, whatever callers send: methods are
//! the CRI methods this build knows, else `unknown`; rules are the policy's rule names (at most
//! [`MAX_RULE_LABELS`]), else `other`; registries are those the policy names (at most
//! [`MAX_REGISTRY_LABELS`]), else `other`; reasons are the fixed [`ReasonClass`] set. No label
//! ever carries an image name, a namespace or other text from a request.

pub mod http;

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::cri::KNOWN_METHODS;
use crate::proxy::grpc::Text;
use crate::reload::PolicyStatus;

/// Most distinct `rule` label values; further rule names count as `other`.
pub const MAX_RULE_LABELS: usize = 128;
/// Most distinct `registry` label values; further registries count as `other`.
pub const MAX_REGISTRY_LABELS: usize = 64;

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The result of a decision, as the log line and the `result` label say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Forwarded to the runtime.
    Allow,
    /// Refused; nothing reached the runtime.
    Deny,
    /// A rule in `audit` mode let through what it would have refused.
    WouldDeny,
}

impl Verdict {
    /// The label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::WouldDeny => "would_deny",
        }
    }
}

/// Why a decision came out as it did, as a small fixed set (the `reason` label). The log line
/// carries the full reason text besides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonClass {
    /// Signed (and attested) as the rule requires.
    Verified,
    /// The matching rule skips verification.
    Skipped,
    /// No policy configured: the proxy is transparent.
    NoPolicy,
    /// No rule matches the image; the policy's default decided.
    NoRule,
    /// No signature found for the image.
    Unsigned,
    /// Signatures found, but none (or too few) valid for the rule's attestors.
    BadSignature,
    /// A required attestation is missing or fails.
    Attestation,
    /// The image has no registry digest (built or imported on the node).
    NoDigest,
    /// The registry could not be reached in time (the kubelet's `RegistryUnavailable`).
    RegistryUnavailable,
    /// The registry answered with an error or with data cri-guard refuses.
    RegistryError,
    /// cri-guard was at its bound of concurrent verifications.
    Busy,
    /// The request itself is unusable (not an image reference, no image, no sandbox).
    InvalidRequest,
    /// The runtime could not be asked (ImageStatus, PodSandboxStatus, Status) or does not hold
    /// what the request names.
    Runtime,
    /// The tag moved to an unverified digest during the pull; the image was removed.
    TagMoved,
    /// Anything else (an internal error).
    Other,
}

impl ReasonClass {
    /// Every class, for documentation and tests.
    pub const ALL: [ReasonClass; 15] = [
        ReasonClass::Verified,
        ReasonClass::Skipped,
        ReasonClass::NoPolicy,
        ReasonClass::NoRule,
        ReasonClass::Unsigned,
        ReasonClass::BadSignature,
        ReasonClass::Attestation,
        ReasonClass::NoDigest,
        ReasonClass::RegistryUnavailable,
        ReasonClass::RegistryError,
        ReasonClass::Busy,
        ReasonClass::InvalidRequest,
        ReasonClass::Runtime,
        ReasonClass::TagMoved,
        ReasonClass::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonClass::Verified => "verified",
            ReasonClass::Skipped => "skipped",
            ReasonClass::NoPolicy => "no_policy",
            ReasonClass::NoRule => "no_rule",
            ReasonClass::Unsigned => "unsigned",
            ReasonClass::BadSignature => "bad_signature",
            ReasonClass::Attestation => "attestation",
            ReasonClass::NoDigest => "no_digest",
            ReasonClass::RegistryUnavailable => "registry_unavailable",
            ReasonClass::RegistryError => "registry_error",
            ReasonClass::Busy => "busy",
            ReasonClass::InvalidRequest => "invalid_request",
            ReasonClass::Runtime => "runtime",
            ReasonClass::TagMoved => "tag_moved",
            ReasonClass::Other => "other",
        }
    }
}

/// One decision on an intercepted call: logged as one line and counted.
///
/// Text that callers, pod authors or registries control (image, namespace, pod, reason) is
/// logged escaped and bounded ([`Text`]); credentials are never part of it.
#[derive(Debug, Clone)]
pub struct DecisionLog<'a> {
    /// `PullImage`, `CreateContainer` or `RunPodSandbox`.
    pub method: &'static str,
    pub image: &'a str,
    /// The digest decided on, if one was known.
    pub digest: &'a str,
    pub namespace: &'a str,
    /// The pod's name (the runtime's record for creates; the request's for pulls and sandboxes).
    pub pod: &'a str,
    pub rule: &'a str,
    /// The rule's mode: `enforce`, `audit` or `skip`.
    pub mode: &'a str,
    pub verdict: Verdict,
    pub class: ReasonClass,
    pub reason: &'a str,
    /// The outcome came from the decision cache.
    pub cached: bool,
    /// Time from the call's arrival to the decision.
    pub duration: Duration,
}

impl DecisionLog<'_> {
    /// Writes the decision line (INFO; WARN for denials and for audit-mode would-be denials,
    /// which carry `audit=true`) and counts the decision.
    pub fn emit(&self) {
        METRICS.decided(self);
        let micros = self.duration.as_micros() as u64;
        macro_rules! line {
            ($level:ident, $($extra:tt)*) => {
                tracing::$level!(
                    method = self.method,
                    image = %Text(self.image),
                    digest = self.digest,
                    namespace = %Text(self.namespace),
                    pod = %Text(self.pod),
                    rule = %Text(self.rule),
                    mode = self.mode,
                    result = self.verdict.as_str(),
                    reason_class = self.class.as_str(),
                    reason = %Text(self.reason),
                    cached = self.cached,
                    micros,
                    $($extra)*
                )
            };
        }
        match self.verdict {
            Verdict::Allow => line!(info, "decision"),
            Verdict::Deny => line!(warn, "decision"),
            Verdict::WouldDeny => line!(warn, audit = true, "decision"),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    method: &'static str,
    rule: String,
    result: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabel {
    registry: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryErrorLabels {
    registry: String,
    kind: &'static str,
}

/// What metrics read at scrape time rather than count.
#[derive(Default)]
pub struct Sources {
    /// The policy's generation and reload history (`None`: no policy configured).
    pub policy: Option<Arc<PolicyStatus>>,
    /// Entries in the decision cache now.
    pub cache_entries: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("policy", &self.policy.is_some())
            .field("cache_entries", &self.cache_entries.is_some())
            .finish()
    }
}

/// Encodes the values of [`Sources`] at each scrape.
#[derive(Debug)]
struct Live {
    sources: Arc<RwLock<Sources>>,
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let e = encoder.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(e)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = self.sources.read().unwrap_or_else(|p| p.into_inner());
        let entries = sources.cache_entries.as_ref().map(|f| f()).unwrap_or(0);
        gauge(
            &mut encoder,
            "cache_entries",
            "Decisions held in the decision cache",
            None,
            entries as i64,
        )?;
        let snapshot = sources.policy.as_ref().map(|p| p.snapshot());
        gauge(
            &mut encoder,
            "policy_loaded",
            "1 when a policy is in force, 0 when none is configured (every image is allowed)",
            None,
            i64::from(snapshot.is_some()),
        )?;
        let Some(s) = snapshot else {
            return Ok(());
        };
        gauge(
            &mut encoder,
            "policy_generation",
            "Generation of the policy in force (changes with every successful load)",
            None,
            s.generation as i64,
        )?;
        gauge(
            &mut encoder,
            "policy_loaded_timestamp",
            "When the policy in force was loaded (Unix time)",
            Some(&Unit::Seconds),
            unix_seconds(s.loaded_at),
        )?;
        gauge(
            &mut encoder,
            "policy_last_reload_success",
            "1 if the latest reload attempt put its policy in force (or none was attempted), 0 if it was refused",
            None,
            i64::from(s.last_ok()),
        )?;
        gauge(
            &mut encoder,
            "policy_last_reload_timestamp",
            "When the latest reload was attempted (Unix time; 0: never)",
            Some(&Unit::Seconds),
            s.last.as_ref().map(|a| unix_seconds(a.at)).unwrap_or(0.0),
        )?;
        let reloads = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "policy_reloads",
            "Policy reload attempts since start, by result",
            None,
            reloads.metric_type(),
        )?;
        for (result, n) in [("success", s.reloads), ("failure", s.failures)] {
            let labels = ResultLabel { result };
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The process's metrics; see the module docs.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    decision_seconds: Family<MethodLabel, Histogram, fn() -> Histogram>,
    verification_seconds: Family<ResultLabel, Histogram, fn() -> Histogram>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    registry_requests: Family<RegistryLabel, Counter>,
    registry_errors: Family<RegistryErrorLabels, Counter>,
    /// One counter per known method (index in `KNOWN_METHODS`), the last for unknown ones.
    relayed: Vec<Counter>,
    relay_errors: Vec<Counter>,
    upstream_connects: Counter,
    upstream_connect_failures: Counter,
    refused_connections: Counter,
    upstream_up: Gauge,
    /// `rule` label values in use.
    rules: RwLock<BTreeSet<String>>,
    /// Registries the policy names (the `registry` label values).
    registries: RwLock<Arc<BTreeSet<String>>>,
    sources: Arc<RwLock<Sources>>,
}

/// Buckets of the decision time: a cache hit takes microseconds, a verification up to the
/// policy's `fetch.verifyTimeout`.
const DECISION_BUCKETS: [f64; 17] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Buckets of a verification run (registry round trips and signature checks).
const VERIFICATION_BUCKETS: [f64; 13] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn decision_histogram() -> Histogram {
    Histogram::new(DECISION_BUCKETS)
}

fn verification_histogram() -> Histogram {
    Histogram::new(VERIFICATION_BUCKETS)
}

/// The `method` label of a gRPC path: the method's name for a known CRI method, else `unknown`.
pub fn method_label(index: usize) -> &'static str {
    KNOWN_METHODS
        .get(index)
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("unknown")
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cri_guard");
        registry.register(
            "build",
            "cri-guard's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions on intercepted calls (PullImage, CreateContainer, RunPodSandbox) by method, rule, result (allow, deny, would_deny) and reason class",
            decisions.clone(),
        );
        let decision_seconds: Family<MethodLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(decision_histogram);
        registry.register_with_unit(
            "decision_duration",
            "Time from an intercepted call's arrival to its decision (cache hits included)",
            Unit::Seconds,
            decision_seconds.clone(),
        );
        let verification_seconds: Family<ResultLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(verification_histogram);
        registry.register_with_unit(
            "verification_duration",
            "Time of each verification run (decision cache misses: registry fetches and signature checks), by result (verified, denied)",
            Unit::Seconds,
            verification_seconds.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Decision cache lookups answered from the cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Decision cache lookups that needed a verification (or waited for one in flight)",
            cache_misses.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Decisions evicted from the full decision cache to make room",
            cache_evictions.clone(),
        );
        let registry_requests = Family::<RegistryLabel, Counter>::default();
        registry.register(
            "registry_requests",
            "HTTP requests to registries (token requests included), by registry (those the policy names, else other)",
            registry_requests.clone(),
        );
        let registry_errors = Family::<RegistryErrorLabels, Counter>::default();
        registry.register(
            "registry_errors",
            "Registry requests without a usable answer, by registry and kind (unreachable, unauthorized, status, too_large, malformed, digest_mismatch, over_budget)",
            registry_errors.clone(),
        );
        let relayed_family = Family::<MethodLabel, Counter>::default();
        let errors_family = Family::<MethodLabel, Counter>::default();
        // Made once here so the relay path only adds to an atomic.
        let (mut relayed, mut relay_errors) = (Vec::new(), Vec::new());
        for i in 0..=KNOWN_METHODS.len() {
            let label = MethodLabel {
                method: method_label(i),
            };
            relayed.push(relayed_family.get_or_create_owned(&label));
            relay_errors.push(errors_family.get_or_create_owned(&label));
        }
        registry.register(
            "relayed_calls",
            "Calls forwarded to the runtime, by CRI method (unknown: a method this build does not know)",
            relayed_family,
        );
        registry.register(
            "relayed_errors",
            "Forwarded calls that ended with a gRPC error status from the runtime, or that the runtime could not complete (unreachable, reset), by CRI method",
            errors_family,
        );
        let upstream_connects = Counter::default();
        registry.register(
            "upstream_connects",
            "Connections opened to the runtime's socket (one per kubelet connection, again after each break)",
            upstream_connects.clone(),
        );
        let upstream_connect_failures = Counter::default();
        registry.register(
            "upstream_connect_failures",
            "Failed attempts to connect to the runtime's socket (each fails a call with Unavailable)",
            upstream_connect_failures.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "refused_connections",
            "Client connections refused because max_connections were open (answered with GOAWAY ENHANCE_YOUR_CALM)",
            refused_connections.clone(),
        );
        let upstream_up = Gauge::default();
        registry.register(
            "upstream_up",
            "1 if the runtime answered a Version call at the latest scrape, else 0",
            upstream_up.clone(),
        );
        let sources = Arc::new(RwLock::new(Sources::default()));
        registry.register_collector(Box::new(Live {
            sources: sources.clone(),
        }));
        Metrics {
            registry,
            decisions,
            decision_seconds,
            verification_seconds,
            cache_hits,
            cache_misses,
            cache_evictions,
            registry_requests,
            registry_errors,
            relayed,
            relay_errors,
            upstream_connects,
            upstream_connect_failures,
            refused_connections,
            upstream_up,
            rules: RwLock::new(BTreeSet::new()),
            registries: RwLock::new(Arc::new(BTreeSet::new())),
            sources,
        }
    }

    /// A call with method `index` ([`crate::proxy::method_index`]) is forwarded to the runtime.
    #[inline]
    pub fn relayed(&self, index: usize) {
        if let Some(c) = self.relayed.get(index) {
            c.inc();
        }
    }

    /// A forwarded call with method `index` ended in an error status or could not complete.
    #[inline]
    pub fn relay_failed(&self, index: usize) {
        if let Some(c) = self.relay_errors.get(index) {
            c.inc();
        }
    }

    /// A connection to the runtime was attempted.
    pub fn upstream_connect(&self, ok: bool) {
        if ok {
            self.upstream_connects.inc();
        } else {
            self.upstream_connect_failures.inc();
        }
    }

    /// A client connection was refused (`max_connections`).
    pub fn refused_connection(&self) {
        self.refused_connections.inc();
    }

    /// The result of probing the runtime (the listener does it before each scrape).
    pub fn set_upstream_up(&self, up: bool) {
        self.upstream_up.set(i64::from(up));
    }

    /// A decision cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// An entry was evicted from the full decision cache.
    pub fn cache_eviction(&self) {
        self.cache_evictions.inc();
    }

    /// A verification run finished.
    pub fn verification(&self, verified: bool, took: Duration) {
        let result = if verified { "verified" } else { "denied" };
        self.verification_seconds
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
    }

    /// The `registry` label for `registry`: itself if the policy names it, else `other`.
    fn registry_label(&self, registry: &str) -> String {
        let known = self
            .registries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if known.contains(registry) {
            registry.to_string()
        } else {
            "other".to_string()
        }
    }

    /// An HTTP request to `registry` (the name images use, e.g. `ghcr.io`) is sent.
    pub fn registry_request(&self, registry: &str) {
        let registry = self.registry_label(registry);
        self.registry_requests
            .get_or_create(&RegistryLabel { registry })
            .inc();
    }

    /// A request to `registry` failed; `kind` is one of the documented kinds.
    pub fn registry_error(&self, registry: &str, kind: &'static str) {
        let registry = self.registry_label(registry);
        self.registry_errors
            .get_or_create(&RegistryErrorLabels { registry, kind })
            .inc();
    }

    /// The registries the policy in force names become the `registry` label values (the first
    /// [`MAX_REGISTRY_LABELS`]; those seen under an earlier policy stay).
    pub fn set_registries(&self, names: impl IntoIterator<Item = String>) {
        let mut known = self
            .registries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .clone();
        for n in names {
            if known.len() >= MAX_REGISTRY_LABELS {
                break;
            }
            known.insert(n);
        }
        *self.registries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(known);
    }

    /// Sets what scrapes read (see [`Sources`]).
    pub fn set_sources(&self, sources: Sources) {
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = sources;
    }

    /// The `rule` label for `rule`, within [`MAX_RULE_LABELS`].
    fn rule_label(&self, rule: &str) -> String {
        if self
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(rule)
        {
            return rule.to_string();
        }
        let mut rules = self.rules.write().unwrap_or_else(|p| p.into_inner());
        if rules.len() < MAX_RULE_LABELS && rule.len() <= 128 {
            rules.insert(rule.to_string());
            rule.to_string()
        } else if rules.contains(rule) {
            rule.to_string()
        } else {
            "other".to_string()
        }
    }

    fn decided(&self, d: &DecisionLog) {
        let labels = DecisionLabels {
            method: d.method,
            rule: self.rule_label(d.rule),
            result: d.verdict.as_str(),
            reason: d.class.as_str(),
        };
        self.decisions.get_or_create(&labels).inc();
        self.decision_seconds
            .get_or_create(&MethodLabel { method: d.method })
            .observe(d.duration.as_secs_f64());
    }

    /// The exposition: the Prometheus text format (0.0.4), or OpenMetrics with `openmetrics`.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let done = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        if done.is_err() {
            out.clear();
        }
        out
    }
}

/// The registries a policy names: the host of every image pattern that starts with one (no
/// wildcard in it), every `[registries."<host>"]`, `nodeCredentials` host and signatures
/// repository.
pub fn policy_registries(policy: &crate::verify::policy::Policy) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = policy.registries.keys().cloned().collect();
    out.extend(policy.node_credentials.keys().cloned());
    for rule in &policy.rules {
        for p in &rule.image_references {
            if let Some((first, _)) = p.text.split_once('/') {
                let host_like = first.contains(['.', ':']) || first == "localhost";
                if host_like && !first.contains(['*', '?', '[']) {
                    out.insert(first.to_string());
                }
            }
        }
        if let Some(r) = &rule.signatures_repository {
            out.insert(r.registry().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::method_index;

    /// Every known method has a distinct label, and any other path is `unknown`.
    #[test]
    fn method_labels_are_bounded_and_distinct() {
        let labels: BTreeSet<&str> = (0..KNOWN_METHODS.len()).map(method_label).collect();
        assert_eq!(labels.len(), KNOWN_METHODS.len());
        assert!(!labels.contains("unknown"));
        assert_eq!(method_index(b"/runtime.v1.RuntimeService/Version"), 0);
        let other = method_index(b"/runtime.v1.RuntimeService/SomethingNew");
        assert_eq!(method_label(other), "unknown");
        assert_eq!(method_label(method_index(b"/x")), "unknown");
    }

    /// The relay counters add up per method, and the exposition names them with the prefix and
    /// `_total`.
    #[test]
    fn relayed_calls_are_counted_per_method() {
        let m = Metrics::new();
        let v = method_index(b"/runtime.v1.RuntimeService/Version");
        m.relayed(v);
        m.relayed(v);
        m.relay_failed(v);
        m.relayed(method_index(b"/runtime.v1.Nope/X"));
        let text = m.encode(false);
        assert!(
            text.contains("cri_guard_relayed_calls_total{method=\"Version\"} 2"),
            "{text}"
        );
        assert!(text.contains("cri_guard_relayed_errors_total{method=\"Version\"} 1"));
        assert!(text.contains("cri_guard_relayed_calls_total{method=\"unknown\"} 1"));
    }

    /// Rule labels stop growing at the bound; later names count as `other`.
    #[test]
    fn rule_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_RULE_LABELS + 10 {
            let _ = m.rule_label(&format!("rule-{i}"));
        }
        assert_eq!(m.rule_label("rule-0"), "rule-0");
        assert_eq!(m.rule_label("a-new-rule"), "other");
        assert_eq!(m.rules.read().unwrap().len(), MAX_RULE_LABELS);
    }

    /// Only registries the policy names get their own label.
    #[test]
    fn registry_labels_are_the_policys() {
        let m = Metrics::new();
        m.set_registries(["ghcr.io".to_string()]);
        m.registry_request("ghcr.io");
        m.registry_request("evil.example");
        m.registry_error("evil.example", "unreachable");
        let text = m.encode(false);
        assert!(text.contains("cri_guard_registry_requests_total{registry=\"ghcr.io\"} 1"));
        assert!(text.contains("cri_guard_registry_requests_total{registry=\"other\"} 1"));
        assert!(!text.contains("evil.example"));
        assert!(text.contains(
            "cri_guard_registry_errors_total{registry=\"other\",kind=\"unreachable\"} 1"
        ));
    }

    /// A decision is counted under bounded labels and timed; no request text reaches a label.
    #[test]
    fn decisions_are_counted_with_bounded_labels() {
        let m = Metrics::new();
        let d = DecisionLog {
            method: "PullImage",
            image: "evil.example/x\ny:1",
            digest: "",
            namespace: "ns",
            pod: "p",
            rule: "release",
            mode: "enforce",
            verdict: Verdict::Deny,
            class: ReasonClass::Unsigned,
            reason: "no signature found",
            cached: false,
            duration: Duration::from_millis(3),
        };
        m.decided(&d);
        let text = m.encode(false);
        assert!(text.contains(
            "cri_guard_decisions_total{method=\"PullImage\",rule=\"release\",result=\"deny\",reason=\"unsigned\"} 1"
        ), "{text}");
        assert!(
            text.contains(
                "cri_guard_decision_duration_seconds_bucket{method=\"PullImage\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("evil.example"));
    }

    /// Scrape-time values: no policy says so; a policy's generation and reload state show.
    #[test]
    fn live_values_come_from_the_sources() {
        let m = Metrics::new();
        assert!(m.encode(false).contains("cri_guard_policy_loaded 0"));
        m.set_sources(Sources {
            policy: Some(Arc::new(PolicyStatus::new(7))),
            cache_entries: Some(Box::new(|| 42)),
        });
        let text = m.encode(false);
        assert!(text.contains("cri_guard_policy_loaded 1"), "{text}");
        assert!(text.contains("cri_guard_policy_generation 7"));
        assert!(text.contains("cri_guard_cache_entries 42"));
        assert!(text.contains("cri_guard_policy_last_reload_success 1"));
        assert!(text.contains("cri_guard_policy_reloads_total{result=\"failure\"} 0"));
        // OpenMetrics ends with EOF.
        assert!(m.encode(true).ends_with("# EOF\n"));
    }
}
