//! What a registry operator (or a mirror, or a signatures repository) controls must not leak
//! credentials, share one caller's credential failure with another, make a verification fetch
//! without bound, or shape cri-guard's messages. Real `docker-registry` instances, with a
//! scriptable front (`tests/front`) where a registry must misbehave or record what it receives.

mod fakes;
mod front;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cri_guard::cri;
use cri_guard::registry::Auth;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;
use fakes::{RawUpstream, TestProxy};
use front::{Action, Front, Gate, Req};
use support::Registry;
use support::sign::{self, Layer, TestKey};

const USER: &str = "alice";
const PASSWORD: &str = "alice-secret-7";

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        support::util::base64(format!("{user}:{password}").as_bytes())
    )
}

fn alice() -> Auth {
    Auth::Basic {
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

/// A verifier for `text` (plus `registries."<r>".insecure` for each of `plain`).
fn verifier(dir: &Path, plain: &[&str], text: &str) -> Verifier {
    let mut head = String::new();
    for r in plain {
        head.push_str(&format!("[registries.\"{r}\"]\ninsecure = true\n"));
    }
    let policy =
        Policy::parse("test", &format!("{text}\n{head}"), dir).unwrap_or_else(|e| panic!("{e}"));
    Verifier::new(policy, None).unwrap()
}

fn rule(images: &str, key: &Path, extra: &str) -> String {
    format!(
        "[[rules]]\nname = \"r\"\nimageReferences = [\"{images}\"]\n{extra}[[rules.attestors]]\nname = \"k\"\nkey = \"{}\"\n",
        key.display()
    )
}

/// Every Authorization header `front` received.
fn authorizations(front: &Front) -> Vec<(String, String)> {
    front
        .requests()
        .into_iter()
        .filter_map(|r: Req| {
            r.header("authorization")
                .map(|a| (r.path.clone(), a.to_string()))
        })
        .collect()
}

/// Item 7: the kubelet's credentials for registry A are never sent to another host B — not to
/// a `signaturesRepository` on B (B gets the node's credentials for B, or none), not after a
/// redirect from A to B (nor to a token realm B names after it), and not to a token realm on
/// B that A's challenge names.
#[tokio::test]
async fn credentials_stay_with_their_registry() {
    let dir = support::util::short_tempdir("cr");
    let key = TestKey::p256();
    let key_path = key.write_public(dir.path(), "k");
    let a = Registry::with_htpasswd(&dir.path().join("a"), USER, PASSWORD);
    let (image, digest) = a.push("app", "v1", None);
    sign::sign_image(a.addr(), Some((USER, PASSWORD)), "app", &digest, &key);
    let alices = basic(USER, PASSWORD);

    // B answers everything with a bearer challenge whose realm is B itself, and records.
    let b = Front::start(None, |_| Action::reply(404, &[], "")).await;
    let realm = format!("http://{}/token", b.addr);
    let challenge = format!("Bearer realm=\"{realm}\",service=\"b\"");
    let ch = challenge.clone();
    b.set(move |r| {
        if r.path.starts_with("/token") {
            Action::reply(401, &[], "")
        } else {
            Action::reply(401, &[("WWW-Authenticate", ch.as_str())], "")
        }
    });

    // (a) signatures in a repository on B; the node has credentials for B.
    let node = dir.path().join("config.json");
    std::fs::write(
        &node,
        serde_json::json!({ "auths": { &b.addr: { "auth": support::util::base64(b"nodeb:nodeb-secret") } } })
            .to_string(),
    )
    .unwrap();
    let v = verifier(
        dir.path(),
        &[a.addr(), &b.addr],
        &format!(
            "nodeCredentials = \"{}\"\n{}",
            node.display(),
            rule(
                &format!("{}/*", a.addr()),
                &key_path,
                &format!("signaturesRepository = \"{}/sigs\"\n", b.addr)
            )
        ),
    );
    let d = v.check_image(&image, "default", &alice()).await;
    assert!(!d.allowed);
    let seen = authorizations(&b);
    assert!(
        seen.iter().all(|(_, h)| h != &alices),
        "A's credentials were sent to B: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, h)| h == &basic("nodeb", "nodeb-secret")),
        "B did not get the node's credentials for B: {seen:?}"
    );

    // (b) A (behind a front) redirects blob fetches to B.
    let a_front = Front::start(Some(a.addr()), front::pass).await;
    let (b_addr, af) = (b.addr.clone(), a_front.addr.clone());
    a_front.set(move |r| {
        if r.path.contains("/blobs/") {
            let to = format!("http://{b_addr}{}", r.path);
            Action::reply(307, &[("Location", to.as_str())], "")
        } else {
            Action::Forward(r.path.clone())
        }
    });
    let before = b.requests().len();
    let v = verifier(
        dir.path(),
        &[&af, &b.addr],
        &rule(&format!("{af}/*"), &key_path, "signedIdentity = \"any\"\n"),
    );
    let d = v
        .check_image(&format!("{af}/app@{digest}"), "default", &alice())
        .await;
    assert!(!d.allowed, "{d:?}");
    let redirected: Vec<Req> = b.requests().into_iter().skip(before).collect();
    assert!(
        redirected.iter().any(|r| r.path.contains("/blobs/")),
        "the redirect was not followed: {redirected:?}"
    );
    assert!(
        redirected
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "credentials followed the redirect to B: {redirected:?}"
    );

    // (c) A's challenge names a token realm on B.
    let before = b.requests().len();
    let a_front2 = Front::start(Some(a.addr()), front::pass).await;
    let ch = challenge.clone();
    a_front2.set(move |r| {
        if r.header("authorization")
            .is_some_and(|h| h.starts_with("Bearer "))
        {
            Action::Forward(r.path.clone())
        } else {
            Action::reply(401, &[("WWW-Authenticate", ch.as_str())], "")
        }
    });
    let af2 = a_front2.addr.clone();
    let v = verifier(
        dir.path(),
        &[&af2, &b.addr],
        &rule(&format!("{af2}/*"), &key_path, "signedIdentity = \"any\"\n"),
    );
    let d = v
        .check_image(&format!("{af2}/app@{digest}"), "default", &alice())
        .await;
    assert!(!d.allowed);
    let to_realm: Vec<Req> = b.requests().into_iter().skip(before).collect();
    assert!(
        to_realm.iter().any(|r| r.path.starts_with("/token")),
        "no token was asked for: {to_realm:?}"
    );
    assert!(
        to_realm.iter().all(|r| r.header("authorization").is_none()),
        "A's credentials were sent to a token realm on B: {to_realm:?}"
    );
}

/// Item 6: a denial caused by missing credentials is not shared with a caller who has valid
/// ones; an allow is shared (it depends on the signature, not on the caller).
#[tokio::test]
async fn credential_failures_are_not_shared() {
    let dir = support::util::short_tempdir("cf");
    let key = TestKey::p256();
    let key_path = key.write_public(dir.path(), "k");
    let a = Registry::with_htpasswd(&dir.path().join("a"), USER, PASSWORD);
    let (image, digest) = a.push("app", "v1", None);
    sign::sign_image(a.addr(), Some((USER, PASSWORD)), "app", &digest, &key);
    let v = verifier(
        dir.path(),
        &[a.addr()],
        &rule(&format!("{}/*", a.addr()), &key_path, ""),
    );
    let pinned = format!("{}/app@{digest}", a.addr());
    let d = v.check_image(&pinned, "default", &Auth::Anonymous).await;
    assert!(!d.allowed, "{d:?}");
    assert!(d.reason().contains("credentials"), "{}", d.reason());
    let d = v.check_image(&pinned, "default", &alice()).await;
    assert!(d.allowed, "valid credentials were denied: {}", d.reason());
    let d = v.check_image(&pinned, "default", &Auth::Anonymous).await;
    assert!(
        d.allowed && d.cached,
        "the verified digest is shared: {d:?}"
    );
    let _ = image;
}

/// Item 5: one verification fetches a bounded number of bytes. A `.sig` manifest listing 30
/// one-MiB layers stops being fetched once the per-verification budget is spent, and the
/// denial says which bound was hit.
#[tokio::test]
async fn verification_fetch_is_bounded() {
    let dir = support::util::short_tempdir("vb");
    let key = TestKey::p256();
    let key_path = key.write_public(dir.path(), "k");
    let r = Registry::start(&dir.path().join("r"));
    let (_, digest) = r.push("app", "v1", None);
    let layers: Vec<Layer> = (0..30u8)
        .map(|i| Layer {
            media_type: cri_guard::verify::SIMPLESIGNING.into(),
            payload: vec![i; 1 << 20],
            signature: "AAAA".into(),
        })
        .collect();
    sign::push_signature(r.addr(), None, "app", &digest, &layers);
    let f = Front::start(Some(r.addr()), front::pass).await;
    let v = verifier(
        dir.path(),
        &[&f.addr],
        &rule(
            &format!("{}/*", f.addr),
            &key_path,
            "signedIdentity = \"any\"\n",
        ),
    );
    let d = v
        .check_image(
            &format!("{}/app@{digest}", f.addr),
            "default",
            &Auth::Anonymous,
        )
        .await;
    assert!(!d.allowed);
    let blobs = f
        .requests()
        .iter()
        .filter(|r| r.path.contains("/blobs/"))
        .count();
    assert!(
        blobs <= 21,
        "{blobs} one-MiB layers were fetched for one verification"
    );
    assert!(
        d.reason().contains("maxVerificationBytes"),
        "{}",
        d.reason()
    );
}

/// Item 5: the number of verifications running at once is bounded, with a bounded queue; over
/// it, a verification is refused at once with a clear message (never allowed), and that refusal
/// is not remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_verifications_are_bounded() {
    let dir = support::util::short_tempdir("cv");
    let key = TestKey::p256();
    let key_path = key.write_public(dir.path(), "k");
    let r = Registry::start(&dir.path().join("r"));
    let f = Front::start(Some(r.addr()), front::pass).await;
    let mut images = Vec::new();
    for i in 0..3 {
        let (_, d) = r.push("app", &format!("v{i}"), Some(&format!("v{i}")));
        let layer = Layer::signed(&key, sign::payload(&format!("{}/app", f.addr), &d));
        sign::push_signature(r.addr(), None, "app", &d, &[layer]);
        images.push(format!("{}/app@{d}", f.addr));
    }
    let gate = Gate::new();
    let g = gate.clone();
    f.set(move |r| {
        if r.path.ends_with(".sig") {
            Action::Hold(g.clone(), r.path.clone())
        } else {
            Action::Forward(r.path.clone())
        }
    });
    let v = verifier(
        dir.path(),
        &[&f.addr],
        &format!(
            "[fetch]\nmaxConcurrentVerifications = 1\nmaxQueuedVerifications = 1\n{}",
            rule(&format!("{}/*", f.addr), &key_path, "")
        ),
    );
    let spawn = |image: String| {
        let v = v.clone();
        tokio::spawn(async move { v.check_image(&image, "default", &Auth::Anonymous).await })
    };
    let first = spawn(images[0].clone());
    assert!(gate.reached(Duration::from_secs(10)).await);
    let second = spawn(images[1].clone());
    // Wait until the second verification has started (and so taken the one queue place).
    let started = std::time::Instant::now();
    while v.stats().2 < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second check never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        v.check_image(&images[2], "default", &Auth::Anonymous),
    )
    .await
    .expect("over the bound, a verification is refused at once");
    assert!(!third.allowed);
    assert!(
        third.reason().contains("maxConcurrentVerifications"),
        "{}",
        third.reason()
    );
    gate.open();
    assert!(first.await.unwrap().allowed);
    assert!(second.await.unwrap().allowed);
    let again = v.check_image(&images[2], "default", &Auth::Anonymous).await;
    assert!(
        again.allowed,
        "the busy refusal was cached: {}",
        again.reason()
    );
}

/// A PullImage through the proxy with a fake runtime that must never be reached.
async fn pull_status(dir: &Path, v: Verifier, image: &str) -> tonic::Status {
    let sub = tempfile::tempdir_in(dir).unwrap();
    let dir = sub.path();
    let upstream = RawUpstream::start(&dir.join("up.sock"), fakes::echo);
    let proxy = TestProxy::start(&dir.join("g.sock"), &upstream.path, Arc::new(v));
    let err = cri::image_client(&proxy.path)
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("denied");
    assert!(upstream.requests().is_empty(), "the runtime was reached");
    err
}

/// Item 8: a registry cannot make the denial message large: a signature manifest whose 60
/// layers have 40 kB media types (about 2.4 MB of text in the reason) yields a bounded message
/// with a truncation marker, which a gRPC client receives whole.
#[tokio::test]
async fn registry_cannot_inflate_messages() {
    let dir = support::util::short_tempdir("hm");
    let key = TestKey::p256();
    let key_path = key.write_public(dir.path(), "k");
    let r = Registry::start(&dir.path().join("r"));
    let (_, digest) = r.push("app", "v1", None);
    let long = "x".repeat(40_000);
    let layers: Vec<serde_json::Value> = (0..60)
        .map(|i| {
            serde_json::json!({
                "mediaType": format!("{long}{i}"),
                "size": 1,
                "digest": format!("sha256:{}", "0".repeat(64)),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": 2, "digest": format!("sha256:{}", "1".repeat(64)) },
        "layers": layers,
    }))
    .unwrap();
    let sig = format!("/v2/app/manifests/{}.sig", digest.replace(':', "-"));
    let f = Front::start(Some(r.addr()), move |req| {
        if req.path == sig {
            Action::reply(
                200,
                &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
                manifest.clone(),
            )
        } else {
            Action::Forward(req.path.clone())
        }
    })
    .await;
    let v = verifier(
        dir.path(),
        &[&f.addr],
        &rule(&format!("{}/*", f.addr), &key_path, ""),
    );
    let image = format!("{}/app@{digest}", f.addr);
    let err = pull_status(dir.path(), v, &image).await;
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.message()
            .starts_with(&format!("SignatureValidationFailed: {image}: ")),
        "{:.300}",
        err.message()
    );
    assert!(
        err.message().len() <= 4096,
        "a {}-byte message",
        err.message().len()
    );
    assert!(err.message().contains("truncated"), "{}", err.message());
}

/// Item 8: control characters in an image name are escaped in the message (no forged lines),
/// and a malformed reference is answered with what is malformed.
#[tokio::test]
async fn malformed_references_are_named_and_escaped() {
    let dir = support::util::short_tempdir("mr");
    let key = TestKey::p256();
    let key_path = key.write_public(dir.path(), "k");
    let text = rule("*", &key_path, "");
    let injected = "registry.example/app:v1\nERROR forged log line";
    let err = pull_status(dir.path(), verifier(dir.path(), &[], &text), injected).await;
    assert!(
        !err.message().chars().any(|c| c.is_control()),
        "{:?}",
        err.message()
    );
    assert!(err.message().contains("\\n"), "{:?}", err.message());
    assert!(
        err.message().contains("control character"),
        "{:?}",
        err.message()
    );
    let upper = "registry.example/Team/App:v1";
    let err = pull_status(dir.path(), verifier(dir.path(), &[], &text), upper).await;
    assert!(err.message().contains("lowercase"), "{:?}", err.message());
}
