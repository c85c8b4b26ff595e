//! Where signatures and attestations are found, with real cosign 3.1.1 output
//! (`shared/reference/cosign3/samples`): Sigstore bundles listed by the OCI referrers API, by
//! the referrers tag schema on a real docker-registry 2.8, and next to tag-based signatures.
//! Decisions are asked of the library's `Verifier` for the image's digest (the pull path without
//! a runtime; pulls through the proxy are in the end-to-end tests).
//!
//! The referrers API is served here by a scripted HTTP registry: a real one with the API is
//! not part of this test bed yet, and the faults (pages, a next link to another host, oversized
//! or malformed listings, a registry error) are what a real registry cannot be made to show.
//! The fallback tag runs against the real docker-registry.
//!
//! Without the samples the tests print a notice and pass.

mod shared;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cri_guard::registry::Auth;
use cri_guard::verify::policy::Policy;
use cri_guard::verify::{Decision, Outcome, Verifier};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

// --- A scripted registry ------------------------------------------------------------------

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn ok(content_type: &str, body: Vec<u8>) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type".into(), content_type.into())],
        body,
    }
}

/// An HTTP/1.1 registry answering scripted replies by path (anything else: 404), recording
/// every request line.
struct Scripted {
    addr: String,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    log: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r, l) = (routes.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (routes, log) = (r.clone(), l.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let mut parts = line.split(' ');
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    log.lock().unwrap().push(format!("{method} {path}"));
                    let reply = routes.lock().unwrap().get(&path).cloned().unwrap_or(Reply {
                        status: 404,
                        headers: vec![("content-type".into(), "text/plain".into())],
                        body: b"404 page not found\n".to_vec(),
                    });
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                        reply.status,
                        reply.body.len()
                    );
                    for (k, v) in &reply.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    if method != "HEAD" {
                        bytes.extend_from_slice(&reply.body);
                    }
                    let _ = conn.write_all(&bytes).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Scripted {
            addr,
            routes,
            log,
            task,
        }
    }

    fn route(&self, path: &str, reply: Reply) {
        self.routes.lock().unwrap().insert(path.to_owned(), reply);
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Serves an artifact's manifest and bundle layer in `repo`.
    fn serve(&self, repo: &str, a: &Artifact) {
        self.route(
            &format!("/v2/{repo}/manifests/{}", a.digest),
            ok(MANIFEST, a.manifest.clone()),
        );
        self.route(
            &format!("/v2/{repo}/blobs/{}", a.layer_digest),
            ok("application/octet-stream", a.layer.clone()),
        );
    }

    /// Serves `entries` (descriptors) as the referrers listing of IMAGE in `repo`.
    fn referrers(&self, repo: &str, entries: &[serde_json::Value]) {
        let body =
            serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
        self.route(
            &format!("/v2/{repo}/referrers/{IMAGE}"),
            ok(INDEX, body.to_string().into_bytes()),
        );
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

/// A cosign 3 signature listed by the referrers API verifies (ggcr lists it with the empty
/// config type as artifactType); the `.sig` tag, the referrers API and the referrers tag are
/// asked at once, then the referrers' manifests, then only the signature's blob: 6 requests in
/// 3 rounds. An attestation requirement is met by the listed SPDX attestation, in no more
/// rounds. Another key is refused, naming the key.
#[tokio::test]
async fn referrers_api_signature_and_attestation() {
    let Some(dir) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let reg = Scripted::start().await;
    let (sign, attest) = (
        artifact(&dir, "5502-new", "sign-bundle"),
        artifact(&dir, "5502-new", "attest-bundle"),
    );
    reg.serve("probe/new", &sign);
    reg.serve("probe/new", &attest);
    reg.referrers("probe/new", &[entry(&attest), entry(&sign)]);
    let key = dir.join("cosign.pub");

    let v = verifier(&reg.addr, &key, "", tmp.path());
    let d = decide(&v, &reg.addr, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert_eq!(d.reason(), "signed by cosign3");
    let requests = reg.requests();
    println!(
        "signature, referrers API: {} requests: {requests:#?}",
        requests.len()
    );
    assert_eq!(requests.len(), 6, "{requests:#?}");
    assert!(!requests.iter().any(|r| r.ends_with(&attest.layer_digest)));
    assert_eq!(v.registry_requests(), 6);

    let v = verifier(
        &reg.addr,
        &key,
        "[[rules.attestations]]\npredicateType = \"spdxjson\"",
        tmp.path(),
    );
    let before = reg.requests().len();
    let d = decide(&v, &reg.addr, "probe/new").await;
    assert!(d.allowed, "{}", d.reason());
    assert_eq!(
        d.reason(),
        "signed by cosign3; attested: https://spdx.dev/Document"
    );
    // .sig, .att, referrers API, referrers tag; two manifests; two blobs.
    assert_eq!(reg.requests().len() - before, 8);

    let v = verifier(&reg.addr, &other_key(tmp.path()), "", tmp.path());
    let d = decide(&v, &reg.addr, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("no valid signature: bundle signature does not verify with key cosign3"),
        "{}",
        d.reason()
    );
}

/// What must not count: a referrer about another image, a bundle layer that is not a bundle,
/// an artifact of another type, a signature bundle where an attestation is required (and an
/// attestation bundle is no signature). Each denial names why.
#[tokio::test]
async fn referrers_that_do_not_count() {
    let Some(dir) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = dir.join("cosign.pub");
    let sign = artifact(&dir, "5502-new", "sign-bundle");
    let attest = artifact(&dir, "5502-new", "attest-bundle");

    // Only the attestation is listed: no signature, and the attestation is not one.
    let reg = Scripted::start().await;
    reg.serve("probe/new", &attest);
    reg.referrers("probe/new", &[entry(&attest)]);
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reason().starts_with("no signature found (nothing at ")
            && d.reason()
                .contains("no Sigstore bundle among the referrers of"),
        "{}",
        d.reason()
    );

    // Only the signature is listed, and an SPDX attestation is required.
    let reg = Scripted::start().await;
    reg.serve("probe/new", &sign);
    reg.referrers("probe/new", &[entry(&sign)]);
    let v = verifier(
        &reg.addr,
        &key,
        "[[rules.attestations]]\npredicateType = \"spdxjson\"",
        tmp.path(),
    );
    let d = decide(&v, &reg.addr, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("missing attestation https://spdx.dev/Document (nothing at ")
            && d.reason()
                .contains("; no Sigstore attestation bundle among the referrers of"),
        "{}",
        d.reason()
    );

    // The signature manifest, re-pointed at another image.
    let reg = Scripted::start().await;
    let mut moved: serde_json::Value = serde_json::from_slice(&sign.manifest).unwrap();
    moved["subject"]["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    let moved = serde_json::to_vec(&moved).unwrap();
    let moved = Artifact {
        digest: sha(&moved),
        manifest: moved,
        layer: sign.layer.clone(),
        layer_digest: sign.layer_digest.clone(),
    };
    reg.serve("probe/new", &moved);
    reg.referrers("probe/new", &[entry(&moved)]);
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains(&format!(
            "(skipped: {}/probe/new@{}: a referrer of another image (sha256:0000",
            reg.addr, moved.digest
        )),
        "{}",
        d.reason()
    );
    assert!(reg.requests().iter().all(|r| !r.contains("/blobs/")));

    // A bundle layer that is not a bundle.
    let reg = Scripted::start().await;
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
    reg.serve("probe/new", &fake);
    reg.referrers("probe/new", &[entry(&fake)]);
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .starts_with("no valid signature: not a Sigstore bundle cri-guard can read"),
        "{}",
        d.reason()
    );

    // Another tool's artifact is not even fetched.
    let reg = Scripted::start().await;
    reg.serve("probe/new", &sign);
    let mut e = entry(&sign);
    e["artifactType"] = "application/spdx+json".into();
    reg.referrers("probe/new", &[e]);
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .contains("(skipped: an artifact of type application/spdx+json)"),
        "{}",
        d.reason()
    );
    assert!(reg.requests().iter().all(|r| !r.contains(&sign.digest)));
}

/// Listings are followed page by page on the same registry only, within bounds; a listing
/// that is oversized, malformed or fails denies, naming it; a registry error is reported as
/// the registry being unavailable. A valid tag-based signature still counts next to a broken
/// listing.
#[tokio::test]
async fn referrers_listing_bounds() {
    let Some(dir) = samples() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = dir.join("cosign.pub");
    let sign = artifact(&dir, "5502-new", "sign-bundle");
    let attest = artifact(&dir, "5502-new", "attest-bundle");
    let listing = |entries: &[serde_json::Value]| {
        serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries})
            .to_string()
            .into_bytes()
    };

    // Two pages, the second named by a relative next link.
    let reg = Scripted::start().await;
    reg.serve("probe/new", &sign);
    reg.serve("probe/new", &attest);
    let page2 = format!("/v2/probe/new/referrers/{IMAGE}?n=1&last=x");
    let mut first = ok(INDEX, listing(&[entry(&attest)]));
    first
        .headers
        .push(("link".into(), format!("<{page2}>; rel=\"next\"")));
    reg.route(&format!("/v2/probe/new/referrers/{IMAGE}"), first);
    reg.route(&page2, ok(INDEX, listing(&[entry(&sign)])));
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(d.allowed, "{}", d.reason());
    assert!(reg.requests().iter().any(|r| r.ends_with("last=x")));

    // A next link to another host is not followed (no request reaches it).
    let elsewhere = Scripted::start().await;
    let reg = Scripted::start().await;
    reg.serve("probe/new", &sign);
    let mut first = ok(INDEX, listing(&[]));
    first.headers.push((
        "link".into(),
        format!(
            "<http://{}/v2/probe/new/referrers/{IMAGE}>; rel=\"next\"",
            elsewhere.addr
        ),
    ));
    reg.route(&format!("/v2/probe/new/referrers/{IMAGE}"), first);
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reason().contains("is not on this registry; not followed"),
        "{}",
        d.reason()
    );
    assert!(elsewhere.requests().is_empty());

    // A link to itself forever: bounded pages.
    let reg = Scripted::start().await;
    let mut looping = ok(INDEX, listing(&[]));
    looping.headers.push((
        "link".into(),
        format!("</v2/probe/new/referrers/{IMAGE}>; rel=\"next\""),
    ));
    reg.route(&format!("/v2/probe/new/referrers/{IMAGE}"), looping);
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(d.reason().contains("more than 16 pages"), "{}", d.reason());
    assert!(reg.requests().len() <= 3 + 16);

    // More entries than fetch.maxReferrers.
    let reg = Scripted::start().await;
    let many: Vec<serde_json::Value> = (0..5).map(|_| entry(&sign)).collect();
    reg.referrers("probe/new", &many);
    let path = tmp.path().join("small.toml");
    std::fs::write(
        &path,
        format!(
            "[registries.\"{0}\"]\ninsecure = true\n[fetch]\nmaxReferrers = 4\n[[rules]]\nname = \"probe\"\n\
             imageReferences = [\"{0}/*\"]\n[[rules.attestors]]\nname = \"cosign3\"\nkey = \"{1}\"\n",
            reg.addr,
            key.display()
        ),
    )
    .unwrap();
    let small = Verifier::new(Policy::load(&path).unwrap(), None).unwrap();
    let d = decide(&small, &reg.addr, "probe/new").await;
    assert!(!d.allowed);
    assert!(
        d.reason()
            .contains("more than 4 referrers (fetch.maxReferrers"),
        "{}",
        d.reason()
    );

    // Not an index; a registry error.
    let reg = Scripted::start().await;
    reg.route(
        &format!("/v2/probe/new/referrers/{IMAGE}"),
        ok(INDEX, b"<html>".to_vec()),
    );
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    assert!(d.reason().contains("is not an OCI index"), "{}", d.reason());
    let reg = Scripted::start().await;
    reg.route(
        &format!("/v2/probe/new/referrers/{IMAGE}"),
        Reply {
            status: 503,
            headers: vec![],
            body: vec![],
        },
    );
    let d = decide(
        &verifier(&reg.addr, &key, "", tmp.path()),
        &reg.addr,
        "probe/new",
    )
    .await;
    match &d.outcome {
        Some(Outcome::Denied(denial)) => assert!(denial.unavailable, "{}", denial.reason),
        other => panic!("{other:?}"),
    }

    // A broken listing next to a valid tag-based signature: the signature counts.
    let old = artifact(&dir, "5502-old", "sig");
    let sig_manifest: serde_json::Value = serde_json::from_slice(&old.manifest).unwrap();
    assert_eq!(
        sig_manifest["layers"][0]["digest"],
        old.layer_digest.as_str()
    );
    reg.route(
        &format!("/v2/probe/new/manifests/{}.sig", IMAGE.replace(':', "-")),
        ok(MANIFEST, old.manifest.clone()),
    );
    reg.route(
        &format!("/v2/probe/new/blobs/{}", old.layer_digest),
        ok("application/octet-stream", old.layer.clone()),
    );
    let any = verifier(&reg.addr, &key, "signedIdentity = \"any\"", tmp.path());
    let d = decide(&any, &reg.addr, "probe/new").await;
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
    let config = std::fs::read(dir.join("5501-new/sign-bundle.config.blob")).unwrap();
    support::sign::push_blob(&addr, None, "probe/new", &config);
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
}
