//! Verification benchmark: what the image guard costs on the pull path, measured against
//! baselines in the same run (design.md section 7).
//!
//! 1. Cache-hit decision: `Verifier::check_image` on an already verified digest / tag reference,
//!    against its parts (`Reference` parse, `Policy::matching`, a bare `Cache::get`).
//! 2. Cold verification of a key-signed image on the bed's local registry: registry round trips
//!    (requests counted by a TCP forwarder in this process that parses request heads; rounds,
//!    the sequential depth, by a delay the forwarder adds to each request), and time against the
//!    same raw HTTP requests made by a plain reqwest client, interleaved batches. For the old
//!    format (`.sig` tag) and the new one (a Sigstore bundle as an OCI referrer, cosign 3's
//!    default), found through the referrers API (the bed's referrers registry) and through the
//!    referrers tag (docker-registry 2.8).
//! 3. 200 concurrent `check_image` calls on one unverified digest: verifications run, wrong
//!    answers, registry requests, wall time.
//! 4. Resident memory with 100,000 cached decisions (measured in a fresh child process).
//!
//! ```text
//! cargo bench --bench verify             # full run
//! cargo bench --bench verify -- --quick  # smoke run, < 30 s
//! ```
//!
//! Needs root and the test bed's Debian packages (containerd, runc, docker-registry, umoci,
//! busybox-static). Targets are printed with PASS/MISS; a miss never fails the run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cri_guard::registry::Auth;
use cri_guard::verify::cache::{Cache, Key};
use cri_guard::verify::cosign::{self, SigLayer};
use cri_guard::verify::policy::Policy;
use cri_guard::verify::{Outcome, Verifier};
use oci_client::Reference;
use support::sign::TestKey;
use support::{BedOptions, RegistryKind, TestBed};

const NS: &str = "default";
const REPO: &str = "vbench";
/// Repository of the new-format (Sigstore bundle) images, on both registries.
const NEW_REPO: &str = "vbench-new";
/// Delay the forwarder adds to each request when it measures rounds.
const ROUND_DELAY: Duration = Duration::from_millis(100);
const OCI_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const MANIFEST_TYPES: &str = cri_guard::registry::MANIFEST_TYPES;

/// Iteration counts for one run.
struct Plan {
    quick: bool,
    /// Cache-hit calls per series, and the batch size of the interleaving.
    hit_iters: usize,
    hit_batch: usize,
    hit_warmup: usize,
    /// Cold verifications per side per round and kind with a warm connection pool (distinct
    /// signed images, one each), and the batch size.
    cold_iters: usize,
    cold_batch: usize,
    /// Cold verifications per side per round and kind with a new client (and connection) each.
    fresh_iters: usize,
    rounds: usize,
    concurrent: usize,
    mem_entries: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                hit_iters: 20_000,
                hit_batch: 2_000,
                hit_warmup: 2_000,
                cold_iters: 30,
                cold_batch: 10,
                fresh_iters: 10,
                rounds: 3,
                concurrent: 200,
                mem_entries: 100_000,
            }
        } else {
            Plan {
                quick,
                hit_iters: 200_000,
                hit_batch: 10_000,
                hit_warmup: 20_000,
                cold_iters: 200,
                cold_batch: 20,
                fresh_iters: 60,
                rounds: 3,
                concurrent: 200,
                mem_entries: 100_000,
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        let policy = PathBuf::from(&args[i + 1]);
        let entries: usize = args[i + 2].parse().expect("entries");
        memory_child(&policy, entries);
        return;
    }
    let plan = Plan::new(args.iter().any(|a| a == "--quick"));
    let started = Instant::now();
    println!(
        "verify bench ({}): {} CPUs, clocksource {}",
        if plan.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap_or_default()
            .trim()
    );

    let bed = TestBed::start_with_blocking(BedOptions::default().with_referrers_registry());
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "release");
    let images = make_images(&bed, &key, plan.cold_iters + 2);
    let unsigned = push_variant(bed.registry.addr(), &base_manifest(&bed), "unsigned", "u");
    let refs = bed.registry_of(RegistryKind::Referrers).addr().to_string();
    let new_api = make_new_images(&bed, RegistryKind::Referrers, &key, plan.cold_iters + 2);
    let new_tag = make_new_images(&bed, RegistryKind::Distribution, &key, plan.cold_iters + 2);
    let fwd = Forwarder::start(bed.registry.addr().to_string());
    let fwd_refs = Forwarder::start(refs.clone());
    let fwd_hosts = bed.dir.path().join("fwd-certs.d");
    write_hosts(&fwd_hosts, bed.registry.addr(), &fwd.addr);
    write_hosts(&fwd_hosts, &refs, &fwd_refs.addr);
    let env = Env {
        reg: bed.registry.addr().to_string(),
        direct_policy: policy_text(
            &bed.containerd.certs_dir(),
            bed.registry.addr(),
            &refs,
            &key_path,
        ),
        fwd_policy: policy_text(&fwd_hosts, bed.registry.addr(), &refs, &key_path),
        base: bed.dir.path().to_path_buf(),
        images,
        unsigned,
        fwd,
        refs,
        new_api,
        new_tag,
        fwd_refs,
    };
    println!(
        "setup: test bed + {} signed images in {:.1} s; registry {} (plain HTTP), forwarder {}",
        env.images.len(),
        started.elapsed().as_secs_f64(),
        env.reg,
        env.fwd.addr
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(cache_hit(&plan, &env));
    rt.block_on(cold(&plan, &env));
    rt.block_on(cold_new(&plan, &env));
    println!();
    println!(
        "== 3. {} concurrent check_image on one unverified digest (fresh Verifier each, via the \
         counting forwarder) ==",
        plan.concurrent
    );
    for round in 0..plan.rounds {
        rt.block_on(concurrent(&plan, &env, "current-thread", round));
    }
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for round in 0..plan.rounds {
        mt.block_on(concurrent(&plan, &env, "multi-thread(2)", round));
    }
    drop(mt);
    memory(&plan, &env);
    drop(rt);
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(bed);
}

/// Everything the sections share.
struct Env {
    reg: String,
    /// Policy reaching the registry directly (containerd's certs.d).
    direct_policy: String,
    /// Policy reaching the registry through the counting forwarder.
    fwd_policy: String,
    base: PathBuf,
    images: Vec<Img>,
    unsigned: Img,
    fwd: Forwarder,
    /// The referrers registry (refreg).
    refs: String,
    /// New-format images on the referrers registry (found through the API).
    new_api: Vec<Img>,
    /// New-format images on docker-registry 2.8 (found through the referrers tag).
    new_tag: Vec<Img>,
    fwd_refs: Forwarder,
}

impl Env {
    fn policy(&self, text: &str) -> Policy {
        Policy::parse("bench", text, &self.base).expect("valid policy")
    }
    fn verifier(&self, via_forwarder: bool) -> Verifier {
        let text = if via_forwarder {
            &self.fwd_policy
        } else {
            &self.direct_policy
        };
        Verifier::new(self.policy(text), None).expect("verifier")
    }
}

/// A realistic policy: a skip rule and two team rules before the one that matches the bed's
/// registries.
fn policy_text(hosts_dir: &Path, reg: &str, refs: &str, key: &Path) -> String {
    format!(
        r#"default = "enforce"
hostsDir = "{hosts}"

[cache]
size = 100000

[[rules]]
name = "pause"
imageReferences = ["registry.k8s.io/pause:*"]
mode = "skip"

[[rules]]
name = "team-a"
imageReferences = ["registry.example.com/team-a/*"]
namespaces = ["team-a", "team-a-*"]
[[rules.attestors]]
name = "team-a"
key = "{key}"

[[rules]]
name = "team-b"
imageReferences = ["registry.example.com/team-b/*", "ghcr.io/example/team-b/*"]
[[rules.attestors]]
name = "team-b"
key = "{key}"

[[rules]]
name = "bed"
imageReferences = ["{reg}/*", "{refs}/*"]
[[rules.attestors]]
name = "release"
key = "{key}"
"#,
        hosts = hosts_dir.display(),
        key = key.display()
    )
}

/// `DIR/<reg>/hosts.toml` sending pulls of `reg` to `target` (plain HTTP).
fn write_hosts(dir: &Path, reg: &str, target: &str) {
    let d = dir.join(reg);
    std::fs::create_dir_all(&d).expect("hosts dir");
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"http://{target}\"\n\n[host.\"http://{target}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .expect("hosts.toml");
}

// ---------------------------------------------------------------------------------------------
// Images

/// One signed image in a bench repository.
#[derive(Clone)]
struct Img {
    /// Size of the manifest, bytes.
    size: usize,
    tag: String,
    digest: String,
    tag_ref: String,
    digest_ref: String,
}

/// The bed's busybox manifest (bytes, media type) pushed as `vbench:base`.
fn base_manifest(bed: &TestBed) -> (Vec<u8>, String) {
    let path = format!("/v2/{REPO}/manifests/base");
    let r = support::util::http(
        bed.registry.addr(),
        "GET",
        &path,
        &[("Accept", OCI_ACCEPT)],
        b"",
    )
    .expect("GET base manifest");
    assert_eq!(r.status, 200, "base manifest: {}", r.text());
    let media = r
        .header("Content-Type")
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    (r.body, media)
}

/// The base manifest with an annotation `n`, pushed as `vbench:<tag>` (a distinct digest that
/// shares the base's blobs: cheap to make many).
fn push_variant(reg: &str, base: &(Vec<u8>, String), n: &str, tag: &str) -> Img {
    push_variant_to(reg, REPO, base, n, tag)
}

/// `push_variant` into `repo` (its blobs must be there).
fn push_variant_to(reg: &str, repo: &str, base: &(Vec<u8>, String), n: &str, tag: &str) -> Img {
    let mut m: serde_json::Value = serde_json::from_slice(&base.0).expect("manifest JSON");
    m["annotations"] = serde_json::json!({ "cri-guard.bench/n": n });
    let body = serde_json::to_vec(&m).expect("manifest");
    let digest = support::sign::push_manifest(reg, None, repo, tag, &base.1, &body);
    Img {
        size: body.len(),
        tag: tag.to_string(),
        tag_ref: format!("{reg}/{repo}:{tag}"),
        digest_ref: format!("{reg}/{repo}@{digest}"),
        digest,
    }
}

/// `n` distinct images in `NEW_REPO` on the registry of `kind`, each signed the way cosign 3
/// signs offline by default (a key-signed Sigstore bundle v0.3: a DSSE envelope over a
/// `sign/v1` statement, stored as an OCI artifact whose subject is the image; on
/// docker-registry 2.8 also listed in the referrers tag `sha256-<hex>`, as cosign does there).
fn make_new_images(bed: &TestBed, kind: RegistryKind, key: &TestKey, n: usize) -> Vec<Img> {
    let registry = bed.registry_of(kind);
    let reg = registry.addr();
    registry.push(NEW_REPO, "base", None);
    let r = support::util::http(
        reg,
        "GET",
        &format!("/v2/{NEW_REPO}/manifests/base"),
        &[("Accept", OCI_ACCEPT)],
        b"",
    )
    .expect("GET base manifest");
    let media = r
        .header("Content-Type")
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_string();
    let base = (r.body, media);
    let config = support::sign::push_blob(reg, None, NEW_REPO, b"{}");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let img = push_variant_to(reg, NEW_REPO, &base, &format!("new{i}"), &format!("n{i}"));
        let hex = img.digest.trim_start_matches("sha256:");
        let statement = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {"sha256": hex}, "annotations": {}}],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {},
        })
        .to_string();
        let payload_type = "application/vnd.in-toto+json";
        let mut pae = format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            statement.len()
        )
        .into_bytes();
        pae.extend_from_slice(statement.as_bytes());
        let bundle = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "bench"}},
            "dsseEnvelope": {
                "payload": support::util::base64(statement.as_bytes()),
                "payloadType": payload_type,
                "signatures": [{"sig": key.sign(&pae)}],
            },
        })
        .to_string()
        .into_bytes();
        let layer = support::sign::push_blob(reg, None, NEW_REPO, &bundle);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": config},
            "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                        "size": bundle.len(), "digest": layer}],
            "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                            "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
            "subject": {"mediaType": base.1, "size": img.size, "digest": img.digest},
        });
        let body = serde_json::to_vec(&manifest).expect("manifest");
        let digest = format!(
            "sha256:{}",
            support::util::sha256_hex(&body).expect("sha256")
        );
        support::sign::push_manifest(
            reg,
            None,
            NEW_REPO,
            &digest,
            "application/vnd.oci.image.manifest.v1+json",
            &body,
        );
        if kind == RegistryKind::Distribution {
            let index = serde_json::json!({"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "size": body.len(), "digest": digest,
                    "artifactType": "application/vnd.oci.empty.v1+json"}]});
            support::sign::push_manifest(
                reg,
                None,
                NEW_REPO,
                &img.digest.replace(':', "-"),
                "application/vnd.oci.image.index.v1+json",
                &serde_json::to_vec(&index).expect("index"),
            );
        }
        out.push(img);
    }
    out
}

/// `n` distinct images, each signed by `key` (manifests pushed from 4 threads: each push spawns
/// `sha256sum`).
fn make_images(bed: &TestBed, key: &TestKey, n: usize) -> Vec<Img> {
    bed.registry.push(REPO, "base", None);
    let base = base_manifest(bed);
    let reg = bed.registry.addr();
    let mut out: Vec<Option<Img>> = vec![None; n];
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(n.div_ceil(4)).enumerate() {
            let base = &base;
            s.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    let i = t * n.div_ceil(4) + j;
                    *slot = Some(push_variant(reg, base, &i.to_string(), &format!("t{i}")));
                }
            });
        }
    });
    let out: Vec<Img> = out.into_iter().map(|i| i.expect("image")).collect();
    // Signing uploads the same config blob each time: sequential (concurrent uploads of one
    // blob make docker-registry answer DIGEST_INVALID).
    for img in &out {
        support::sign::sign_image(reg, None, REPO, &img.digest, key);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// p50 and p99 of nanosecond samples, in microseconds.
#[derive(Clone, Copy)]
struct Summary {
    p50: f64,
    p99: f64,
}

fn summarize(samples: &[u64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_unstable();
    let at = |q: f64| {
        if v.is_empty() {
            f64::NAN
        } else {
            v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1000.0
        }
    };
    Summary {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// 1. Cache hits

#[derive(Clone, Copy, PartialEq)]
enum Hit {
    Digest,
    Tag,
    Parse,
    ParseTag,
    Matching,
    ParseMatching,
    CacheGet,
    Clock,
}

impl Hit {
    const ALL: [Hit; 8] = [
        Hit::Digest,
        Hit::Tag,
        Hit::Parse,
        Hit::ParseTag,
        Hit::Matching,
        Hit::ParseMatching,
        Hit::CacheGet,
        Hit::Clock,
    ];
    fn label(self) -> &'static str {
        match self {
            Hit::Digest => "check_image, digest ref (decision hit)",
            Hit::Tag => "check_image, tag ref (resolution + decision hit)",
            Hit::Parse => "  baseline: Reference parse (digest ref)",
            Hit::ParseTag => "  baseline: Reference parse (tag ref)",
            Hit::Matching => "  baseline: Policy::matching (pre-parsed ref)",
            Hit::ParseMatching => "  baseline: parse + matching",
            Hit::CacheGet => "  baseline: bare Cache<Key,Outcome>::get (10k entries)",
            Hit::Clock => "  baseline: empty timed sample (clock overhead)",
        }
    }
}

async fn cache_hit(plan: &Plan, env: &Env) {
    println!();
    println!(
        "== 1. Cache-hit decision cost (current-thread runtime like `workers = 1`; {} calls per \
         series after {} warm-up, interleaved batches of {}; per-call timing) ==",
        plan.hit_iters, plan.hit_warmup, plan.hit_batch
    );
    let img = &env.images[0];
    let verifier = env.verifier(false);
    let first = verifier
        .check_image(&img.digest_ref, NS, &Auth::Anonymous)
        .await;
    let tag_first = verifier
        .check_image(&img.tag_ref, NS, &Auth::Anonymous)
        .await;
    println!(
        "  first check: digest ref allowed={} cached={} ({}); tag ref allowed={} cached={}",
        first.allowed,
        first.cached,
        first.reason(),
        tag_first.allowed,
        tag_first.cached
    );
    let policy = env.policy(&env.direct_policy);
    let parsed: Reference = img.digest_ref.parse().expect("reference");
    let cache: Cache<Key, Outcome> = Cache::new(100_000);
    let mut rng = SplitMix(42);
    for i in 0..10_000 {
        cache.insert(
            Key {
                scope: format!("{}/{REPO}-{i}", env.reg).into(),
                digest: rng.digest(),
                generation: 1,
                rule: 3,
                credential: None,
            },
            verified(),
            Duration::from_secs(3600),
        );
    }
    let probe = Key {
        scope: format!("{}/{REPO}", env.reg).into(),
        digest: rng.digest(),
        generation: 1,
        rule: 3,
        credential: None,
    };
    cache.insert(probe.clone(), verified(), Duration::from_secs(3600));

    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(plan.hit_iters); Hit::ALL.len()];
    let mut wrong = [0u64; 2];
    let mut scratch = Vec::with_capacity(plan.hit_warmup);
    let ctx = HitCtx {
        verifier: &verifier,
        img,
        policy: &policy,
        parsed: &parsed,
        cache: &cache,
        probe: &probe,
    };
    for kind in Hit::ALL {
        hit_series(&ctx, kind, plan.hit_warmup, &mut scratch, &mut [0; 2]).await;
        scratch.clear();
    }
    let batches = plan.hit_iters / plan.hit_batch;
    for b in 0..batches {
        // Rotate the order so no series always runs first.
        for k in 0..Hit::ALL.len() {
            let idx = (b + k) % Hit::ALL.len();
            hit_series(
                &ctx,
                Hit::ALL[idx],
                plan.hit_batch,
                &mut samples[idx],
                &mut wrong,
            )
            .await;
        }
    }
    println!("  {:<56} {:>8} {:>8}", "series", "p50 us", "p99 us");
    for (i, kind) in Hit::ALL.iter().enumerate() {
        let s = summarize(&samples[i]);
        let target = match kind {
            Hit::Digest | Hit::Tag => format!(
                "   target <= 10 us: p50 {} p99 {}",
                verdict(s.p50 <= 10.0),
                verdict(s.p99 <= 10.0)
            ),
            _ => String::new(),
        };
        println!(
            "  {:<56} {:>8.2} {:>8.2}{target}",
            kind.label(),
            s.p50,
            s.p99
        );
    }
    let (hits, misses, runs) = verifier.stats();
    println!(
        "  answers not (allowed && cached): digest {} tag {}; verifier stats: hits {hits} misses \
         {misses} verifications {runs}",
        wrong[0], wrong[1]
    );
}

#[derive(Clone, Copy)]
struct HitCtx<'a> {
    verifier: &'a Verifier,
    img: &'a Img,
    policy: &'a Policy,
    parsed: &'a Reference,
    cache: &'a Cache<Key, Outcome>,
    probe: &'a Key,
}

/// `n` timed calls of one series, appended to `out`.
async fn hit_series(
    ctx: &HitCtx<'_>,
    kind: Hit,
    n: usize,
    out: &mut Vec<u64>,
    wrong: &mut [u64; 2],
) {
    let HitCtx {
        verifier,
        img,
        policy,
        parsed,
        cache,
        probe,
    } = *ctx;
    match kind {
        Hit::Digest | Hit::Tag => {
            let (image, w) = if kind == Hit::Digest {
                (img.digest_ref.as_str(), 0)
            } else {
                (img.tag_ref.as_str(), 1)
            };
            for _ in 0..n {
                let t = Instant::now();
                let d = verifier.check_image(image, NS, &Auth::Anonymous).await;
                out.push(t.elapsed().as_nanos() as u64);
                if !(d.allowed && d.cached) {
                    wrong[w] += 1;
                }
                black_box(d);
            }
        }
        Hit::Parse => {
            for _ in 0..n {
                let t = Instant::now();
                let r = black_box(img.digest_ref.as_str()).parse::<Reference>();
                out.push(t.elapsed().as_nanos() as u64);
                black_box(r.is_ok());
            }
        }
        Hit::ParseTag => {
            for _ in 0..n {
                let t = Instant::now();
                let r = black_box(img.tag_ref.as_str()).parse::<Reference>();
                out.push(t.elapsed().as_nanos() as u64);
                black_box(r.is_ok());
            }
        }
        Hit::Matching => {
            for _ in 0..n {
                let t = Instant::now();
                let m = policy.matching(black_box(parsed), NS).mode();
                out.push(t.elapsed().as_nanos() as u64);
                black_box(m);
            }
        }
        Hit::ParseMatching => {
            for _ in 0..n {
                let t = Instant::now();
                let r: Reference = black_box(img.digest_ref.as_str())
                    .parse()
                    .expect("reference");
                let m = policy.matching(&r, NS).mode();
                out.push(t.elapsed().as_nanos() as u64);
                black_box(m);
            }
        }
        Hit::CacheGet => {
            for _ in 0..n {
                let t = Instant::now();
                let v = cache.get(black_box(probe));
                out.push(t.elapsed().as_nanos() as u64);
                black_box(v);
            }
        }
        Hit::Clock => {
            for _ in 0..n {
                let t = Instant::now();
                out.push(t.elapsed().as_nanos() as u64);
            }
        }
    }
}

fn verified() -> Outcome {
    Outcome::Verified {
        attestors: vec!["release".into()],
        attestations: Default::default(),
    }
}

/// A small deterministic generator for digests.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn digest(&mut self) -> [u8; 32] {
        let mut d = [0u8; 32];
        for c in d.chunks_mut(8) {
            c.copy_from_slice(&self.next().to_le_bytes());
        }
        d
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Cold verification

/// The raw requests a verification needs, made by a plain reqwest client (no checks, no
/// signature verification): HEAD manifest by tag (tag refs only), GET the `.sig` manifest, GET
/// its one layer.
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new(target: &str) -> Raw {
        Raw {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(10))
                .user_agent("raw-bench")
                .build()
                .expect("reqwest client"),
            base: format!("http://{target}/v2/{REPO}"),
        }
    }

    async fn fetch(&self, img: &Img, by_tag: bool) -> Result<(), String> {
        let e = |e: reqwest::Error| e.to_string();
        let digest = if by_tag {
            let r = self
                .http
                .head(format!("{}/manifests/{}", self.base, img.tag))
                .header("accept", MANIFEST_TYPES)
                .send()
                .await
                .map_err(e)?;
            r.headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .ok_or("no docker-content-digest")?
                .to_string()
        } else {
            img.digest.clone()
        };
        let sig = format!("{}.sig", digest.replace(':', "-"));
        let m = self
            .http
            .get(format!("{}/manifests/{sig}", self.base))
            .header("accept", MANIFEST_TYPES)
            .send()
            .await
            .map_err(e)?
            .bytes()
            .await
            .map_err(e)?;
        let v: serde_json::Value = serde_json::from_slice(&m).map_err(|e| e.to_string())?;
        let layer = v["layers"][0]["digest"].as_str().ok_or("no layer")?;
        let blob = self
            .http
            .get(format!("{}/blobs/{layer}", self.base))
            .send()
            .await
            .map_err(e)?
            .bytes()
            .await
            .map_err(e)?;
        if blob.is_empty() {
            return Err("empty blob".into());
        }
        Ok(())
    }
}

async fn timed_check(v: &Verifier, image: &str, wrong: &mut u64) -> u64 {
    let t = Instant::now();
    let d = v.check_image(image, NS, &Auth::Anonymous).await;
    let ns = t.elapsed().as_nanos() as u64;
    if !d.allowed || d.cached {
        *wrong += 1;
        if *wrong == 1 {
            println!("  unexpected decision for {image}: {}", d.reason());
        }
    }
    ns
}

async fn timed_raw(raw: &Raw, img: &Img, by_tag: bool, wrong: &mut u64) -> u64 {
    let t = Instant::now();
    let r = raw.fetch(img, by_tag).await;
    let ns = t.elapsed().as_nanos() as u64;
    if let Err(e) = r {
        *wrong += 1;
        if *wrong == 1 {
            println!("  raw fetch failed: {e}");
        }
    }
    ns
}

async fn cold(plan: &Plan, env: &Env) {
    println!();
    println!(
        "== 2. Cold verification of a key-signed image (local docker-registry, plain HTTP) =="
    );
    // Round trips, through the counting forwarder.
    let probe = &env.images[1];
    let counted = [
        ("tag ref, new Verifier (cold pool)", true, None),
        ("digest ref, new Verifier (cold pool)", false, None),
        ("tag ref, same Verifier (warm pool)", true, Some(2)),
        ("digest ref, same Verifier (warm pool)", false, Some(3)),
    ];
    println!(
        "  registry round trips (requests seen by the forwarder; rounds = time / the {} ms it \
         holds each request; target <= 3 rounds for a tag ref):",
        ROUND_DELAY.as_millis()
    );
    let warm = env.verifier(true);
    for (label, by_tag, reuse) in counted {
        let (v, img) = match reuse {
            Some(i) => {
                // Open the pool's connections first with another image.
                warm.check_image(&env.images[i + 2].digest_ref, NS, &Auth::Anonymous)
                    .await;
                (warm.clone(), &env.images[i])
            }
            None => (env.verifier(true), probe),
        };
        let image = if by_tag {
            &img.tag_ref
        } else {
            &img.digest_ref
        };
        let c = count_rounds(&[&env.fwd], &v, image).await;
        let expected = if by_tag { (5, 3) } else { (4, 2) };
        println!(
            "    {label:<40} requests {} (expected {}), rounds {} (expected {}), new TCP \
             connections {}, allowed={} {}",
            c.requests,
            expected.0,
            c.rounds,
            expected.1,
            c.connections,
            c.allowed,
            verdict(c.rounds <= 3)
        );
        for l in c.lines {
            println!("        {l}");
        }
    }
    let raw = Raw::new(&env.fwd.addr);
    env.fwd.reset();
    let ok = raw.fetch(probe, true).await;
    let (conns, reqs, _) = env.fwd.snapshot();
    println!(
        "    {:<40} requests {reqs}, new TCP connections {conns} ({ok:?})",
        "raw reqwest baseline, tag ref"
    );

    // CPU part of a verification: one ECDSA P-256 signature layer against one key.
    let policy = env.policy(&env.direct_policy);
    let rule = policy
        .rules
        .iter()
        .find(|r| r.name == "bed")
        .expect("bed rule");
    let payload = support::sign::payload(&format!("{}/{REPO}", env.reg), &probe.digest);
    let layer = fetch_layer(&env.reg, &probe.digest).await;
    let reference: Reference = probe.digest_ref.parse().expect("reference");
    let expected = cosign::Expected {
        digest: &probe.digest,
        reference: &reference,
        identity: &rule.identity,
    };
    let mut cpu = Vec::new();
    for i in 0..(if plan.quick { 200 } else { 2000 }) {
        let t = Instant::now();
        let r = cosign::verify_layer(&layer, &rule.attestors[0].authority, &expected, None);
        let ns = t.elapsed().as_nanos() as u64;
        if i == 0 && r.is_err() {
            println!("  verify_layer failed: {r:?}");
        }
        cpu.push(ns);
    }
    assert_eq!(layer.payload, payload, "fetched payload is the signed one");
    let cpu = summarize(&cpu);
    println!(
        "  CPU: cosign::verify_layer (one P-256 layer, one key): p50 {:.1} us, p99 {:.1} us",
        cpu.p50, cpu.p99
    );

    // Timing, direct to the registry (no forwarder), interleaved batches.
    for (pool, fresh) in [
        (
            "warm pool: one Verifier / one reqwest client per round, connection reused; each sample a distinct image",
            false,
        ),
        (
            "cold pool: new Verifier / new reqwest client per sample (built outside the timing), new TCP connection each",
            true,
        ),
    ] {
        let iters = if fresh {
            plan.fresh_iters
        } else {
            plan.cold_iters
        };
        println!("  {pool}; {iters} samples per side per round:");
        println!(
            "    {:<12} {:>5} {:>10} {:>10} {:>10} {:>10} {:>11}",
            "kind", "round", "cold p50", "raw p50", "cold p99", "raw p99", "p50 ratio"
        );
        for by_tag in [true, false] {
            let kind = if by_tag { "tag ref" } else { "digest ref" };
            let mut ratios = Vec::new();
            for round in 0..plan.rounds {
                let (a, b, wrong) = if fresh {
                    cold_fresh(plan, env, by_tag).await
                } else {
                    cold_warm(plan, env, by_tag).await
                };
                let (a, b) = (summarize(&a), summarize(&b));
                ratios.push(a.p50 / b.p50);
                println!(
                    "    {kind:<12} {round:>5} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>10.2}x{}",
                    a.p50,
                    b.p50,
                    a.p99,
                    b.p99,
                    a.p50 / b.p50,
                    if wrong > 0 {
                        format!("  ({wrong} wrong/failed)")
                    } else {
                        String::new()
                    }
                );
            }
            let m = median(&ratios);
            println!(
                "    {kind:<12} median of {} rounds: cold/raw p50 = {m:.2}x   target <= 2x: {}",
                plan.rounds,
                verdict(m <= 2.0)
            );
        }
    }
}

/// What one counted verification did at the forwarders.
struct Counted {
    connections: u64,
    requests: u64,
    rounds: u64,
    lines: Vec<String>,
    allowed: bool,
}

/// Runs one `check_image` through `fwds` holding each request [`ROUND_DELAY`]: requests and
/// connections counted, rounds = elapsed / delay (rounded down: the work between rounds is
/// far below the delay).
async fn count_rounds(fwds: &[&Forwarder], v: &Verifier, image: &str) -> Counted {
    for f in fwds {
        f.reset();
        f.set_delay(ROUND_DELAY);
    }
    let t = Instant::now();
    let d = v.check_image(image, NS, &Auth::Anonymous).await;
    let elapsed = t.elapsed();
    let mut c = Counted {
        connections: 0,
        requests: 0,
        rounds: (elapsed.as_millis() / ROUND_DELAY.as_millis()) as u64,
        lines: Vec::new(),
        allowed: d.allowed,
    };
    for f in fwds {
        f.set_delay(Duration::ZERO);
        let (conns, reqs, lines) = f.snapshot();
        c.connections += conns;
        c.requests += reqs;
        c.lines.extend(lines);
    }
    if !d.allowed {
        println!("  unexpected denial of {image}: {}", d.reason());
    }
    c
}

/// The `.sig` layer of `digest` as the verifier would see it.
async fn fetch_layer(reg: &str, digest: &str) -> SigLayer {
    let http = reqwest::Client::new();
    let base = format!("http://{reg}/v2/{REPO}");
    let m: serde_json::Value = http
        .get(format!("{base}/manifests/{}.sig", digest.replace(':', "-")))
        .header("accept", MANIFEST_TYPES)
        .send()
        .await
        .expect("sig manifest")
        .json()
        .await
        .expect("sig manifest JSON");
    let l = &m["layers"][0];
    let payload = http
        .get(format!(
            "{base}/blobs/{}",
            l["digest"].as_str().expect("digest")
        ))
        .send()
        .await
        .expect("blob")
        .bytes()
        .await
        .expect("blob body")
        .to_vec();
    SigLayer {
        media_type: l["mediaType"].as_str().unwrap_or_default().to_string(),
        payload,
        annotations: serde_json::from_value(l["annotations"].clone()).unwrap_or_default(),
    }
}

/// One round with a warm pool: samples (verifier, raw) in ns, and the count of wrong answers.
async fn cold_warm(plan: &Plan, env: &Env, by_tag: bool) -> (Vec<u64>, Vec<u64>, u64) {
    let v = env.verifier(false);
    let raw = Raw::new(&env.reg);
    let mut wrong = 0;
    // Warm both pools (and the registry) with image 0.
    v.check_image(&env.images[0].digest_ref, NS, &Auth::Anonymous)
        .await;
    let _ = raw.fetch(&env.images[0], by_tag).await;
    let imgs = &env.images[2..2 + plan.cold_iters];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (bi, batch) in imgs.chunks(plan.cold_batch).enumerate() {
        for side in 0..2 {
            if (side + bi) % 2 == 0 {
                for img in batch {
                    let image = if by_tag {
                        &img.tag_ref
                    } else {
                        &img.digest_ref
                    };
                    a.push(timed_check(&v, image, &mut wrong).await);
                }
            } else {
                for img in batch {
                    b.push(timed_raw(&raw, img, by_tag, &mut wrong).await);
                }
            }
        }
    }
    (a, b, wrong)
}

/// One round with a cold pool: a new client per sample, alternating which side goes first.
async fn cold_fresh(plan: &Plan, env: &Env, by_tag: bool) -> (Vec<u64>, Vec<u64>, u64) {
    let mut wrong = 0;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..plan.fresh_iters {
        let img = &env.images[2 + i % plan.cold_iters];
        let image = if by_tag {
            &img.tag_ref
        } else {
            &img.digest_ref
        };
        for side in 0..2 {
            if (side + i) % 2 == 0 {
                let v = env.verifier(false);
                a.push(timed_check(&v, image, &mut wrong).await);
            } else {
                let raw = Raw::new(&env.reg);
                b.push(timed_raw(&raw, img, by_tag, &mut wrong).await);
            }
        }
    }
    (a, b, wrong)
}

// ---------------------------------------------------------------------------------------------
// 2b. Cold verification, new format

/// The raw requests a new-format verification makes, made by a plain reqwest client in the same
/// rounds: HEAD by tag (tag refs), then at once the `.sig` tag (404), the referrers API and the
/// referrers tag, then the listed referrers' manifests, then their bundle blobs.
struct RawNew {
    http: reqwest::Client,
    base: String,
}

impl RawNew {
    fn new(target: &str) -> RawNew {
        RawNew {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(10))
                .user_agent("raw-bench")
                .build()
                .expect("reqwest client"),
            base: format!("http://{target}/v2/{NEW_REPO}"),
        }
    }

    async fn get(&self, path: String) -> Result<(u16, bytes::Bytes), String> {
        let r = self
            .http
            .get(format!("{}/{path}", self.base))
            .header("accept", MANIFEST_TYPES)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.bytes().await.map_err(|e| e.to_string())?))
    }

    async fn fetch(&self, img: &Img, by_tag: bool) -> Result<(), String> {
        let digest = if by_tag {
            let r = self
                .http
                .head(format!("{}/manifests/{}", self.base, img.tag))
                .header("accept", MANIFEST_TYPES)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            r.headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .ok_or("no docker-content-digest")?
                .to_string()
        } else {
            img.digest.clone()
        };
        let tag = digest.replace(':', "-");
        let (sig, api, fallback) = tokio::join!(
            self.get(format!("manifests/{tag}.sig")),
            self.get(format!("referrers/{digest}")),
            self.get(format!("manifests/{tag}")),
        );
        let (_, _) = sig?;
        let listing = match api? {
            (200, body) => body,
            _ => fallback?.1,
        };
        let v: serde_json::Value = serde_json::from_slice(&listing).map_err(|e| e.to_string())?;
        let manifests: Vec<String> = v["manifests"]
            .as_array()
            .ok_or("no manifests")?
            .iter()
            .filter_map(|m| m["digest"].as_str().map(str::to_string))
            .collect();
        let fetched = futures_util::future::join_all(
            manifests.iter().map(|d| self.get(format!("manifests/{d}"))),
        )
        .await;
        let mut layers = Vec::new();
        for m in fetched {
            let (_, body) = m?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            layers.push(
                v["layers"][0]["digest"]
                    .as_str()
                    .ok_or("no layer")?
                    .to_string(),
            );
        }
        let blobs =
            futures_util::future::join_all(layers.iter().map(|l| self.get(format!("blobs/{l}"))))
                .await;
        for b in blobs {
            if b?.1.is_empty() {
                return Err("empty blob".into());
            }
        }
        if layers.is_empty() {
            return Err("no referrer".into());
        }
        Ok(())
    }
}

async fn cold_new(plan: &Plan, env: &Env) {
    println!();
    println!(
        "== 2b. Cold verification of a new-format image (a key-signed Sigstore bundle v0.3 as an \
         OCI referrer, as cosign 3 signs offline) =="
    );
    let kinds: [(&str, &Vec<Img>, &str, &Forwarder); 2] = [
        (
            "referrers API (refreg)",
            &env.new_api,
            &env.refs,
            &env.fwd_refs,
        ),
        (
            "referrers tag (docker-registry 2.8)",
            &env.new_tag,
            &env.reg,
            &env.fwd,
        ),
    ];
    for (label, imgs, reg, fwd) in kinds {
        println!("  {label}:");
        for (kind, by_tag) in [("tag ref", true), ("digest ref", false)] {
            let v = env.verifier(true);
            let img = &imgs[1];
            let image = if by_tag {
                &img.tag_ref
            } else {
                &img.digest_ref
            };
            let c = count_rounds(&[fwd], &v, image).await;
            let expected = if by_tag { (6, 4) } else { (5, 3) };
            println!(
                "    round trips, {kind:<10} (new Verifier): requests {} (expected {}), rounds {} \
                 (expected {}), new TCP connections {}, allowed={}",
                c.requests, expected.0, c.rounds, expected.1, c.connections, c.allowed
            );
            for l in c.lines {
                println!("        {l}");
            }
            let raw = RawNew::new(&fwd.addr);
            fwd.reset();
            fwd.set_delay(ROUND_DELAY);
            let t = Instant::now();
            let ok = raw.fetch(img, by_tag).await;
            let rounds = t.elapsed().as_millis() / ROUND_DELAY.as_millis();
            fwd.set_delay(Duration::ZERO);
            let (conns, reqs, _) = fwd.snapshot();
            println!(
                "    raw baseline, {kind:<10}: requests {reqs}, rounds {rounds}, new TCP \
                 connections {conns} ({ok:?})"
            );
        }
        println!(
            "    timing, warm pool (one Verifier / one reqwest client per round; each sample a \
             distinct image), {} samples per side per round:",
            plan.cold_iters
        );
        println!(
            "    {:<12} {:>5} {:>10} {:>10} {:>10} {:>10} {:>11}",
            "kind", "round", "cold p50", "raw p50", "cold p99", "raw p99", "p50 ratio"
        );
        for by_tag in [true, false] {
            let kind = if by_tag { "tag ref" } else { "digest ref" };
            let mut ratios = Vec::new();
            for round in 0..plan.rounds {
                let v = env.verifier(false);
                let raw = RawNew::new(reg);
                let mut wrong = 0;
                v.check_image(&imgs[0].digest_ref, NS, &Auth::Anonymous)
                    .await;
                let _ = raw.fetch(&imgs[0], by_tag).await;
                let sample = &imgs[2..2 + plan.cold_iters];
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for (bi, batch) in sample.chunks(plan.cold_batch).enumerate() {
                    for side in 0..2 {
                        if (side + bi) % 2 == 0 {
                            for img in batch {
                                let image = if by_tag {
                                    &img.tag_ref
                                } else {
                                    &img.digest_ref
                                };
                                a.push(timed_check(&v, image, &mut wrong).await);
                            }
                        } else {
                            for img in batch {
                                let t = Instant::now();
                                if let Err(e) = raw.fetch(img, by_tag).await {
                                    wrong += 1;
                                    if wrong == 1 {
                                        println!("  raw fetch failed: {e}");
                                    }
                                }
                                b.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                    }
                }
                let (a, b) = (summarize(&a), summarize(&b));
                ratios.push(a.p50 / b.p50);
                println!(
                    "    {kind:<12} {round:>5} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>10.2}x{}",
                    a.p50,
                    b.p50,
                    a.p99,
                    b.p99,
                    a.p50 / b.p50,
                    if wrong > 0 {
                        format!("  ({wrong} wrong/failed)")
                    } else {
                        String::new()
                    }
                );
            }
            let m = median(&ratios);
            println!(
                "    {kind:<12} median of {} rounds: cold/raw p50 = {m:.2}x   target <= 2x: {}",
                plan.rounds,
                verdict(m <= 2.0)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Concurrency

async fn concurrent(plan: &Plan, env: &Env, runtime: &str, round: usize) {
    for (what, img, signed) in [
        ("signed", &env.images[1], true),
        ("unsigned", &env.unsigned, false),
    ] {
        let v = env.verifier(true);
        env.fwd.reset();
        let t = Instant::now();
        let tasks: Vec<_> = (0..plan.concurrent)
            .map(|_| {
                let (v, image) = (v.clone(), img.digest_ref.clone());
                tokio::spawn(async move { v.check_image(&image, NS, &Auth::Anonymous).await })
            })
            .collect();
        let mut wrong = 0;
        let mut cached = 0;
        for task in tasks {
            match task.await {
                Ok(d) => {
                    let right = if signed {
                        d.allowed
                            && d.digest.as_deref() == Some(img.digest.as_str())
                            && d.outcome == Some(verified())
                    } else {
                        !d.allowed && d.reason().contains("no signature found")
                    };
                    wrong += u64::from(!right);
                    cached += u64::from(d.cached);
                }
                Err(_) => wrong += 1,
            }
        }
        let wall = t.elapsed();
        let (hits, misses, runs) = v.stats();
        let (_, reqs, _) = env.fwd.snapshot();
        println!(
            "  {runtime:<16} round {round} {what:<8}: wall {:>6.2} ms, verifications {runs}, \
             wrong {wrong}, registry requests {reqs}, cached answers {cached} (stats hits {hits} \
             misses {misses})   target 1 verification + 0 wrong: {}",
            wall.as_secs_f64() * 1000.0,
            verdict(runs == 1 && wrong == 0)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Memory

fn memory(plan: &Plan, env: &Env) {
    println!();
    println!(
        "== 4. Resident memory (fresh child process: current-thread runtime + Verifier with \
         `[cache] size = 100000`, then {} entries in a Cache<Key, Outcome>) ==",
        plan.mem_entries
    );
    let policy = env.base.join("mem-policy.toml");
    std::fs::write(&policy, &env.direct_policy).expect("policy");
    let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .arg("--memory-child")
        .arg(&policy)
        .arg(plan.mem_entries.to_string())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            println!(
                "  memory child failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("  cannot run the memory child: {e}");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    let (bare, idle, empty, full) = (field("bare"), field("idle"), field("empty"), field("full"));
    let n = plan.mem_entries as f64;
    println!(
        "  bare process (main entered)           {:>7.1} MiB",
        mib(bare)
    );
    println!(
        "  idle: runtime + policy + Verifier      {:>7.1} MiB   target <= 15 MiB: {}",
        mib(idle),
        verdict(mib(idle) <= 15.0)
    );
    println!(
        "  + empty Cache::new(100000)             {:>7.1} MiB",
        mib(empty)
    );
    println!(
        "  + {} cached decisions               {:>7.1} MiB   (delta {:.1} MiB over idle, {:.0} \
         bytes/entry)   target <= 60 MiB: {}",
        plan.mem_entries,
        mib(full),
        mib(full.saturating_sub(idle)),
        full.saturating_sub(idle) as f64 * 1024.0 / n,
        verdict(mib(full) <= 60.0)
    );
    println!("  bench process itself now: {:.1} MiB", mib(vm_rss_kib()));
}

/// Child: RSS at start, with an idle verifier, with an empty cache, with `entries` decisions.
fn memory_child(policy: &Path, entries: usize) {
    let bare = vm_rss_kib();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let v = Verifier::new(Policy::load(policy).expect("policy"), None).expect("verifier");
        let idle = vm_rss_kib();
        let cache: Cache<Key, Outcome> = Cache::new(entries);
        let empty = vm_rss_kib();
        let mut rng = SplitMix(7);
        for i in 0..entries {
            // ~40-character repositories, as `registry/path`.
            let scope = format!("registry.example.com/team-{:02}/svc-{i:07}", i % 50);
            cache.insert(
                Key {
                    scope: scope.into(),
                    digest: rng.digest(),
                    generation: 12,
                    rule: i % 4,
                    credential: None,
                },
                verified(),
                Duration::from_secs(3600),
            );
        }
        let full = vm_rss_kib();
        black_box(&v);
        let mut stdout = std::io::stdout();
        let _ = writeln!(
            stdout,
            "bare={bare} idle={idle} empty={empty} full={full} len={}",
            cache.len()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Counting TCP forwarder

/// A TCP forwarder in front of the registry, on its own thread and runtime, counting accepted
/// connections and HTTP request heads (method line up to the blank line; bodies skipped by
/// Content-Length).
struct Forwarder {
    addr: String,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    conns: AtomicU64,
    reqs: AtomicU64,
    lines: Mutex<Vec<String>>,
    /// Milliseconds each request is held before it goes on (0: none): with it, a verification's
    /// time divided by the delay is its number of sequential rounds.
    delay_ms: AtomicU64,
}

impl Forwarder {
    fn start(upstream: String) -> Forwarder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        std::thread::Builder::new()
            .name("forwarder".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                    while let Ok((down, _)) = l.accept().await {
                        c.conns.fetch_add(1, Relaxed);
                        tokio::spawn(pipe(down, upstream.clone(), c.clone()));
                    }
                });
            })
            .expect("forwarder thread");
        Forwarder { addr, counts }
    }

    /// Holds every request `delay` before forwarding it (zero: none).
    fn set_delay(&self, delay: Duration) {
        self.counts
            .delay_ms
            .store(delay.as_millis() as u64, Relaxed);
    }

    fn reset(&self) {
        self.counts.conns.store(0, Relaxed);
        self.counts.reqs.store(0, Relaxed);
        self.counts
            .lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// (connections, requests, request lines) since the last reset.
    fn snapshot(&self) -> (u64, u64, Vec<String>) {
        (
            self.counts.conns.load(Relaxed),
            self.counts.reqs.load(Relaxed),
            self.counts
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

async fn pipe(down: tokio::net::TcpStream, upstream: String, c: Arc<Counts>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (mut dr, mut dw) = down.into_split();
    let (mut ur, mut uw) = up.into_split();
    let client_to_registry = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut heads = Heads::default();
        loop {
            let n = match dr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let before = c.reqs.load(Relaxed);
            heads.feed(&buf[..n], &c);
            let delay = c.delay_ms.load(Relaxed);
            if delay > 0 && c.reqs.load(Relaxed) > before {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = uw.shutdown().await;
    };
    let registry_to_client = async {
        let _ = tokio::io::copy(&mut ur, &mut dw).await;
        let _ = dw.shutdown().await;
    };
    tokio::join!(client_to_registry, registry_to_client);
}

/// Incremental HTTP/1.x request-head counter for one connection.
#[derive(Default)]
struct Heads {
    buf: Vec<u8>,
    /// Body bytes still to skip.
    skip: usize,
}

impl Heads {
    fn feed(&mut self, data: &[u8], c: &Counts) {
        let mut data = data;
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
        }
        self.buf.extend_from_slice(data);
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.skip -= n;
                self.buf.drain(..n);
            }
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..end + 4);
            let line = head.lines().next().unwrap_or_default();
            c.reqs.fetch_add(1, Relaxed);
            c.lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.rsplit_once(' ').map_or(line, |(l, _)| l).to_string());
            self.skip = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
        }
    }
}
