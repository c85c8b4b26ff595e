//! The `registry` target: a real [`Verifier`] against an in-process HTTP registry that answers
//! with the fuzz input: the `.sig` and `.att` manifests (or indexes), the referrers listing and
//! up to four blobs. Reaches the manifest parsing, layer selection, fetch limits and every
//! signature check that follows, the way a hostile registry operator would.
//!
//! Input sections: control byte, `.sig` manifest (or the first referrer), `.att` manifest (or
//! the second referrer), referrers listing (served by the referrers API and the referrers tag),
//! blob 0..3.
//! Control bits: 0 = rewrite each manifest layer's digest and size to match blob i, and the
//! listing's entries to match the two manifests (so mutated payloads are fetched instead of
//! failing the digest check), 1-2 = content type, 3 = the rule
//! that also requires an attestation, 4 = the cosign 3 sample's digest instead of the cosign-real
//! one.
//!
//! Oracle: an allow needs a payload signed by one of the configured keys, so an allowed input
//! must serve one of the real signed payloads byte for byte (for a Sigstore bundle: its DSSE
//! payload type and payload, or its message digest and signature, which is what the key signed;
//! a bundle's key hint and verification material are not signed); anything else is a forgery.

use std::sync::{Arc, Mutex, OnceLock};

use cri_guard::registry::Auth;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{sections, sha256_digest, shared};

/// What the fake registry answers, replaced for every input.
#[derive(Default, Clone)]
struct Served {
    sig: Vec<u8>,
    att: Vec<u8>,
    referrers: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    content_type: &'static str,
}

struct State {
    rt: tokio::runtime::Runtime,
    port: u16,
    served: Arc<Mutex<Served>>,
    verifier: Verifier,
    /// Payloads really signed by the configured keys (the oracle's allow list).
    signed: Vec<Vec<u8>>,
}

const DIGEST_REAL: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
const DIGEST_COSIGN3: &str =
    "sha256:1e4d730332095d38037c0da185cd8bbfc8bf3a130602fd952d59037baad6ae1a";

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let served = Arc::new(Mutex::new(Served::default()));
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(serve_registry(listener, served.clone()));
        let sh = shared();
        let policy = format!(
            r#"
default = "enforce"
[registries."127.0.0.1:{port}"]
insecure = true
[fetch]
timeout = "2s"
verifyTimeout = "4s"
maxVerificationBytes = "4MiB"
[[rules]]
name = "sig"
imageReferences = ["127.0.0.1:{port}/sig/*"]
signedIdentity = "any"
count = 1
[[rules.attestors]]
name = "cosign-real"
key = "{real}"
[[rules.attestors]]
name = "cosign3"
key = "{c3}"
[[rules.attestors]]
name = "cosign-real-2"
key = "{real2}"
[[rules]]
name = "att"
imageReferences = ["127.0.0.1:{port}/att/*"]
signedIdentity = "any"
count = 1
[[rules.attestors]]
name = "cosign3"
key = "{c3}"
[[rules.attestations]]
predicateType = "spdxjson"
"#,
            real = sh.join("testdata/cosign-real/keys/cosign.pub").display(),
            c3 = sh.join("reference/cosign3/samples/cosign.pub").display(),
            real2 = sh.join("testdata/cosign-real/keys/cosign2.pub").display(),
        );
        let verifier = Verifier::new(parse(&policy), None).unwrap();
        let mut signed = Vec::new();
        for dir in ["derived", "containers-image/fixtures"] {
            walk(&sh.join("testdata/cosign-real").join(dir), &mut signed);
        }
        walk(&sh.join("reference/cosign3/samples"), &mut signed);
        let signed = signed.iter().map(|b| signed_core(b)).collect();
        State {
            rt,
            port,
            served,
            verifier,
            signed,
        }
    })
}

/// What a key signed in `blob`: for a Sigstore bundle, its DSSE payload type and decoded
/// payload, or its message digest and signature; the rest of a bundle (the key hint, the
/// verification material) is not signed, so a bundle that differs only there is no forgery.
/// Anything else (a simple-signing payload, a DSSE `.att` layer): the blob itself.
fn signed_core(blob: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(blob) else {
        return blob.to_vec();
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|t| t.as_str()).unwrap_or("").to_owned();
    if let Some(env) = v.get("dsseEnvelope") {
        let payload = env
            .get("payload")
            .and_then(|p| p.as_str())
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok());
        if let Some(payload) = payload {
            let mut core = format!("dsse\0{}\0", text(env.get("payloadType"))).into_bytes();
            core.extend_from_slice(&payload);
            return core;
        }
    }
    if let Some(m) = v.get("messageSignature") {
        let digest = text(m.get("messageDigest").and_then(|d| d.get("digest")));
        return format!("message\0{digest}\0{}", text(m.get("signature"))).into_bytes();
    }
    blob.to_vec()
}

fn walk(dir: &std::path::Path, out: &mut Vec<Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.push(b);
        }
    }
}

fn parse(text: &str) -> Policy {
    Policy::parse("fuzz", text, std::path::Path::new("/"))
        .unwrap_or_else(|e| panic!("fuzz registry policy: {e}"))
}

/// Rewrites each layer's digest and size to those of blob `i`.
fn fix_digests(manifest: &[u8], blobs: &[Vec<u8>]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return manifest.to_vec();
    };
    if let Some(layers) = v.get_mut("layers").and_then(|l| l.as_array_mut()) {
        for (layer, blob) in layers.iter_mut().zip(blobs) {
            if let Some(o) = layer.as_object_mut() {
                o.insert("digest".into(), sha256_digest(blob).into());
                o.insert("size".into(), blob.len().into());
            }
        }
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| manifest.to_vec())
}

/// Rewrites the digest and size of each `manifests[i]` of an index to those of `bodies[i]`.
fn fix_listing(listing: &[u8], bodies: &[&[u8]]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(listing) else {
        return listing.to_vec();
    };
    if let Some(list) = v.get_mut("manifests").and_then(|l| l.as_array_mut()) {
        for (m, body) in list.iter_mut().zip(bodies) {
            if let Some(o) = m.as_object_mut() {
                o.insert("digest".into(), sha256_digest(body).into());
                o.insert("size".into(), body.len().into());
            }
        }
    }
    serde_json::to_vec(&v).unwrap_or_else(|_| listing.to_vec())
}

pub(crate) fn registry(data: &[u8]) {
    let st = state();
    let s = sections(data, 8);
    let ctl = s[0].first().copied().unwrap_or(0);
    let blobs: Vec<Vec<u8>> = s[4..].iter().map(|b| b.to_vec()).collect();
    let fix = |m: &[u8]| {
        if ctl & 1 == 1 {
            fix_digests(m, &blobs)
        } else {
            m.to_vec()
        }
    };
    let (sig, att) = (fix(s[1]), fix(s[2]));
    // The referrers listing names the two manifests by digest: kept in step with them too.
    let referrers = if ctl & 1 == 1 {
        fix_listing(s[3], &[&sig, &att])
    } else {
        s[3].to_vec()
    };
    *st.served.lock().unwrap() = Served {
        sig,
        att,
        referrers,
        blobs: blobs.clone(),
        content_type: match (ctl >> 1) & 3 {
            0 => "application/vnd.oci.image.manifest.v1+json",
            1 => "application/vnd.docker.distribution.manifest.v2+json",
            2 => "application/vnd.oci.image.index.v1+json",
            _ => "text/html",
        },
    };
    // A repository of its own per input (the fake registry ignores the name, the identity
    // rule is `any`): no decision carries over from another input, and the verifier (its
    // client, its policy) stays warm.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let repo = if ctl & 8 == 8 { "att" } else { "sig" };
    let digest = if ctl & 16 == 16 {
        DIGEST_COSIGN3
    } else {
        DIGEST_REAL
    };
    let image = format!("127.0.0.1:{}/{repo}/app{n}@{digest}", st.port);
    let d = st
        .rt
        .block_on(st.verifier.check_image(&image, "default", &Auth::Anonymous));
    if d.allowed {
        assert!(
            blobs.iter().any(|b| st.signed.contains(&signed_core(b))),
            "allowed {image} without a payload the configured keys signed: {}",
            d.reason()
        );
    }
}

/// Serves `served` over HTTP/1.1, one request per connection: manifests by tag (`.sig`, `.att`,
/// the referrers tag schema), the referrers API, and blobs by digest (the blob whose sha256
/// matches, else blob 0).
async fn serve_registry(listener: TcpListener, served: Arc<Mutex<Served>>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let served = served.lock().unwrap().clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head);
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let (status, ctype, body): (u16, &str, Vec<u8>) = if path.contains("/referrers/") {
                (
                    200,
                    "application/vnd.oci.image.index.v1+json",
                    served.referrers,
                )
            } else if let Some(tag) = path.split("/manifests/").nth(1) {
                if tag.ends_with(".sig") {
                    (200, served.content_type, served.sig)
                } else if tag.ends_with(".att") {
                    (200, served.content_type, served.att)
                } else if tag.starts_with("sha256:") {
                    // A manifest by digest (a referrer the listing names).
                    match [&served.sig, &served.att]
                        .into_iter()
                        .find(|m| sha256_digest(m) == tag)
                    {
                        Some(m) => (200, served.content_type, m.clone()),
                        None => (404, "application/json", b"{}".to_vec()),
                    }
                } else if tag.starts_with("sha256-") {
                    (
                        200,
                        "application/vnd.oci.image.index.v1+json",
                        served.referrers,
                    )
                } else {
                    (404, "application/json", b"{}".to_vec())
                }
            } else if let Some(d) = path.split("/blobs/").nth(1) {
                let blob = served
                    .blobs
                    .iter()
                    .find(|b| sha256_digest(b) == d)
                    .or(served.blobs.first())
                    .cloned()
                    .unwrap_or_default();
                (200, "application/octet-stream", blob)
            } else {
                (404, "application/json", b"{}".to_vec())
            };
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            if method != "HEAD" {
                resp.extend_from_slice(&body);
            }
            let _ = sock.write_all(&resp).await;
            let _ = sock.shutdown().await;
        });
    }
}
