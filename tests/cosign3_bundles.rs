//! Real cosign 3.1.1 output (`shared/reference/cosign3/samples`, made with
//! `cosign sign|attest --key` on three registries, see its README) through
//! `verify::cosign::bundle`: key-signed Sigstore bundles that carry only a public-key hint (no
//! transparency-log entry, no timestamp), the format sigstore-verify refuses outright and
//! cosign 3 accepts with `--insecure-ignore-tlog`.
//!
//! Without the folder the tests print a notice and pass.

mod shared;

use std::path::{Path, PathBuf};
use std::process::Command;

use cri_guard::verify::cosign::bundle::{
    self, Artifact, BundleExpect, BundleFailure, SIGN_PREDICATE_TYPE,
};
use cri_guard::verify::cosign::{Authority, PublicKey, Transparency};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");
/// The image every sample signs (its manifest digest).
const IMAGE: &str = "sha256:1e4d730332095d38037c0da185cd8bbfc8bf3a130602fd952d59037baad6ae1a";
const OTHER: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
const SPDX: &str = "https://spdx.dev/Document";

fn samples() -> Option<PathBuf> {
    let dir = shared::dir("reference/cosign3/samples");
    if dir.is_none() {
        eprintln!(
            "notice: shared/reference/cosign3/samples is absent; cosign 3 sample tests skipped"
        );
    }
    dir
}

fn key(dir: &Path) -> Authority {
    let pem = std::fs::read(dir.join("cosign.pub")).unwrap();
    Authority::Key(PublicKey::from_pem("cosign.pub", &pem).unwrap())
}

/// The new-format bundles of the three registries: (registry dir, kind, bytes).
fn bundles(dir: &Path) -> Vec<(String, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for registry in ["5500-new", "5501-new", "5502-new"] {
        for kind in ["sign", "attest"] {
            let file = dir.join(registry).join(format!("{kind}-bundle.layer0.raw"));
            out.push((registry.to_owned(), kind, std::fs::read(file).unwrap()));
        }
    }
    out
}

fn check(
    json: &[u8],
    authority: &Authority,
    trust: &Transparency,
    digest: &str,
    predicate_type: Option<&str>,
) -> Result<bundle::VerifiedBundle, BundleFailure> {
    bundle::verify_bundle(
        json,
        authority,
        trust,
        &BundleExpect {
            artifact: Artifact::Digest(digest),
            predicate_type,
        },
    )
}

/// Every sample verifies with cosign.pub and no trust material: `cosign sign` as a
/// `sign/v1` statement about the image, `cosign attest --type spdxjson` as an SPDX statement
/// about it; the bundle's key hint is the SHA-256 of the key.
#[test]
fn key_signed_bundles_verify() {
    let Some(dir) = samples() else { return };
    let authority = key(&dir);
    let Authority::Key(k) = &authority else {
        unreachable!()
    };
    for (registry, kind, json) in bundles(&dir) {
        let want = if kind == "sign" {
            SIGN_PREDICATE_TYPE
        } else {
            SPDX
        };
        let v = check(&json, &authority, &Transparency::none(), IMAGE, Some(want))
            .unwrap_or_else(|e| panic!("{registry} {kind}: {e}"));
        let st = v.statement.expect("a statement");
        assert_eq!(st.predicate_type, want, "{registry} {kind}");
        assert!(st.names_digest(IMAGE));
        assert!(!v.tlog && v.timestamps == 0 && v.identity.is_none());
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            doc["verificationMaterial"]["publicKey"]["hint"],
            bundle::key_hint(k).as_str(),
            "{registry} {kind}"
        );
    }
}

/// What must not pass: another key, another image, a signature bundle where an attestation is
/// expected (and the reverse), a re-serialized payload, and an attestor that requires a
/// transparency-log entry or timestamps (the samples have none).
#[test]
fn key_signed_bundle_negatives() {
    let Some(dir) = samples() else { return };
    let authority = key(&dir);
    let none = Transparency::none();
    let (_, _, sign) = &bundles(&dir)[0];
    let (_, _, attest) = &bundles(&dir)[1];

    // Another P-256 key (the cosign vectors' key).
    if let Some(pem) = shared::dir("testdata/cosign-real/keys/cosign.pub") {
        let other = PublicKey::from_pem("other", &std::fs::read(pem).unwrap()).unwrap();
        let err = check(sign, &Authority::Key(other), &none, IMAGE, None).unwrap_err();
        assert!(matches!(err, BundleFailure::Signature { .. }), "{err}");
        assert!(err.to_string().contains("key other"), "{err}");
    }
    let err = check(sign, &authority, &none, OTHER, None).unwrap_err();
    assert!(matches!(err, BundleFailure::Subject { .. }), "{err}");
    assert!(err.to_string().contains(&OTHER[7..]), "{err}");

    let err = check(sign, &authority, &none, IMAGE, Some(SPDX)).unwrap_err();
    assert_eq!(
        err,
        BundleFailure::PredicateType {
            found: SIGN_PREDICATE_TYPE.into(),
            expected: SPDX.into()
        }
    );
    let err = check(attest, &authority, &none, IMAGE, Some(SIGN_PREDICATE_TYPE)).unwrap_err();
    assert!(matches!(err, BundleFailure::PredicateType { .. }), "{err}");

    // The payload re-encoded (same statement, other bytes): the signature is over the bytes.
    let mut doc: serde_json::Value = serde_json::from_slice(sign).unwrap();
    let payload = doc["dsseEnvelope"]["payload"].as_str().unwrap().to_owned();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let statement: serde_json::Value =
        serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    doc["dsseEnvelope"]["payload"] = b64
        .encode(serde_json::to_vec_pretty(&statement).unwrap())
        .into();
    let err = check(doc.to_string().as_bytes(), &authority, &none, IMAGE, None).unwrap_err();
    assert!(matches!(err, BundleFailure::Signature { .. }), "{err}");

    let mut requires = Transparency::none();
    requires.require_tlog = true;
    let err = check(sign, &authority, &requires, IMAGE, None).unwrap_err();
    assert!(matches!(err, BundleFailure::Missing { .. }), "{err}");
    assert!(
        err.to_string().contains("no transparency-log entry"),
        "{err}"
    );
    let mut requires = Transparency::none();
    requires.min_timestamps = 1;
    let err = check(sign, &authority, &requires, IMAGE, None).unwrap_err();
    assert!(err.to_string().contains("minTimestamps"), "{err}");
}

/// `cri-guard verify-bundle --key` on a real cosign 3 bundle: verified for the image digest,
/// refused (exit 1, one line) for another digest.
#[test]
fn verify_bundle_command_on_cosign3_output() {
    let Some(dir) = samples() else { return };
    let run = |digest: &str| {
        Command::new(BIN)
            .arg("verify-bundle")
            .arg("--bundle")
            .arg(dir.join("5501-new/sign-bundle.layer0.raw"))
            .arg("--key")
            .arg(dir.join("cosign.pub"))
            .arg(digest)
            .output()
            .unwrap()
    };
    let ok = run(IMAGE);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains(SIGN_PREDICATE_TYPE), "{out}");
    let bad = run(OTHER);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
