//! Registry faults against real parts: a real `docker-registry` behind a scriptable front
//! (`tests/front`) and, for "down", a switchable TCP hop in front of that (nothing listens while
//! it is down). For each fault — registry down, slow past the timeout, 500s, truncated bodies, a
//! Content-Length larger than the body, an inflated (oversized) manifest, an HTML page with 200 —
//! a decision that is not made yet is denied (never allowed), a decision already made keeps
//! working without the registry, nothing waits far past the configured bound, and once the
//! registry answers again the same image is allowed without any intervention.
//!
//! Both signature formats, signed by real cosign 3: the old `.sig` tag, and the new Sigstore
//! bundle as an OCI referrer, found through the referrers API (the referrers registry) and
//! through the referrers tag (docker-registry 2.8).
//!
//! Bounds are asserted loosely (a test fails only when a wait is several times the configured
//! bound): these are correctness tests, not benchmarks.

mod fakes;
mod front;
mod guarded;
mod support;

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cri_guard::registry::Auth;
use cri_guard::verify::policy::Policy;
use cri_guard::verify::{Decision, Outcome, Verifier};
use front::{Action, Front, Gate, Req};
use support::{Cosign, Format, Registry, RegistryKind};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Per-request timeout and whole-decision bound of the policies below.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a denial is remembered; recovery is checked after it.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// A wait is a failure only when it is far beyond its bound.
fn far_beyond(elapsed: Duration, bound: Duration) -> bool {
    elapsed > bound * 3 + Duration::from_secs(1)
}

/// A TCP hop on a fixed port that can be taken down (its listener closed: connections are
/// refused, as with a registry that is not running) and brought back on the same port.
struct Switch {
    addr: String,
    backend: String,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Switch {
    async fn start(backend: &str) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let s = Switch {
            addr,
            backend: backend.to_string(),
            task: Mutex::new(None),
        };
        s.serve(listener);
        s
    }

    fn serve(&self, listener: TcpListener) {
        let backend = self.backend.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let backend = backend.clone();
                tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Closes the listener: new connections are refused.
    async fn down(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
        // The aborted task drops the listener at its next poll.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Listens on the same port again.
    async fn up(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(&self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

/// Whether the denial says the registry could not be reached (the kubelet sees
/// `RegistryUnavailable`).
fn unavailable(d: &Decision) -> bool {
    matches!(&d.outcome, Some(Outcome::Denied(x)) if x.unavailable)
}

/// Whether a request looks for or fetches a signature of `format`: the old format's
/// `sha256-<hex>.sig` tag; the new format's referrers API, referrers tag `sha256-<hex>` and
/// referrer manifests (by digest); and blobs. The other format's places stay untouched (they
/// answer 404: nothing is there), so a denial comes from the fault in the format's own place.
/// On docker-registry (no referrers API) its own 404 for the referrers API is left alone, so
/// the verifier goes on to the referrers tag, where the fault is.
fn is_signature_fetch(r: &Req, format: Format, kind: RegistryKind) -> bool {
    let tag = r.path.split("/manifests/").nth(1).unwrap_or("");
    r.path.contains("/blobs/")
        || match format {
            Format::Old => tag.starts_with("sha256-") && tag.ends_with(".sig"),
            Format::New => {
                (r.path.contains("/referrers/") && kind == RegistryKind::Referrers)
                    || tag.starts_with("sha256:")
                    || (tag.starts_with("sha256-") && !tag.contains('.'))
            }
        }
}

/// The faults that leave the registry reachable, each applied to signature fetches only (the
/// image's own manifest still resolves, so the fault hits the verification, not the lookup).
#[derive(Debug, Clone, Copy)]
enum Fault {
    Status500,
    Truncated,
    LongerContentLength,
    Oversized,
    HtmlPage,
}

/// The front's handler for `fault`: `real` answers a path the way the registry would.
fn faulty(
    fault: Fault,
    format: Format,
    kind: RegistryKind,
    registry: &str,
) -> impl Fn(&Req) -> Action + Send + Sync + 'static {
    let registry = registry.to_string();
    move |r: &Req| {
        if !is_signature_fetch(r, format, kind) {
            return front::pass(r);
        }
        let real = support::util::http(
            &registry,
            "GET",
            &r.path,
            &[("Accept", MANIFEST_ACCEPT)],
            b"",
        )
        .expect("GET from the real registry");
        let ctype = real
            .header("Content-Type")
            .unwrap_or("application/octet-stream")
            .to_string();
        let body = real.body;
        match fault {
            Fault::Status500 => Action::reply(500, &[], "internal error"),
            Fault::Truncated => {
                let len = body.len().to_string();
                Action::reply(
                    200,
                    &[("Content-Type", &ctype), ("Content-Length", &len)],
                    body[..body.len() / 2].to_vec(),
                )
            }
            Fault::LongerContentLength => {
                let len = (body.len() + 4096).to_string();
                Action::reply(
                    200,
                    &[("Content-Type", &ctype), ("Content-Length", &len)],
                    body,
                )
            }
            Fault::Oversized => {
                // Still valid JSON (whitespace), but past `fetch.maxManifestSize` / the
                // signature size limit.
                let mut big = body;
                big.extend(std::iter::repeat_n(b' ', 300 << 10));
                Action::reply(200, &[("Content-Type", &ctype)], big)
            }
            Fault::HtmlPage => Action::reply(
                200,
                &[("Content-Type", "text/html")],
                "<html><body>Please log in to the proxy</body></html>",
            ),
        }
    }
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json";

fn policy(dir: &Path, registry: &str, key: &Path) -> Verifier {
    let text = format!(
        r#"default = "enforce"
[registries."{registry}"]
insecure = true
[fetch]
timeout = "{}ms"
verifyTimeout = "{}ms"
maxManifestSize = "64KiB"
maxSignatureSize = "64KiB"
[cache]
negativeTtl = "{}ms"
[[rules]]
name = "r"
imageReferences = ["{registry}/*"]
signedIdentity = "any"
[[rules.attestors]]
name = "k"
key = "{}"
"#,
        FETCH_TIMEOUT.as_millis(),
        VERIFY_TIMEOUT.as_millis(),
        NEGATIVE_TTL.as_millis(),
        key.display()
    );
    Verifier::new(Policy::parse("test", &text, dir).unwrap(), None).unwrap()
}

/// A registry of `kind` with images signed by real cosign in `format`.
struct Signed {
    registry: Registry,
    cosign: Cosign,
    format: Format,
}

impl Signed {
    fn start(dir: &Path, kind: RegistryKind, format: Format) -> Signed {
        Signed {
            registry: Registry::start_kind(kind, &dir.join("reg")),
            cosign: Cosign::generate(&dir.join("cosign")),
            format,
        }
    }

    /// Pushes `name:v1` (content of its own) and signs it; returns its digest.
    fn push_signed(&self, name: &str) -> String {
        let (_, digest) = self.registry.push(name, "v1", Some(name));
        self.cosign.sign(
            &format!("{}/{name}@{digest}", self.registry.addr()),
            self.format,
        );
        digest
    }
}

/// Every registry-reachable fault on signature fetches: the undecided image is denied within
/// the bound and stays denied while the fault lasts, the image verified before the fault stays
/// allowed (from the cache, no registry needed), and after the fault the undecided image is
/// allowed by itself once the short negative TTL has passed.
async fn signature_fetch_faults(kind: RegistryKind, format: Format) {
    let dir = support::util::short_tempdir("rf");
    let signed = Signed::start(dir.path(), kind, format);
    let registry = &signed.registry;
    let faults = [
        Fault::Status500,
        Fault::Truncated,
        Fault::LongerContentLength,
        Fault::Oversized,
        Fault::HtmlPage,
    ];
    let mut names = vec!["warm"];
    let fresh: Vec<String> = faults
        .iter()
        .map(|f| format!("{f:?}").to_lowercase())
        .collect();
    names.extend(fresh.iter().map(String::as_str));
    for n in &names {
        signed.push_signed(n);
    }

    let front = Front::start(Some(registry.addr()), front::pass).await;
    let v = policy(dir.path(), &front.addr, signed.cosign.public_key_path());
    let warm = format!("{}/warm:v1", front.addr);
    let d = v.check_image(&warm, "default", &Auth::Anonymous).await;
    assert!(d.allowed, "baseline: {}", d.reason());

    for (fault, name) in faults.iter().zip(&fresh) {
        let image = format!("{}/{name}:v1", front.addr);
        front.set(faulty(*fault, format, kind, registry.addr()));
        let t = Instant::now();
        let d = v.check_image(&image, "default", &Auth::Anonymous).await;
        let took = t.elapsed();
        assert!(
            !d.allowed,
            "{format:?}/{kind:?} {fault:?}: an undecided image was allowed"
        );
        assert!(
            !far_beyond(took, VERIFY_TIMEOUT),
            "{fault:?}: the denial took {took:?} (bound {VERIFY_TIMEOUT:?})"
        );
        eprintln!(
            "{format:?}/{kind:?} {fault:?}: denied in {took:?}: {}",
            d.reason()
        );
        // Retried while the fault lasts (after the negative TTL): still denied.
        tokio::time::sleep(NEGATIVE_TTL + Duration::from_millis(100)).await;
        let d = v.check_image(&image, "default", &Auth::Anonymous).await;
        assert!(!d.allowed, "{fault:?}: allowed on retry during the fault");
        // A decision made before the fault still stands.
        let d = v.check_image(&warm, "default", &Auth::Anonymous).await;
        assert!(
            d.allowed && d.cached,
            "{fault:?}: cached decision lost: {}",
            d.reason()
        );

        front.set(front::pass);
        tokio::time::sleep(NEGATIVE_TTL + Duration::from_millis(100)).await;
        let d = v.check_image(&image, "default", &Auth::Anonymous).await;
        assert!(d.allowed, "{fault:?}: not recovered: {}", d.reason());
    }
}

/// The faults on the old format's `.sig` tag (docker-registry 2.8).
#[tokio::test]
async fn signature_fetch_faults_old_format() {
    signature_fetch_faults(RegistryKind::Distribution, Format::Old).await;
}

/// The faults on the new format found through the referrers API.
#[tokio::test]
async fn signature_fetch_faults_new_format_referrers_api() {
    signature_fetch_faults(RegistryKind::Referrers, Format::New).await;
}

/// The faults on the new format found through the referrers tag (docker-registry 2.8).
#[tokio::test]
async fn signature_fetch_faults_new_format_referrers_tag() {
    signature_fetch_faults(RegistryKind::Distribution, Format::New).await;
}

/// Registry down (nothing listens on its port) and registry slow (requests held past the
/// timeout): undecided images are denied as unavailable within the bound, cached decisions keep
/// working, and the same images are allowed once the registry is back.
async fn registry_down_and_slow(kind: RegistryKind, format: Format) {
    let dir = support::util::short_tempdir("rd");
    let signed = Signed::start(dir.path(), kind, format);
    let registry = &signed.registry;
    let warm_digest = signed.push_signed("warm");
    signed.push_signed("down");
    signed.push_signed("slow");
    let front = Front::start(Some(registry.addr()), front::pass).await;
    let switch = Switch::start(&front.addr).await;
    let v = policy(dir.path(), &switch.addr, signed.cosign.public_key_path());
    let warm = format!("{}/warm@{warm_digest}", switch.addr);
    assert!(
        v.check_image(&warm, "default", &Auth::Anonymous)
            .await
            .allowed
    );

    // Down.
    switch.down().await;
    let image = format!("{}/down:v1", switch.addr);
    let t = Instant::now();
    let d = v.check_image(&image, "default", &Auth::Anonymous).await;
    let took = t.elapsed();
    assert!(!d.allowed, "allowed while the registry is down");
    assert!(!far_beyond(took, VERIFY_TIMEOUT), "down: took {took:?}");
    assert!(
        unavailable(&d),
        "down: not reported as unavailable: {}",
        d.reason()
    );
    let d = v.check_image(&warm, "default", &Auth::Anonymous).await;
    assert!(d.allowed && d.cached, "down: cached decision lost");
    switch.up().await;
    tokio::time::sleep(NEGATIVE_TTL + Duration::from_millis(100)).await;
    let d = v.check_image(&image, "default", &Auth::Anonymous).await;
    assert!(d.allowed, "down: not recovered: {}", d.reason());

    // Slow: every request waits at a gate that opens only after the check.
    let gate = Gate::new();
    let g = gate.clone();
    front.set(move |r: &Req| Action::Hold(g.clone(), r.path.clone()));
    let image = format!("{}/slow:v1", switch.addr);
    let t = Instant::now();
    let d = v.check_image(&image, "default", &Auth::Anonymous).await;
    let took = t.elapsed();
    assert!(!d.allowed, "allowed while the registry hangs");
    assert!(
        took >= FETCH_TIMEOUT,
        "slow: denied before any timeout ({took:?})?"
    );
    assert!(!far_beyond(took, VERIFY_TIMEOUT), "slow: took {took:?}");
    assert!(
        unavailable(&d),
        "slow: not reported as unavailable: {}",
        d.reason()
    );
    let d = v.check_image(&warm, "default", &Auth::Anonymous).await;
    assert!(d.allowed && d.cached, "slow: cached decision lost");
    gate.open();
    front.set(front::pass);
    tokio::time::sleep(NEGATIVE_TTL + Duration::from_millis(100)).await;
    let d = v.check_image(&image, "default", &Auth::Anonymous).await;
    assert!(d.allowed, "slow: not recovered: {}", d.reason());
}

/// Down and slow, old format.
#[tokio::test]
async fn registry_down_and_slow_old_format() {
    registry_down_and_slow(RegistryKind::Distribution, Format::Old).await;
}

/// Down and slow, new format through the referrers API.
#[tokio::test]
async fn registry_down_and_slow_new_format_referrers_api() {
    registry_down_and_slow(RegistryKind::Referrers, Format::New).await;
}

/// Down and slow, new format through the referrers tag.
#[tokio::test]
async fn registry_down_and_slow_new_format_referrers_tag() {
    registry_down_and_slow(RegistryKind::Distribution, Format::New).await;
}

/// Through the proxy, against a real containerd pulling from the same registry: while the
/// signature fetches fail (500, then held past the timeout), a pull of a signed image not
/// verified yet is refused and the image is not in containerd's store, and a CreateContainer of
/// a signed image that reached the node without cri-guard (pulled straight from containerd) is
/// refused and creates nothing; an image verified before is still pulled; when the registry
/// answers again, the refused pull and the refused create go through.
async fn through_the_proxy(format: Format, kind: RegistryKind) {
    let mut signer = None;
    let options = if kind == RegistryKind::Referrers {
        support::BedOptions::default().with_referrers_registry()
    } else {
        support::BedOptions::default()
    };
    let g = guarded::Guarded::start_with(options, |bed, _| {
        let cosign = bed.cosign("release");
        let mut text = format!(
            "[fetch]\ntimeout = \"{}ms\"\nverifyTimeout = \"{}ms\"\n[cache]\nnegativeTtl = \"{}ms\"\n\
             [[rules]]\nname = \"pause\"\nimageReferences = [\"{}\"]\nmode = \"skip\"\n\
             [[rules]]\nname = \"loopback\"\nimageReferences = [\"127.0.0.1:*/*\"]\nsignedIdentity = \"any\"\n\
             [[rules.attestors]]\nname = \"k\"\nkey = \"{}\"\n",
            FETCH_TIMEOUT.as_millis(),
            VERIFY_TIMEOUT.as_millis(),
            NEGATIVE_TTL.as_millis(),
            bed.pause_image,
            cosign.public_key_path().display()
        );
        if bed.containerd_version() == support::ContainerdVersion::V2_1 {
            text.push_str(&format!("[sandbox]\nimage = \"{}\"\n", bed.pause_image));
        }
        signer = Some(cosign);
        text
    })
    .await;
    let cosign = signer.expect("cosign key");
    let reg = g.bed.registry_of(kind);
    // Distinct content per image: a create is allowed for any verified repository holding the
    // same digest, so identical images would be decided by the warm one's verification.
    for n in ["warm", "cold", "held", "bypass"] {
        let (_, digest) = g.bed.push_to(kind, n, "v1", Some(n));
        cosign.sign(&format!("{}/{n}@{digest}", reg.addr()), format);
    }
    let front = Front::start(Some(reg.addr()), front::pass).await;
    // containerd and cri-guard both reach the registry through the front (plain HTTP).
    g.bed.containerd.trust_registry(&front.addr);
    let name = |n: &str| format!("{}/{n}:v1", front.addr);

    g.pull(&name("warm"), "default")
        .await
        .expect("baseline pull");
    // An image that reached the node without cri-guard, and a pod to create it in.
    let direct = g.bed.containerd_socket();
    let bypass_id = guarded::pull_via(&direct, &name("bypass"), "default", None)
        .await
        .expect("pull straight from containerd");
    let pod = support::sandbox_config(&support::unique_name("f"), "default");
    let mut rt = cri_guard::cri::runtime_client(&g.proxy.path);
    let sandbox = rt
        .run_pod_sandbox(cri_guard::cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox (pause image under a skip rule)")
        .into_inner()
        .pod_sandbox_id;
    let create = |image_id: String| cri_guard::cri::CreateContainerRequest {
        pod_sandbox_id: sandbox.clone(),
        config: Some({
            let mut c = support::container_config("c", &image_id, &["sleep", "3600"]);
            c.image.as_mut().unwrap().user_specified_image = name("bypass");
            c
        }),
        sandbox_config: Some(pod.clone()),
    };
    let containers = |socket: std::path::PathBuf| async move {
        cri_guard::cri::runtime_client(&socket)
            .list_containers(cri_guard::cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .len()
    };

    front.set(faulty(Fault::Status500, format, kind, reg.addr()));
    let e = g
        .pull(&name("cold"), "default")
        .await
        .expect_err("allowed during 500s");
    assert!(
        e.message().starts_with("RegistryUnavailable")
            || e.message().starts_with("SignatureValidationFailed"),
        "{e:?}"
    );
    assert!(
        !g.in_store(&name("cold")).await,
        "a refused image is in the store"
    );
    g.pull(&name("warm"), "default")
        .await
        .expect("cached decision during 500s");
    let e = rt
        .create_container(create(bypass_id.clone()))
        .await
        .expect_err("an unverified image was created during 500s");
    assert!(
        e.message().starts_with("RegistryUnavailable")
            || e.message().starts_with("SignatureValidationFailed"),
        "{e:?}"
    );
    assert_eq!(
        containers(direct.clone()).await,
        0,
        "a refused create made a container"
    );

    let gate = Gate::new();
    let gt = gate.clone();
    front.set(move |r: &Req| {
        if is_signature_fetch(r, format, kind) {
            Action::Hold(gt.clone(), r.path.clone())
        } else {
            front::pass(r)
        }
    });
    let t = Instant::now();
    let e = g
        .pull(&name("held"), "default")
        .await
        .expect_err("allowed while signatures hang");
    assert!(
        !far_beyond(t.elapsed(), VERIFY_TIMEOUT),
        "held: took {:?}",
        t.elapsed()
    );
    assert!(e.message().starts_with("RegistryUnavailable"), "{e:?}");
    assert!(!g.in_store(&name("held")).await);
    gate.open();

    front.set(front::pass);
    tokio::time::sleep(NEGATIVE_TTL + Duration::from_millis(100)).await;
    g.pull(&name("cold"), "default")
        .await
        .expect("recovered: cold");
    g.pull(&name("held"), "default")
        .await
        .expect("recovered: held");
    assert!(g.in_store(&name("cold")).await && g.in_store(&name("held")).await);
    rt.create_container(create(bypass_id))
        .await
        .expect("recovered: create");
    assert_eq!(containers(direct.clone()).await, 1);
    support::remove_all_pods(&direct).await;
}

/// Through the proxy, old format (`.sig` tag on docker-registry 2.8).
#[tokio::test]
async fn pulls_and_creates_through_the_proxy_during_registry_faults_old_format() {
    through_the_proxy(Format::Old, RegistryKind::Distribution).await;
}

/// Through the proxy, new format (Sigstore bundle found through the referrers API).
#[tokio::test]
async fn pulls_and_creates_through_the_proxy_during_registry_faults_new_format() {
    through_the_proxy(Format::New, RegistryKind::Referrers).await;
}
