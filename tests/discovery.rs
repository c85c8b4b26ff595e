//! Where signatures and attestations are found, with real cosign 3.1.1 output
//! (`shared/reference/cosign3/samples`): Sigstore bundles listed by the OCI referrers API, by
//! the referrers tag schema on a real docker-registry 2.8, and next to tag-based signatures.
//! Decisions are asked of the library's `Verifier` for the image's digest (the pull path without
//! a runtime; pulls through the proxy are in the end-to-end tests).
//!
//! Manifests and blobs are served by a real docker-registry 2.8 (no referrers API: the
//! fallback tag runs against it as is). The referrers API is added in front of it by the
//! scriptable front (`tests/front`): the faults (pages, a next link to another host, oversized
//! or malformed listings, a registry error) are what a real registry cannot be made to show.
//!
//! Without the samples the tests print a notice and pass.

mod front;
mod shared;
mod support;

use std::path::{Path, PathBuf};

use cri_guard::registry::Auth;
use cri_guard::verify::policy::Policy;
use cri_guard::verify::{Decision, Outcome, Verifier};
use sha2::{Digest as _, Sha256};

/// The image every sample is about.
const IMAGE: &str = "sha256:1e4d730332095d38037c0da185cd8bbfc8bf3a130602fd952d59037baad6ae1a";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn samples() -> Option<PathBuf> {
    let dir = shared::dir("reference/cosign3/samples");
    if dir.is_none() {
        eprintln!("notice: shared/reference/cosign3/samples is absent; discovery tests skipped");
    }
    dir
}

fn sha(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The samples' manifests are pretty-printed; the registry held them compact (whitespace
/// outside strings removed gives back the exact bytes, checked against the digest files).
fn compact(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    out
}

/// One registry-side artifact of the samples: (manifest bytes, digest, layer bytes, layer digest).
struct Artifact {
    manifest: Vec<u8>,
    digest: String,
    layer: Vec<u8>,
    layer_digest: String,
}

fn artifact(dir: &Path, registry: &str, name: &str) -> Artifact {
    let text =
        std::fs::read_to_string(dir.join(format!("{registry}/{name}.manifest.json"))).unwrap();
    let manifest = compact(&text);
    let digest = sha(&manifest);
    let expected = std::fs::read_to_string(dir.join(format!("{registry}/{name}.digest"))).unwrap();
    assert_eq!(digest, expected.trim(), "{registry}/{name}");
    let layer = std::fs::read(dir.join(format!("{registry}/{name}.layer0.raw"))).unwrap();
    let layer_digest = sha(&layer);
    Artifact {
        manifest,
        digest,
        layer,
        layer_digest,
    }
}

// --- A real registry holding the samples, with a scripted referrers API in front -----------

/// The registry and the front before it; the front answers `referrers` with `listing` (or
/// what `fault` says) and forwards everything else to the registry.
struct Bed {
    _tmp: tempfile::TempDir,
    registry: support::Registry,
    front: front::Front,
}

fn listing_body(entries: &[serde_json::Value]) -> Vec<u8> {
    serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})
        .to_string()
        .into_bytes()
}

impl Bed {
    async fn start() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let registry = support::Registry::start(tmp.path());
        let front = front::Front::start(Some(registry.addr()), front::pass).await;
        Bed {
            _tmp: tmp,
            registry,
            front,
        }
    }

    /// Pushes an artifact (config, bundle layer, manifest by digest) into `probe/new`.
    fn push(&self, a: &Artifact) {
        let addr = self.registry.addr();
        support::sign::push_blob(addr, None, "probe/new", b"{}");
        support::sign::push_blob(addr, None, "probe/new", &a.layer);
        let d =
            support::sign::push_manifest(addr, None, "probe/new", &a.digest, MANIFEST, &a.manifest);
        assert_eq!(d, a.digest);
    }

    /// The front answers the referrers of IMAGE with `reply(path)`, forwarding the rest.
    fn referrers(&self, reply: impl Fn(&str) -> front::Action + Send + Sync + 'static) {
        let prefix = format!("/v2/probe/new/referrers/{IMAGE}");
        self.front.set(move |r| {
            if r.path.starts_with(&prefix) {
                reply(&r.path)
            } else {
                front::pass(r)
            }
        });
    }

    /// The front lists `entries` as the referrers of IMAGE.
    fn list(&self, entries: &[serde_json::Value]) {
        let body = listing_body(entries);
        self.referrers(move |_| {
            front::Action::reply(200, &[("content-type", INDEX)], body.clone())
        });
    }

    fn requests(&self) -> Vec<String> {
        self.front
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }
}

fn entry(a: &Artifact) -> serde_json::Value {
    serde_json::json!({"mediaType": MANIFEST, "size": a.manifest.len(), "digest": a.digest,
        "artifactType": "application/vnd.oci.empty.v1+json"})
}

/// A policy for `registry`: one key attestor (cosign.pub of the samples, or `key`), plus
/// `extra` rule lines.
fn verifier(registry: &str, key: &Path, extra: &str, dir: &Path) -> Verifier {
    let text = format!(
        "[registries.\"{registry}\"]\ninsecure = true\n[fetch]\ntimeout = \"3s\"\n\
         [[rules]]\nname = \"probe\"\nimageReferences = [\"{registry}/*\"]\n{extra}\n\
         [[rules.attestors]]\nname = \"cosign3\"\nkey = \"{}\"\n",
        key.display()
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, &text).unwrap();
    let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{text}\n{e}"));
    Verifier::new(policy, None).unwrap()
}

async fn decide(v: &Verifier, registry: &str, repo: &str) -> Decision {
    let reference = format!("{registry}/{repo}@{IMAGE}").parse().unwrap();
    let d = v
        .check_reference(&reference, None, "default", &Auth::Anonymous)
        .await;
    println!(
        "{}: {}",
        if d.allowed { "ALLOW" } else { "DENY" },
        d.reason()
    );
    d
}

fn other_key(dir: &Path) -> PathBuf {
    // A P-256 key that signed none of the samples.
    let path = dir.join("other.pub");
    std::fs::write(
        &path,
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEcYt2jTWMCJ7ctLlUBHnhfOhbbyPs\nX4fK9ZxkwNcbhVwBA+hrDMm/S/QAtJAiBB3WJj9mvV0JVBLhjypRtXIiyw==\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    path
}

/// A cosign 3 signature listed by the referrers API verifies (listed, as ggcr does, with the
/// empty config type as artifactType); the `.sig` tag, the referrers API and the referrers tag
/// are asked at once, then the referrers' manifests, then only the signature's blob: 6
/// requests in 3 rounds. An attestation requirement is met by the listed SPDX attestation, in
/// no more rounds. Another key is refused, naming the key.
#[tokio::test]
async fn referrers_api_signature_and_attestation() {
    let Some(dir) = samples() else { return };
    let bed = Bed::start().await;
    let (sign, attest) = (
        artifact(&dir, "5502-new", "sign-bundle"),
        artifact(&dir, "5502-new", "attest-bundle"),
    );
    bed.push(&sign);
    bed.push(&attest);
    bed.list(&[entry(&attest), entry(&sign)]);
    let key = dir.join("cosign.pub");
    let at = &bed.front.addr;
    let tmp = bed._tmp.path();

    let v = verifier(at, &key, "", tmp);
    let d = decide(&v, at, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert_eq!(d.reason(), "signed by cosign3");
    let requests = bed.requests();
    println!(
        "signature, referrers API: {} requests: {requests:#?}",
        requests.len()
    );
    assert_eq!(requests.len(), 6, "{requests:#?}");
    assert!(!requests.iter().any(|r| r.ends_with(&attest.layer_digest)));
    assert_eq!(v.registry_requests(), 6);

    let v = verifier(
        at,
        &key,
        "[[rules.attestations]]\npredicateType = \"spdxjson\"",
        tmp,
    );
    let d = decide(&v, at, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert_eq!(
        d.reason(),
        "signed by cosign3; attested: https://spdx.dev/Document"
    );
    // .sig, .att, referrers API, referrers tag; two manifests; two blobs.
    assert_eq!(v.registry_requests(), 8);

    let v = verifier(at, &other_key(tmp), "", tmp);
    let d = decide(&v, at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("no valid signature: bundle signature does not verify with key cosign3"),
        "{}",
        d.reason()
    );
}

/// What must not count: an attestation where a signature is needed and the reverse, a
/// referrer about another image, a bundle layer that is not a bundle, an artifact of another
/// type. Each denial names why.
#[tokio::test]
async fn referrers_that_do_not_count() {
    let Some(dir) = samples() else { return };
    let bed = Bed::start().await;
    let key = dir.join("cosign.pub");
    let sign = artifact(&dir, "5502-new", "sign-bundle");
    let attest = artifact(&dir, "5502-new", "attest-bundle");
    bed.push(&sign);
    bed.push(&attest);
    let at = &bed.front.addr;
    let tmp = bed._tmp.path();
    // A fresh verifier (and so an empty decision cache) for every scenario.
    let plain = || verifier(at, &key, "", tmp);
    let sbom = || {
        verifier(
            at,
            &key,
            "[[rules.attestations]]\npredicateType = \"spdxjson\"",
            tmp,
        )
    };

    // Only the attestation is listed: no signature, and the attestation is not one.
    bed.list(&[entry(&attest)]);
    let d = decide(&plain(), at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason().starts_with("no signature found (nothing at ")
            && d.reason()
                .contains("no Sigstore bundle among the referrers of"),
        "{}",
        d.reason()
    );

    // Only the signature is listed, and an SPDX attestation is required.
    bed.list(&[entry(&sign)]);
    let d = decide(&sbom(), at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("missing attestation https://spdx.dev/Document (nothing at ")
            && d.reason()
                .contains("; no Sigstore attestation bundle among the referrers of"),
        "{}",
        d.reason()
    );

    // The signature's manifest, re-pointed at another image.
    let mut moved: serde_json::Value = serde_json::from_slice(&sign.manifest).unwrap();
    moved["subject"]["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    let moved = serde_json::to_vec(&moved).unwrap();
    let moved = Artifact {
        digest: sha(&moved),
        manifest: moved,
        layer: sign.layer.clone(),
        layer_digest: sign.layer_digest.clone(),
    };
    bed.push(&moved);
    bed.list(&[entry(&moved)]);
    let before = bed.requests().len();
    let d = decide(&plain(), at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains(&format!(
            "(skipped: {at}/probe/new@{}: a referrer of another image (sha256:0000",
            moved.digest
        )),
        "{}",
        d.reason()
    );
    assert!(
        bed.requests()[before..]
            .iter()
            .all(|r| !r.contains("/blobs/"))
    );

    // A bundle layer that is not a bundle.
    let garbage = b"{\"not\":\"a bundle\"}".to_vec();
    let mut m: serde_json::Value = serde_json::from_slice(&sign.manifest).unwrap();
    m["layers"][0]["digest"] = sha(&garbage).into();
    m["layers"][0]["size"] = garbage.len().into();
    let m = serde_json::to_vec(&m).unwrap();
    let fake = Artifact {
        digest: sha(&m),
        manifest: m,
        layer_digest: sha(&garbage),
        layer: garbage,
    };
    bed.push(&fake);
    bed.list(&[entry(&fake)]);
    let d = decide(&plain(), at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("no valid signature: not a Sigstore bundle cri-guard can read"),
        "{}",
        d.reason()
    );

    // Another tool's artifact is not even fetched.
    let mut e = entry(&sign);
    e["artifactType"] = "application/spdx+json".into();
    bed.list(&[e]);
    let before = bed.requests().len();
    let d = decide(&plain(), at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .contains("(skipped: an artifact of type application/spdx+json)"),
        "{}",
        d.reason()
    );
    assert!(
        bed.requests()[before..]
            .iter()
            .all(|r| !r.contains(&sign.digest))
    );
}

/// Listings are followed page by page on the same registry only, within bounds; a listing
/// that is oversized, malformed or fails denies, naming it; a registry error is reported as
/// the registry being unavailable. A valid tag-based signature still counts next to a broken
/// listing.
#[tokio::test]
async fn referrers_listing_bounds() {
    let Some(dir) = samples() else { return };
    let bed = Bed::start().await;
    let key = dir.join("cosign.pub");
    let sign = artifact(&dir, "5502-new", "sign-bundle");
    let attest = artifact(&dir, "5502-new", "attest-bundle");
    bed.push(&sign);
    bed.push(&attest);
    let at = bed.front.addr.clone();
    let tmp = bed._tmp.path();
    // A fresh verifier (and so an empty decision cache) for every scenario.
    let plain = || verifier(&at, &key, "", tmp);
    let base = format!("/v2/probe/new/referrers/{IMAGE}");
    let index = |body: Vec<u8>, link: Option<String>| {
        let mut headers = vec![("content-type", INDEX)];
        let link = link.unwrap_or_default();
        if !link.is_empty() {
            headers.push(("link", link.as_str()));
        }
        front::Action::reply(200, &headers, body)
    };

    // Two pages, the second named by a relative next link.
    let (first, second) = (
        listing_body(&[entry(&attest)]),
        listing_body(&[entry(&sign)]),
    );
    let page2 = format!("{base}?n=1&last=x");
    let p2 = page2.clone();
    bed.referrers(move |path| {
        if path.ends_with("last=x") {
            index(second.clone(), None)
        } else {
            index(first.clone(), Some(format!("<{p2}>; rel=\"next\"")))
        }
    });
    let d = decide(&plain(), &at, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert!(bed.requests().iter().any(|r| r.ends_with(&page2)));

    // A next link to another host is not followed (no request reaches it).
    let elsewhere = front::Front::start(None, |_| front::Action::reply(200, &[], "")).await;
    let link = format!("<http://{}{base}>; rel=\"next\"", elsewhere.addr);
    bed.referrers(move |_| index(listing_body(&[]), Some(link.clone())));
    let d = decide(&plain(), &at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains("is not on this registry; not followed"),
        "{}",
        d.reason()
    );
    assert!(elsewhere.requests().is_empty());

    // A link to itself forever: bounded pages.
    let me = base.clone();
    bed.referrers(move |_| index(listing_body(&[]), Some(format!("<{me}>; rel=\"next\""))));
    let before = bed.requests().len();
    let d = decide(&plain(), &at, "probe/new").await;
    assert!(d.reason().contains("more than 16 pages"), "{}", d.reason());
    assert!(bed.requests().len() - before <= 3 + 16);

    // More entries than fetch.maxReferrers.
    let many: Vec<serde_json::Value> = (0..5).map(|_| entry(&sign)).collect();
    bed.list(&many);
    let path = tmp.join("small.toml");
    std::fs::write(
        &path,
        format!(
            "[registries.\"{at}\"]\ninsecure = true\n[fetch]\nmaxReferrers = 4\n[[rules]]\nname = \"probe\"\n\
             imageReferences = [\"{at}/*\"]\n[[rules.attestors]]\nname = \"cosign3\"\nkey = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    let small = Verifier::new(Policy::load(&path).unwrap(), None).unwrap();
    let d = decide(&small, &at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .contains("more than 4 referrers (fetch.maxReferrers"),
        "{}",
        d.reason()
    );

    // Not an index; a registry error.
    bed.referrers(|_| front::Action::reply(200, &[("content-type", INDEX)], "<html>"));
    let d = decide(&plain(), &at, "probe/new").await;
    assert!(d.reason().contains("is not an OCI index"), "{}", d.reason());
    bed.referrers(|_| front::Action::reply(503, &[], ""));
    let d = decide(&plain(), &at, "probe/new").await;
    match &d.outcome {
        Some(Outcome::Denied(denial)) => assert!(denial.unavailable, "{}", denial.reason),
        other => panic!("{other:?}"),
    }

    // A broken listing next to a valid tag-based signature (cosign 3, --new-bundle-format=false;
    // signed for 127.0.0.1:5502/probe/old, hence signedIdentity = "any"): the signature counts.
    let old = artifact(&dir, "5502-old", "sig");
    let config = std::fs::read(dir.join("5502-old/sig.config.blob")).unwrap();
    let addr = bed.registry.addr();
    support::sign::push_blob(addr, None, "probe/new", &config);
    support::sign::push_blob(addr, None, "probe/new", &old.layer);
    support::sign::push_manifest(
        addr,
        None,
        "probe/new",
        &format!("{}.sig", IMAGE.replace(':', "-")),
        MANIFEST,
        &old.manifest,
    );
    let any = verifier(&at, &key, "signedIdentity = \"any\"", tmp);
    let d = decide(&any, &at, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
}

/// On a real docker-registry 2.8 (no referrers API), cosign 3 keeps the referrers in the tag
/// `sha256-<hex>` (an OCI index): the signature and the SPDX attestation found there verify,
/// in the same number of rounds as through the API (the tag is asked in the first round);
/// another key is refused.
#[tokio::test]
async fn referrers_tag_on_docker_registry() {
    let Some(dir) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let registry = support::Registry::start(tmp.path());
    let addr = registry.addr().to_owned();
    let (sign, attest) = (
        artifact(&dir, "5501-new", "sign-bundle"),
        artifact(&dir, "5501-new", "attest-bundle"),
    );
    support::sign::push_blob(&addr, None, "probe/new", b"{}");
    for a in [&sign, &attest] {
        support::sign::push_blob(&addr, None, "probe/new", &a.layer);
        let d = support::sign::push_manifest(
            &addr,
            None,
            "probe/new",
            &a.digest,
            MANIFEST,
            &a.manifest,
        );
        assert_eq!(d, a.digest);
    }
    let index = std::fs::read_to_string(dir.join(format!(
        "5501-new/tag_{}.manifest.json",
        IMAGE.replace(':', "-")
    )))
    .unwrap();
    support::sign::push_manifest(
        &addr,
        None,
        "probe/new",
        &IMAGE.replace(':', "-"),
        INDEX,
        &compact(&index),
    );
    let key = dir.join("cosign.pub");
    let v = verifier(
        &addr,
        &key,
        "[[rules.attestations]]\npredicateType = \"spdxjson\"",
        tmp.path(),
    );
    let d = decide(&v, &addr, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert_eq!(
        d.reason(),
        "signed by cosign3; attested: https://spdx.dev/Document"
    );
    // .sig, .att, referrers API (404), referrers tag; two manifests; two blobs.
    assert_eq!(v.registry_requests(), 8);
    let d = decide(
        &verifier(&addr, &other_key(tmp.path()), "", tmp.path()),
        &addr,
        "probe/new",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains("does not verify with key cosign3"),
        "{}",
        d.reason()
    );

    // Under a signatures repository: the same artifacts found there for an image elsewhere.
    let v = verifier(
        &addr,
        &key,
        &format!("signaturesRepository = \"{addr}/probe/new\""),
        tmp.path(),
    );
    let d = decide(&v, &addr, "elsewhere/app").await;
    assert!(d.allowed, "{}", d.reason());
}

/// An attestor that requires RFC 3161 timestamps (`minTimestamps`, with the public-good
/// trusted root's timestamp authority) accepts neither a tag-based signature (it carries none
/// cri-guard reads) nor a key-signed bundle without one; each denial says so.
#[tokio::test]
async fn timestamps_required() {
    let Some(dir) = samples() else { return };
    let Some(conformance) = shared::dir("testdata/sigstore-conformance") else {
        return;
    };
    let bed = Bed::start().await;
    let key = dir.join("cosign.pub");
    let at = bed.front.addr.clone();
    let tmp = bed._tmp.path();
    let root = conformance.join("trust/public-good-trusted_root.json");
    let knobs = format!(
        "trustedRoot = \"{}\"\nignoreTlog = true\nminTimestamps = 1\n",
        root.display()
    );
    // The attestor's knobs go after its key line.
    let policy = |signed_identity: &str| {
        let text = format!(
            "[registries.\"{at}\"]\ninsecure = true\n[[rules]]\nname = \"probe\"\n\
             imageReferences = [\"{at}/*\"]\n{signed_identity}\n[[rules.attestors]]\nname = \"cosign3\"\n\
             key = \"{}\"\n{knobs}",
            key.display()
        );
        let path = tmp.join("ts.toml");
        std::fs::write(&path, text).unwrap();
        Verifier::new(Policy::load(&path).unwrap(), None).unwrap()
    };

    // A cosign 3 bundle without a timestamp.
    let sign = artifact(&dir, "5502-new", "sign-bundle");
    bed.push(&sign);
    bed.list(&[entry(&sign)]);
    let d = decide(&policy(""), &at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains(
            "no RFC 3161 timestamp cri-guard can check, but attestor cosign3 requires 1 (minTimestamps)"
        ),
        "{}",
        d.reason()
    );

    // A valid tag-based signature (signed for 127.0.0.1:5502/probe/old).
    bed.list(&[]);
    let old = artifact(&dir, "5502-old", "sig");
    let addr = bed.registry.addr();
    support::sign::push_blob(
        addr,
        None,
        "probe/new",
        &std::fs::read(dir.join("5502-old/sig.config.blob")).unwrap(),
    );
    support::sign::push_blob(addr, None, "probe/new", &old.layer);
    support::sign::push_manifest(
        addr,
        None,
        "probe/new",
        &format!("{}.sig", IMAGE.replace(':', "-")),
        MANIFEST,
        &old.manifest,
    );
    let d = decide(&policy("signedIdentity = \"any\""), &at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains(
            "requires 1 RFC 3161 timestamp(s) (minTimestamps), which only Sigstore bundles carry"
        ),
        "{}",
        d.reason()
    );
}

/// A `.att` tag that cannot be read (the registry answers 500 there) does not hide an
/// attestation found among the referrers: the requirement is met by the Sigstore bundle, as a
/// signature would be. Without that bundle, the `.att` failure is the denial, with the
/// requirement it left unmet.
#[tokio::test]
async fn unreadable_att_tag_does_not_hide_bundle_attestations() {
    let Some(dir) = samples() else { return };
    let bed = Bed::start().await;
    let (sign, attest) = (
        artifact(&dir, "5502-new", "sign-bundle"),
        artifact(&dir, "5502-new", "attest-bundle"),
    );
    bed.push(&sign);
    bed.push(&attest);
    let att_tag = format!(
        "/v2/probe/new/manifests/{}.att",
        IMAGE.replace("sha256:", "sha256-")
    );
    let referrers = format!("/v2/probe/new/referrers/{IMAGE}");
    let set = |entries: Vec<serde_json::Value>| {
        let (att_tag, referrers) = (att_tag.clone(), referrers.clone());
        let body = listing_body(&entries);
        bed.front.set(move |r| {
            if r.path == att_tag {
                front::Action::reply(500, &[], "boom")
            } else if r.path.starts_with(&referrers) {
                front::Action::reply(200, &[("content-type", INDEX)], body.clone())
            } else {
                front::pass(r)
            }
        });
    };
    let key = dir.join("cosign.pub");
    let (at, tmp) = (&bed.front.addr, bed._tmp.path());
    let require = "[[rules.attestations]]\npredicateType = \"spdxjson\"";

    set(vec![entry(&attest), entry(&sign)]);
    let d = decide(&verifier(at, &key, require, tmp), at, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert_eq!(
        d.reason(),
        "signed by cosign3; attested: https://spdx.dev/Document"
    );

    set(vec![entry(&sign)]);
    let d = decide(&verifier(at, &key, require, tmp), at, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("missing attestation https://spdx.dev/Document"),
        "{}",
        d.reason()
    );
}
