//! Real cosign attestations (`shared/testdata/cosign-real`, see its README) through
//! `verify::cosign::attest` (blob envelopes) and `verify::cosign::bundle` (the Sigstore bundle
//! v0.3 of a keyless `cosign attest`). Every attestation case of vectors.json runs (the blob
//! attestations, the bundle and the NEG-attestation-* pairings); the expected result is read
//! from the file, never written here.
//!
//! Without the folder (e.g. outside this workspace) the tests print a notice and pass.

mod shared;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use cri_guard::verify::cosign::bundle::{self, Artifact, BundleExpect, BundleFailure};
use cri_guard::verify::cosign::conditions::predicate_type;
use cri_guard::verify::cosign::intoto::{
    AttestationFailure, Envelope, IN_TOTO_PAYLOAD_TYPE, Statement, pae,
};
use cri_guard::verify::cosign::tag::attestation::verify_blob_envelope;
use cri_guard::verify::cosign::{
    Authority, CertIdentity, Expected, Failure, IdentityMatch, Matcher, PublicKey, RootBuilder,
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SigLayer, Transparency, TrustedRoot,
    verify_layer,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The vectors folder and its attestation cases, or `None` (with a notice) when absent.
fn cases() -> Option<(PathBuf, Vec<Value>)> {
    let Some(dir) = shared::dir("testdata/cosign-real") else {
        eprintln!(
            "notice: shared/testdata/cosign-real is absent; attestation vector tests skipped"
        );
        return None;
    };
    let text = std::fs::read_to_string(dir.join("vectors.json")).expect("vectors.json");
    let v: Value = serde_json::from_str(&text).expect("vectors.json is JSON");
    let cases = v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| s(c, "name").is_some_and(|n| n.contains("attestation")))
        .cloned()
        .collect();
    Some((dir, cases))
}

fn s<'a>(case: &'a Value, field: &str) -> Option<&'a str> {
    case.get(field).and_then(Value::as_str)
}

fn name(case: &Value) -> &str {
    s(case, "name").expect("case name")
}

fn expected_verified(case: &Value) -> bool {
    match s(case, "expected") {
        Some("verified") => true,
        Some("rejected") => false,
        other => panic!("{}: expected is {other:?}", name(case)),
    }
}

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The case's trusted root (cases that name none use the one the README names).
fn trusted_root(dir: &Path, case: &Value) -> TrustedRoot {
    let file = s(case, "trusted_root_file").unwrap_or("trust/trusted_root_pgi.json");
    TrustedRoot::from_json(file, &read(dir, file)).expect("trusted root")
}

/// The transparency material of the case's trusted root (Fulcio CAs, Rekor log, CT logs),
/// with the transparency log required.
fn transparency(dir: &Path, case: &Value) -> Transparency {
    Transparency::new("trusted root", trusted_root(dir, case).sigstore(), true, 0)
        .expect("transparency")
}

fn verify(
    bundle: &Value,
    authority: &Authority,
    trust: &Transparency,
    digest: &str,
) -> Result<bundle::VerifiedBundle, BundleFailure> {
    bundle::verify_bundle(
        bundle.to_string().as_bytes(),
        authority,
        trust,
        &BundleExpect {
            artifact: Artifact::Digest(digest),
            predicate_type: None,
        },
    )
}

/// The digest the case checks the attestation against: the image under test, if named,
/// otherwise the claimed one.
fn digest_under_test(case: &Value) -> &str {
    s(case, "image_digest_under_test")
        .or_else(|| s(case, "claimed_digest"))
        .expect("a digest")
}

/// Blob attestations (`cosign attest-blob`, key-based, no tlog): every case with a
/// `blob_file` gives the result vectors.json expects.
#[test]
fn blob_attestation_vectors() {
    let Some((dir, cases)) = cases() else { return };
    let mut ran = 0;
    for case in cases.iter().filter(|c| s(c, "blob_file").is_some()) {
        let n = name(case);
        let envelope = read(&dir, s(case, "payload_file").expect("payload_file"));
        // The signature file is the same envelope, base64-encoded.
        let sig_file = read(&dir, s(case, "signature_file").expect("signature_file"));
        let decoded = b64()
            .decode(String::from_utf8(sig_file).unwrap().trim())
            .unwrap();
        assert_eq!(decoded, envelope, "{n}: signature_file is the envelope");
        let key_file = s(case, "public_key_file").expect("public_key_file");
        let key = PublicKey::from_pem(key_file, &read(&dir, key_file)).expect("key");
        let blob = read(&dir, s(case, "blob_file").unwrap());
        let result = verify_blob_envelope(&envelope, &Authority::Key(key), &sha256_hex(&blob));
        println!("{n}: {result:?}");
        assert_eq!(result.is_ok(), expected_verified(case), "{n}: {result:?}");
        match (n, &result) {
            (_, Ok(st)) => {
                assert_eq!(st.predicate_type, "https://slsa.dev/provenance/v0.2", "{n}");
                let claimed = s(case, "claimed_digest").unwrap();
                assert!(st.names_digest(claimed), "{n}");
            }
            ("NEG-blob-attestation-wrong-key", Err(e)) => {
                assert!(
                    matches!(e, AttestationFailure::BadSignature { .. }),
                    "{n}: {e}"
                )
            }
            (_, Err(e)) => assert!(
                matches!(e, AttestationFailure::SubjectMismatch { .. }),
                "{n}: a validly signed envelope about another blob: {e}"
            ),
        }
        ran += 1;
    }
    assert_eq!(ran, 5, "blob attestation cases");
}

/// The bundle cases: vectors.json's sigstore bundle files (all cases share one real bundle).
fn bundle_cases(cases: &[Value]) -> Vec<&Value> {
    cases
        .iter()
        .filter(|c| s(c, "bundle_file").is_some())
        .collect()
}

fn bundle_json(dir: &Path, case: &Value) -> Value {
    serde_json::from_slice(&read(dir, s(case, "bundle_file").unwrap())).expect("bundle JSON")
}

/// The transparency-log side of every bundle case verifies with the case's trusted root
/// (SET, RFC 6962 inclusion proof up to the root, signed checkpoint, entry bound to this
/// envelope), at the integrated time the case states; tampering with each part is refused
/// with a message naming that part.
#[test]
fn attestation_bundle_log_checks() {
    let Some((dir, cases)) = cases() else { return };
    let bundles = bundle_cases(&cases);
    assert_eq!(bundles.len(), 4, "bundle attestation cases");
    let case = bundles
        .iter()
        .find(|c| name(c) == "oci-attestation-bundle-v0.3")
        .expect("the valid bundle case");
    let good = bundle_json(&dir, case);
    let authority = keyless_authority(&dir, case);
    let trust = transparency(&dir, case);
    let digest = s(case, "claimed_digest").unwrap();
    let v = verify(&good, &authority, &trust, digest).expect("the real bundle verifies");
    assert!(v.tlog);
    let time = s(case, "verification_time").unwrap_or_default();
    assert!(
        time.contains(&format!("integratedTime {}", v.signed_at.unwrap())),
        "{time}"
    );

    let entry = "/verificationMaterial/tlogEntries/0";
    let run = |b: &Value| verify(b, &authority, &trust, digest).unwrap_err();
    let mut b = good.clone();
    let hash = b
        .pointer_mut(&format!("{entry}/inclusionProof/hashes/3"))
        .unwrap();
    *hash = b64().encode([0u8; 32]).into();
    let err = run(&b);
    assert!(matches!(err, BundleFailure::Log { .. }), "{err}");
    assert!(err.to_string().contains("inclusion proof"), "{err}");

    let mut b = good.clone();
    let root = b
        .pointer_mut(&format!("{entry}/inclusionProof/rootHash"))
        .unwrap();
    *root = b64().encode([1u8; 32]).into();
    let err = run(&b);
    assert!(err.to_string().contains("root hash"), "{err}");

    // A checkpoint for another tree size: its signature no longer verifies.
    let mut b = good.clone();
    let cp = b
        .pointer_mut(&format!("{entry}/inclusionProof/checkpoint/envelope"))
        .unwrap();
    *cp = cp
        .as_str()
        .unwrap()
        .replacen("\n53604735\n", "\n53604736\n", 1)
        .into();
    let err = run(&b);
    assert!(err.to_string().contains("checkpoint"), "{err}");

    // A moved integrated time (what sigstore 0.15's bundle verifier accepts): the SET fails.
    let mut b = good.clone();
    *b.pointer_mut(&format!("{entry}/integratedTime")).unwrap() = "1740770000".into();
    let err = run(&b);
    assert!(matches!(err, BundleFailure::Log { .. }), "{err}");
    assert!(err.to_string().contains("inclusion promise"), "{err}");

    // The SET and checkpoint are the log's: with cosign.pub as the only Rekor key, the entry
    // is from an unknown log.
    let cosign = PublicKey::from_pem("cosign.pub", &read(&dir, "keys/cosign.pub")).unwrap();
    let mut only_cosign = RootBuilder::default();
    only_cosign.rekor_key("cosign.pub", &cosign);
    let mut doc: Value =
        serde_json::from_slice(&read(&dir, "trust/trusted_root_pgi.json")).unwrap();
    doc["tlogs"] = serde_json::to_value(only_cosign.build().unwrap()).unwrap()["tlogs"].clone();
    let stranger = TrustedRoot::from_json("stranger", doc.to_string().as_bytes()).unwrap();
    let stranger = Transparency::new("stranger", stranger.sigstore(), true, 0).unwrap();
    let err = verify(&good, &authority, &stranger, digest).unwrap_err();
    assert!(matches!(err, BundleFailure::Log { .. }), "{err}");
}

/// The DER SubjectPublicKeyInfo of a certificate (a minimal DER walk, enough for the test).
fn spki_of_certificate(cert: &[u8]) -> Vec<u8> {
    /// One TLV: (tag, contents, whole encoding, rest).
    fn tlv(input: &[u8]) -> (u8, &[u8], &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = match input[1] {
            l if l < 0x80 => (usize::from(l), 2),
            0x81 => (usize::from(input[2]), 3),
            0x82 => (usize::from(input[2]) << 8 | usize::from(input[3]), 4),
            l => panic!("length form {l:#x}"),
        };
        (
            tag,
            &input[header..header + len],
            &input[..header + len],
            &input[header + len..],
        )
    }
    let (_, certificate, _, _) = tlv(cert);
    let (_, tbs, _, _) = tlv(certificate);
    let mut rest = tbs;
    let (tag, _, _, after) = tlv(rest);
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest).3;
    }
    tlv(rest).2.to_vec()
}

/// The Fulcio leaf of the v0.3 bundle and its public key (taken from the certificate without
/// verifying it: only to show which bytes its signature is over).
fn bundle_leaf_key(bundle: &Value) -> PublicKey {
    let raw = bundle["verificationMaterial"]["certificate"]["rawBytes"]
        .as_str()
        .expect("certificate.rawBytes");
    let der = b64().decode(raw).unwrap();
    PublicKey::from_spki_der("fulcio leaf", &spki_of_certificate(&der)).expect("leaf key")
}

/// A simple-signing layer carrying `payload` and `sig`: `verify_layer` checks the signature
/// over exactly these bytes, so it is a public way to ask "is this a signature over X".
fn signature_over(payload: &[u8], sig: &[u8], key: &PublicKey) -> Result<(), Failure> {
    let layer = SigLayer {
        media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
        payload: payload.to_vec(),
        annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), b64().encode(sig))]),
    };
    let reference: oci_client::Reference = "example.com/x".parse().unwrap();
    let expected = Expected {
        digest: "sha256:00",
        reference: &reference,
        identity: &IdentityMatch::Any,
    };
    match verify_layer(&layer, &Authority::Key(key.clone()), &expected, None) {
        // The signature verified; the payload is not a simple-signing payload.
        Err(Failure::BadPayload { .. }) => Ok(()),
        Err(e) => Err(e),
        Ok(_) => panic!("a DSSE payload is not a simple-signing payload"),
    }
}

/// NEG-attestation-not-PAE: the real DSSE signature verifies over PAE(payloadType, payload)
/// with the leaf key, and not over the raw payload nor over a PAE with another payloadType;
/// a bundle whose payloadType is changed is refused at the signature.
#[test]
fn attestation_not_pae() {
    let Some((dir, cases)) = cases() else { return };
    let case = cases
        .iter()
        .find(|c| name(c) == "NEG-attestation-not-PAE")
        .expect("NEG-attestation-not-PAE");
    let bundle = bundle_json(&dir, case);
    let key = bundle_leaf_key(&bundle);
    let envelope = &bundle["dsseEnvelope"];
    let payload_type = envelope["payloadType"].as_str().unwrap();
    let payload = b64().decode(envelope["payload"].as_str().unwrap()).unwrap();
    let sig = b64()
        .decode(envelope["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();

    // Positive control: over PAE the signature is good.
    assert_eq!(
        signature_over(&pae(payload_type, &payload), &sig, &key),
        Ok(())
    );
    let raw = signature_over(&payload, &sig, &key);
    let other_type = signature_over(&pae("application/json", &payload), &sig, &key);
    println!("raw payload: {raw:?}; PAE with application/json: {other_type:?}");
    let verified = |r: &Result<(), Failure>| r.is_ok();
    assert_eq!(verified(&raw), expected_verified(case));
    assert_eq!(verified(&other_type), expected_verified(case));
    assert!(matches!(raw, Err(Failure::BadSignature { .. })));

    // Through the bundle verifier (keyless, as cosign verifies it): unchanged it verifies; a
    // changed payloadType is refused (sigstore-verify binds only in-toto payloads, before the
    // signature), and so is the same envelope checked by a plain key: the key of the leaf is
    // not the attestor, the certificate's CA is.
    let authority = keyless_authority(&dir, case);
    let trust = transparency(&dir, case);
    let digest = s(case, "claimed_digest").unwrap();
    assert!(verify(&bundle, &authority, &trust, digest).is_ok());
    let mut tampered = bundle.clone();
    tampered["dsseEnvelope"]["payloadType"] = "application/json".into();
    let err = verify(&tampered, &authority, &trust, digest).unwrap_err();
    assert!(
        err.to_string()
            .contains("payload type \"application/json\""),
        "{err}"
    );
    let err = verify(&bundle, &Authority::Key(key), &trust, digest).unwrap_err();
    assert!(matches!(err, BundleFailure::WrongMaterial { .. }), "{err}");
    // The envelope as parsed by the public API agrees.
    let parsed = Envelope::parse(envelope.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.payload, payload);
    assert_eq!(parsed.signatures.len(), 1);
}

/// The statement of every bundle case names the case's claimed digest, subject name and
/// predicate type, and not the digest of the other image (NEG-attestation-other-image).
#[test]
fn attestation_bundle_statements() {
    let Some((dir, cases)) = cases() else { return };
    for case in bundle_cases(&cases) {
        let n = name(case);
        let bundle = bundle_json(&dir, case);
        let payload = b64()
            .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            bundle["dsseEnvelope"]["payloadType"], IN_TOTO_PAYLOAD_TYPE,
            "{n}"
        );
        let st = Statement::parse(&payload).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert!(st.names_digest(s(case, "claimed_digest").unwrap()), "{n}");
        if let Some(pt) = s(case, "predicate_type") {
            assert_eq!(st.predicate_type, pt, "{n}");
            assert_eq!(predicate_type("custom"), pt, "cosign's default --type");
        }
        if let Some(subject) = s(case, "subject_name") {
            assert_eq!(st.subjects[0].name, subject, "{n}");
        }
        if let Some(other) = s(case, "image_digest_under_test") {
            // The vectors only name another image for a case that must be rejected.
            assert!(!expected_verified(case), "{n}");
            assert!(!st.names_digest(other), "{n}");
        }
    }
}

/// The keyless attestor of a case: every CA of its trusted root (through
/// `TrustedRoot::cert_authority`), the identity (subject regexp, or the exact SAN email) and
/// the exact issuer.
fn keyless_authority(dir: &Path, case: &Value) -> Authority {
    let id = &case["identity"];
    let subject = match s(id, "required_subject_regexp") {
        Some(re) => Matcher::Regex(regex::Regex::new(re).unwrap()),
        None => Matcher::Exact(s(id, "san_email").expect("san_email").to_owned()),
    };
    let identity = CertIdentity {
        subject: Some(subject),
        issuer: s(id, "oidc_issuer").map(|i| Matcher::Exact(i.to_owned())),
    };
    Authority::Certificates(
        trusted_root(dir, case)
            .cert_authority("fulcio", identity)
            .expect("authority"),
    )
}

/// Every bundle case is verified end to end with `bundle::verify_bundle` (the certificate
/// chain to the trusted root at the integrated time, SCT, identity, SET, inclusion proof,
/// checkpoint, dsse entry binding, PAE signature, subject) against the case's trusted root,
/// identity and digest, and must give the result vectors.json expects; a rejection must have
/// the expected cause, so that a negative cannot pass for the wrong reason.
#[test]
fn attestation_bundle_vectors_keyless() {
    let Some((dir, cases)) = cases() else { return };
    let mut wrong = Vec::new();
    for case in bundle_cases(&cases) {
        let n = name(case);
        let mut bundle = bundle_json(&dir, case);
        if n == "NEG-attestation-not-PAE" {
            // The signature checked with another payloadType in the PAE.
            bundle["dsseEnvelope"]["payloadType"] = "application/json".into();
        }
        let result = verify(
            &bundle,
            &keyless_authority(&dir, case),
            &transparency(&dir, case),
            digest_under_test(case),
        );
        println!("{n}: {result:?}");
        let cause_ok = match (n, &result) {
            (_, Ok(v)) => {
                v.tlog
                    && v.signed_at == Some(1740770291)
                    && v.statement.as_ref().map(|st| st.predicate_type.as_str())
                        == s(case, "predicate_type")
                    && v.identity
                        .as_deref()
                        .unwrap_or_default()
                        .contains(s(&case["identity"], "san_email").unwrap_or("?"))
            }
            ("NEG-attestation-wrong-identity", Err(e)) => {
                matches!(e, BundleFailure::Certificate { .. })
                    && e.to_string().contains("does not match subject")
            }
            ("NEG-attestation-other-image", Err(e)) => matches!(e, BundleFailure::Subject { .. }),
            ("NEG-attestation-not-PAE", Err(e)) => e.to_string().contains("application/json"),
            (_, Err(_)) => false,
        };
        if result.is_ok() != expected_verified(case) || !cause_ok {
            wrong.push(format!(
                "{n}: expected {}, got {result:?}",
                s(case, "expected").unwrap()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "keyless bundle cases:\n{}",
        wrong.join("\n")
    );
}

/// Every attestation case of vectors.json is run by one of the tests above.
#[test]
fn every_attestation_case_is_covered() {
    let Some((_, cases)) = cases() else { return };
    let names: Vec<&str> = cases.iter().map(name).collect();
    for n in &names {
        let covered = n.contains("blob-attestation")
            || [
                "oci-attestation-bundle-v0.3",
                "NEG-attestation-wrong-identity",
                "NEG-attestation-other-image",
                "NEG-attestation-not-PAE",
            ]
            .contains(n);
        assert!(covered, "attestation case {n} is not run by any test");
    }
    assert_eq!(names.len(), 9, "{names:?}");
}
