//! Fuzz targets for what attackers feed cri-guard (docs/fuzzing.md): image references, policy
//! files, registry responses (manifests, indexes, referrers listings, simple-signing payloads,
//! DSSE envelopes, sigstore bundles, certificates, Rekor entries), and the HTTP/2 + gRPC framing
//! of calls into the proxy.
//!
//! One libFuzzer binary serves every target (one instrumented link instead of nine); the target
//! is picked by `CRI_GUARD_FUZZ_TARGET`. Each target is a plain `fn(&[u8])` that must not panic,
//! hang or allocate without bound on any input; several also check an oracle (no input may be
//! allowed without the private key of a configured signer).
//!
//! Structured inputs are sections separated by [`SEP`], so seeds are readable files built from
//! the real vectors in `../shared` ([`seeds`]) and a crash file shows what each part was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod h2;
mod registry;
pub mod seeds;

/// Separates the sections of a structured input.
pub const SEP: &[u8] = b"\n@@@@\n";

/// Every target, by the name `CRI_GUARD_FUZZ_TARGET` takes.
pub const TARGETS: &[&str] = &[
    "reference",
    "policy",
    "sig_layer",
    "rekor",
    "dsse",
    "bundle",
    "certificate",
    "registry",
    "proxy",
];

/// Runs `target` on one input.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "reference" => reference(data),
        "policy" => policy(data),
        "sig_layer" => sig_layer(data),
        "rekor" => rekor(data),
        "dsse" => dsse(data),
        "bundle" => bundle(data),
        "certificate" => certificate(data),
        "registry" => registry::registry(data),
        "proxy" => h2::proxy(data),
        other => panic!("unknown fuzz target {other:?}; one of {TARGETS:?}"),
    }
}

/// The shared test data folder (`../shared` beside the worktree), or `CRI_GUARD_FUZZ_SHARED`.
pub fn shared() -> PathBuf {
    std::env::var_os("CRI_GUARD_FUZZ_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
}

fn read(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(shared().join(rel)).ok()
}

/// Splits a structured input into `n` sections (missing ones are empty).
pub fn sections(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match find(rest, SEP) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    while out.len() < n {
        out.push(&[]);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Joins sections into one input (the inverse of [`sections`]).
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        out.extend_from_slice(p);
    }
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ----------------------------------------------------------------------------------- reference

/// The policy every reference is matched against: a skip rule, namespaced rules, wildcards in
/// host and path, a tag pattern and a digest pattern.
const REFERENCE_POLICY: &str = r#"
default = "enforce"
[[rules]]
name = "pause"
imageReferences = ["registry.k8s.io/pause:*"]
mode = "skip"
[[rules]]
name = "corp"
imageReferences = ["*.corp.example/*", "ghcr.io/org/app:release-*"]
namespaces = ["team-a", "team-*"]
mode = "skip"
[[rules]]
name = "hub"
imageReferences = ["docker.io/library/*", "localhost:5000/x@sha256:*"]
namespaces = ["kube-system"]
mode = "skip"
"#;

/// Image references: parsing, normalization, rule matching. Oracles: normalization is
/// idempotent (the normal form parses to itself), and a skip/audit rule never matches a
/// reference whose normalized host is not the pattern's host.
pub fn reference(data: &[u8]) {
    use cri_guard::verify::policy::{Pattern, Policy, glob_match};
    use cri_guard::verify::reference::{Normal, normal_host, parse};
    static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        Policy::parse("fuzz", REFERENCE_POLICY, Path::new("/")).expect("fuzz policy")
    });
    let s = text(data);
    let (image, pattern) = s.split_once('\n').unwrap_or((&s, "*"));
    if let Ok(p) = Pattern::parse(pattern)
        && let Ok(r) = parse(image)
    {
        let n = Normal::of(&r);
        if p.matches(&n) {
            // A pattern's host part never reaches into the path.
            let host_pat = pattern.split('/').next().unwrap_or("");
            assert!(
                !pattern.contains('/')
                    || !host_pat.contains(['.', ':'])
                    || glob_match(&normal_host(host_pat), &n.host),
                "pattern {pattern:?} matched {:?} (host {:?})",
                n.whole(),
                n.host
            );
        }
    }
    let _ = glob_match(pattern, image);
    let Ok(r) = parse(image) else { return };
    let n = Normal::of(&r);
    // Idempotent where the printed form is unambiguous: a first component in upper case is a
    // registry host in Docker's grammar, and the normal form prints it in lower case, where it
    // reads as a Docker Hub path (matching compares host and path apart, so rules agree).
    if n.host.contains(['.', ':']) || n.host == "localhost" {
        let whole = n.whole();
        let again = parse(&whole).unwrap_or_else(|e| {
            panic!("{image:?} normalizes to {whole:?}, which does not parse: {e}")
        });
        assert_eq!(
            Normal::of(&again),
            n,
            "normalizing {image:?} twice changes it"
        );
    }
    for ns in ["default", "team-a", "kube-system", ""] {
        let _ = policy.matching(&r, ns).name();
    }
}

// -------------------------------------------------------------------------------------- policy

/// Policy files and the daemon's configuration file (what `check-config` reads): every input
/// is either accepted or refused with messages, never a panic.
pub fn policy(data: &[u8]) {
    use cri_guard::config::{Config, Overrides};
    use cri_guard::verify::policy::Policy;
    let s = text(data);
    let base = shared().join("testdata/cosign-real");
    if let Ok(p) = Policy::parse("fuzz", &s, &base) {
        let r = cri_guard::verify::reference::parse("docker.io/library/busybox:1").unwrap();
        let _ = p.matching(&r, "default");
    }
    let _ = Config::parse("fuzz", &s, &Overrides::default());
}

// ------------------------------------------------------------------------------ signer material

/// The signers the signature targets verify with, from the real vectors (when present).
struct Trust {
    authorities: Vec<cri_guard::verify::cosign::Authority>,
    rekor: Option<cri_guard::verify::cosign::RekorKeys>,
    /// Transparency material for bundles: none, and each trusted root of the vectors.
    transparency: Vec<cri_guard::verify::cosign::Transparency>,
}

fn trust() -> &'static Trust {
    use cri_guard::verify::cosign::{
        Authority, CertAuthority, CertIdentity, PublicKey, RekorKeys, Transparency, TrustedRoot,
    };
    static TRUST: std::sync::OnceLock<Trust> = std::sync::OnceLock::new();
    TRUST.get_or_init(|| {
        let mut authorities = Vec::new();
        for (name, rel) in [
            ("cosign-real", "testdata/cosign-real/keys/cosign.pub"),
            ("cosign-real-2", "testdata/cosign-real/keys/cosign2.pub"),
            ("cosign3", "reference/cosign3/samples/cosign.pub"),
            (
                "blob",
                "testdata/cosign-real/cosign/blob-attestation/cosign-blob-attest.pub",
            ),
        ] {
            if let Some(pem) = read(rel)
                && let Ok(k) = PublicKey::from_pem(name, &pem)
            {
                authorities.push(Authority::Key(k));
            }
        }
        if let Some(roots) = read("testdata/cosign-real/trust/fulcio_v1.crt.pem")
            && let Ok(ca) = CertAuthority::from_pem("fulcio", &roots, None, CertIdentity::default())
        {
            authorities.push(Authority::Certificates(ca));
        }
        if let (Some(roots), Some(inter)) = (
            read("testdata/cosign-real/trust/pki_root_crts.pem"),
            read("testdata/cosign-real/trust/pki_intermediate_crts.pem"),
        ) && let Ok(ca) =
            CertAuthority::from_pem("pki", &roots, Some(&inter), CertIdentity::default())
        {
            authorities.push(Authority::Certificates(ca));
        }
        let rekor = read("testdata/cosign-real/trust/rekor.pub")
            .and_then(|p| RekorKeys::from_pems([p]).ok());
        if let Some(json) =
            read("testdata/sigstore-conformance/trust/public-good-trusted_root.json")
            && let Ok(root) = TrustedRoot::from_json("conformance", &json)
        {
            if let Ok(ca) = root.cert_authority("public-good", CertIdentity::default()) {
                authorities.push(Authority::Certificates(ca));
            }
        }
        let mut transparency = vec![Transparency::none()];
        for (name, rel) in [
            (
                "conformance",
                "testdata/sigstore-conformance/trust/public-good-trusted_root.json",
            ),
            (
                "cosign-real",
                "testdata/cosign-real/trust/trusted_root_pgi.json",
            ),
        ] {
            if let Some(json) = read(rel)
                && let Ok(root) = TrustedRoot::from_json(name, &json)
                && let Ok(t) = Transparency::new(name, root.sigstore(), true, 0)
            {
                transparency.push(t);
            }
        }
        Trust {
            authorities,
            rekor,
            transparency,
        }
    })
}

fn sha256_digest(b: &[u8]) -> String {
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        cri_guard::registry::hex(&sha2::Sha256::digest(b))
    )
}

/// A `.sig` layer: sections payload, signature (base64), certificate, chain, bundle, selector
/// (`x<media type>` for another media type; else its first byte picks the identity rule),
/// expected reference, expected digest. Verified with every configured signer, with and
/// without Rekor keys.
pub fn sig_layer(data: &[u8]) {
    use cri_guard::verify::cosign::{
        BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, Expected, IdentityMatch,
        SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SigLayer, verify_layer,
    };
    let s = sections(data, 8);
    let mut annotations = BTreeMap::new();
    for (k, v) in [
        (SIGNATURE_ANNOTATION, s[1]),
        (CERTIFICATE_ANNOTATION, s[2]),
        (CHAIN_ANNOTATION, s[3]),
        (BUNDLE_ANNOTATION, s[4]),
    ] {
        if !v.is_empty() {
            annotations.insert(k.to_string(), text(v));
        }
    }
    let layer = SigLayer {
        media_type: if s[5].first() == Some(&b'x') {
            text(&s[5][1..])
        } else {
            SIMPLE_SIGNING_MEDIA_TYPE.to_string()
        },
        payload: s[0].to_vec(),
        annotations,
    };
    let Ok(reference) = oci_client::Reference::try_from(text(s[6]).trim()) else {
        return;
    };
    let digest = text(s[7]);
    let digest = digest.trim();
    let t = trust();
    let identities = [
        IdentityMatch::Repository,
        IdentityMatch::Exact,
        IdentityMatch::Any,
        IdentityMatch::RemapPrefix {
            prefix: "127.0.0.1:5000".into(),
            signed_prefix: "192.168.64.2:5000".into(),
        },
    ];
    // The identity rule is picked by the selector byte (one per input keeps inputs fast).
    let identity = &identities[s[5]
        .first()
        .map_or(0, |b| usize::from(*b) % identities.len())];
    let expected = Expected {
        digest,
        reference: &reference,
        identity,
    };
    for a in &t.authorities {
        let _ = verify_layer(&layer, a, &expected, None);
        let _ = verify_layer(&layer, a, &expected, t.rekor.as_ref());
    }
}

/// A Rekor bundle annotation (`dev.sigstore.cosign/bundle`) on a real key-signed layer: the SET,
/// the entry body and its binding to the payload, signature and key.
pub fn rekor(data: &[u8]) {
    use cri_guard::verify::cosign::{
        BUNDLE_ANNOTATION, Expected, IdentityMatch, SIGNATURE_ANNOTATION,
        SIMPLE_SIGNING_MEDIA_TYPE, SigLayer, verify_layer,
    };
    static LAYER: std::sync::OnceLock<Option<(Vec<u8>, String)>> = std::sync::OnceLock::new();
    let Some((payload, sig)) = LAYER.get_or_init(|| {
        let p = read("testdata/cosign-real/derived/key-rekor-valid/payload.json")?;
        let s = read("testdata/cosign-real/derived/key-rekor-valid/signature.b64")?;
        Some((p, text(&s).trim().to_string()))
    }) else {
        return;
    };
    let t = trust();
    let Some(rekor) = t.rekor.as_ref() else {
        return;
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(SIGNATURE_ANNOTATION.to_string(), sig.clone());
    annotations.insert(BUNDLE_ANNOTATION.to_string(), text(data));
    let layer = SigLayer {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_string(),
        payload: payload.clone(),
        annotations,
    };
    let reference =
        oci_client::Reference::try_from("192.168.64.2:5000/cosign-signed/key-rekor").unwrap();
    let digest = sha256_digest(b"");
    let expected = Expected {
        digest: &digest,
        reference: &reference,
        identity: &IdentityMatch::Any,
    };
    for a in &t.authorities {
        let _ = verify_layer(&layer, a, &expected, Some(rekor));
    }
}

/// DSSE envelopes: sections envelope (layer blob), bundle annotation, certificate, chain,
/// subject digest. Parsed, verified as a `.att` layer and as a blob attestation.
pub fn dsse(data: &[u8]) {
    use cri_guard::verify::cosign::DSSE_MEDIA_TYPE;
    use cri_guard::verify::cosign::intoto::{Envelope, Statement};
    use cri_guard::verify::cosign::tag::attestation::{
        verify_attestation_layer, verify_blob_envelope,
    };
    use cri_guard::verify::cosign::{
        BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, SigLayer,
    };
    let s = sections(data, 5);
    if let Ok(env) = Envelope::parse(s[0]) {
        let _ = Statement::parse(&env.payload);
    }
    let _ = Statement::parse(s[0]);
    let mut annotations = BTreeMap::new();
    for (k, v) in [
        (BUNDLE_ANNOTATION, s[1]),
        (CERTIFICATE_ANNOTATION, s[2]),
        (CHAIN_ANNOTATION, s[3]),
    ] {
        if !v.is_empty() {
            annotations.insert(k.to_string(), text(v));
        }
    }
    let layer = SigLayer {
        media_type: DSSE_MEDIA_TYPE.to_string(),
        payload: s[0].to_vec(),
        annotations,
    };
    let digest = text(s[4]);
    let digest = digest.trim();
    let t = trust();
    for a in &t.authorities {
        let _ = verify_attestation_layer(&layer, a, digest, None);
        let _ = verify_attestation_layer(&layer, a, digest, t.rekor.as_ref());
        let _ = verify_blob_envelope(s[0], a, digest.trim_start_matches("sha256:"));
    }
}

/// Sigstore bundles (v0.1-v0.3): parsed, then verified with every signer against every set of
/// transparency material, as an image signature (cosign 3's sign predicate) and as any
/// statement about the digest.
pub fn bundle(data: &[u8]) {
    use cri_guard::verify::cosign::bundle::{
        Artifact, BundleExpect, SIGN_PREDICATE_TYPE, parse_bundle, verify_bundle,
    };
    if parse_bundle(data).is_err() {
        return;
    }
    let t = trust();
    let digest = "sha256:1e4d730332095d38037c0da185cd8bbfc8bf3a130602fd952d59037baad6ae1a";
    for predicate_type in [Some(SIGN_PREDICATE_TYPE), None] {
        let expect = BundleExpect {
            artifact: Artifact::Digest(digest),
            predicate_type,
        };
        for trust in &t.transparency {
            for a in &t.authorities {
                let _ = verify_bundle(data, a, trust, &expect);
            }
        }
    }
    let expect = BundleExpect {
        artifact: Artifact::Blob(b"blob"),
        predicate_type: None,
    };
    for a in &t.authorities {
        let _ = verify_bundle(data, a, &t.transparency[0], &expect);
    }
}

/// Certificates and keys: the first byte picks the parser, the rest is its input.
pub fn certificate(data: &[u8]) {
    use cri_guard::verify::cosign::{
        Authority, CertAuthority, CertIdentity, PublicKey, RekorKeys, TrustedRoot, pem_certificates,
    };
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 6 {
        0 => {
            if let Ok(k) = PublicKey::from_pem("fuzz", rest) {
                let _ = k.algorithm();
            }
        }
        1 => {
            let _ = PublicKey::from_spki_der("fuzz", rest);
        }
        2 => {
            let _ = pem_certificates("fuzz", rest);
            let _ = CertAuthority::from_pem("fuzz", rest, Some(rest), CertIdentity::default());
            let _ = CertAuthority::from_der(
                "fuzz",
                vec![rest.to_vec()],
                vec![],
                CertIdentity::default(),
            );
        }
        3 => {
            // A leaf (PEM or DER) against every configured CA, at a few times.
            let ders = pem_certificates("fuzz", rest)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| vec![rest.to_vec()]);
            let (leaf, chain) = ders.split_first().unwrap();
            for a in &trust().authorities {
                if let Authority::Certificates(ca) = a {
                    for at in [0, 1_650_000_000, 1_700_000_000, i64::MAX, i64::MIN] {
                        let _ = ca.verify_leaf(leaf, chain, at);
                    }
                }
            }
        }
        4 => {
            if let Ok(root) = TrustedRoot::from_json("fuzz", rest) {
                let _ = root.cert_authority("fuzz", CertIdentity::default());
                let _ = root.rekor_keys().len();
            }
        }
        _ => {
            let _ = RekorKeys::from_pems([rest]);
        }
    }
}
