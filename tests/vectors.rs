//! Real cosign-made signatures (`../shared/testdata/cosign-real`, see its README) through
//! `verify::cosign::verify_layer`. Every key-based container-image signature case of
//! vectors.json runs (plus the other-attachment case), and every certificate-based one
//! (identity `fulcio` or `x509-pki` with a payload) with an `Authority::Certificates` built
//! from the case's trust files; the expected result comes from the file, never from this
//! test. Skipped cases are listed with the reason.
//!
//! Without the folder (e.g. outside this workspace) the tests print a notice and pass.

mod shared;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use cri_guard::verify::cosign::{
    Authority, BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, CertAuthority,
    CertIdentity, Expected, IdentityMatch, Matcher, PublicKey, RekorKeys, SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE, SigLayer, TrustedRoot, Verified, verify_layer,
};
use oci_client::Reference;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The vectors folder and its cases, or `None` (with a notice) when it is absent.
fn cases() -> Option<(PathBuf, Vec<Value>)> {
    let Some(dir) = shared::dir("testdata/cosign-real") else {
        eprintln!("notice: shared/testdata/cosign-real is absent; cosign vector tests skipped");
        return None;
    };
    let text = std::fs::read_to_string(dir.join("vectors.json")).expect("vectors.json");
    let v: Value = serde_json::from_str(&text).expect("vectors.json is JSON");
    let cases = v["cases"].as_array().expect("cases").clone();
    Some((dir, cases))
}

fn s<'a>(case: &'a Value, field: &str) -> Option<&'a str> {
    case.get(field).and_then(Value::as_str)
}

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn read_string(dir: &Path, rel: &str) -> String {
    String::from_utf8(read(dir, rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn sha256_digest(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Whether a reference's text carries a tag (the last path component has a `:`).
fn has_tag(reference: &str) -> bool {
    let name = reference.split('@').next().unwrap_or(reference);
    name.rsplit('/').next().unwrap_or(name).contains(':')
}

/// Python's `json.dumps` default separators, `", "` and `": "`.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Applies a case's `payload_transform` to the payload bytes.
fn transform(how: &str, payload: &[u8]) -> Vec<u8> {
    assert!(
        how.contains("re-serialize") && how.contains("', '") && how.contains("': '"),
        "unknown payload_transform {how:?}"
    );
    let value: Value = serde_json::from_slice(payload).expect("payload is JSON");
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSeparators);
    serde::Serialize::serialize(&value, &mut ser).expect("serialize");
    assert_ne!(out, payload, "the transform must change the bytes");
    out
}

/// The layer a registry would serve for this case, with its certificate and chain
/// annotations when the case has them.
fn cert_layer(dir: &Path, case: &Value) -> SigLayer {
    let mut layer = layer(dir, case);
    if let Some(f) = s(case, "certificate_file") {
        layer
            .annotations
            .insert(CERTIFICATE_ANNOTATION.to_owned(), read_string(dir, f));
    }
    if let Some(f) = s(case, "chain_file") {
        layer
            .annotations
            .insert(CHAIN_ANNOTATION.to_owned(), read_string(dir, f));
    }
    layer
}

/// The identity a certificate case requires: `required_*` overrides the certificate's own
/// `san_email` / `oidc_issuer`.
fn cert_identity(case: &Value) -> CertIdentity {
    let identity = &case["identity"];
    let pick = |required: &str, own: &str| {
        s(identity, required)
            .or(s(identity, own))
            .map(|v| Matcher::Exact(v.to_owned()))
    };
    CertIdentity {
        subject: pick("required_san_email", "san_email"),
        issuer: pick("required_oidc_issuer", "oidc_issuer"),
    }
}

/// The certificate authority a case configures: Fulcio's root (`fulcio_root_file`), or a
/// PKI's roots and intermediates (`ca_roots_file`, `ca_intermediates_file`).
fn cert_authority(dir: &Path, case: &Value) -> CertAuthority {
    let name = s(case, "name").expect("name");
    let roots = s(case, "fulcio_root_file")
        .or(s(case, "ca_roots_file"))
        .unwrap_or_else(|| panic!("{name}: no root file"));
    let roots_pem = read(dir, roots);
    let intermediates = s(case, "ca_intermediates_file").map(|f| (f, read(dir, f)));
    CertAuthority::from_named_pems(
        name,
        (roots, &roots_pem),
        intermediates.as_ref().map(|(f, pem)| (*f, pem.as_slice())),
        cert_identity(case),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The `Expected` of a case: its image digest and reference, and the docker-reference match
/// its claimed reference calls for.
fn expectation(dir: &Path, case: &Value) -> (String, Reference, IdentityMatch) {
    let digest = image_digest(dir, case);
    let claimed = s(case, "claimed_docker_reference");
    let image = s(case, "image_reference_under_test")
        .or(claimed)
        .unwrap_or("example.invalid/no-reference");
    let reference: Reference = image.parse().expect("image reference");
    let identity = if claimed.is_some_and(has_tag) {
        IdentityMatch::Exact
    } else {
        IdentityMatch::Repository
    };
    (digest, reference, identity)
}

fn rekor_of(dir: &Path, case: &Value) -> Option<RekorKeys> {
    s(case, "rekor_pub_key_file").map(|f| {
        let pem = read(dir, f);
        RekorKeys::from_named_pems([(f, pem.as_slice())]).expect("Rekor key")
    })
}

/// Runs one certificate case with `authority` and `rekor`; returns whether the outcome is the
/// `expected` one, after printing it.
fn run_cert_case(
    label: &str,
    dir: &Path,
    case: &Value,
    authority: CertAuthority,
    rekor: Option<&RekorKeys>,
    expected: &str,
) -> bool {
    let layer = cert_layer(dir, case);
    let (digest, reference, identity) = expectation(dir, case);
    let got = verify_layer(
        &layer,
        &Authority::Certificates(authority),
        &Expected {
            digest: &digest,
            reference: &reference,
            identity: &identity,
        },
        rekor,
    );
    let ok = match expected {
        "verified" => got.is_ok(),
        "rejected" => got.is_err(),
        other => panic!("{label}: unknown expected {other:?}"),
    };
    let shown = match &got {
        Ok(Verified {
            key,
            tlog,
            identity,
        }) => format!(
            "verified by {key} (tlog: {tlog}), {}",
            identity.as_deref().unwrap_or("-")
        ),
        Err(f) => format!("rejected: {f}"),
    };
    println!(
        "{} {label:48} expected {expected:8}: {shown}",
        if ok { "ok  " } else { "FAIL" }
    );
    if let Ok(v) = &got {
        assert_eq!(v.tlog, rekor.is_some(), "{label}: tlog flag");
        assert!(v.identity.is_some(), "{label}: certificate identity");
    }
    ok
}

/// Every certificate-based (Fulcio keyless, BYO-PKI) container-image case of vectors.json comes
/// out as the file says, with trust from the case's own files; a case's positive variant
/// (`note_positive_variant`: trusting the Fulcio intermediate + root bundle instead of the root
/// alone) verifies.
#[test]
fn certificate_vectors() {
    let Some((dir, cases)) = cases() else { return };
    let v: Value =
        serde_json::from_slice(&read(&dir, "vectors.json")).expect("vectors.json is JSON");
    let mut wrong = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let name = s(case, "name").expect("name");
        let kind = s(&case["identity"], "type");
        if !matches!(kind, Some("fulcio" | "x509-pki")) || s(case, "payload_file").is_none() {
            continue;
        }
        let expected = s(case, "expected").expect("expected");
        let rekor = rekor_of(&dir, case);
        ran += 1;
        if !run_cert_case(
            name,
            &dir,
            case,
            cert_authority(&dir, case),
            rekor.as_ref(),
            expected,
        ) {
            wrong.push(name.to_owned());
        }
        if let Some(note) = s(case, "note_positive_variant") {
            // The note says which trust makes the same input verify: the Fulcio bundle
            // (intermediate + root) the file lists as `trust.fulcio_intermediate_and_root`.
            assert!(
                note.contains("fulcio-chain.pem") && note.contains("verify"),
                "{name}: unexpected positive-variant note {note:?}"
            );
            let bundle = s(&v["trust"], "fulcio_intermediate_and_root").expect("trust bundle");
            let authority = CertAuthority::from_bundle_pem(
                name,
                bundle,
                &read(&dir, bundle),
                cert_identity(case),
            )
            .expect("bundle authority");
            ran += 1;
            let label = format!("{name} (trusting {bundle})");
            if !run_cert_case(&label, &dir, case, authority, rekor.as_ref(), "verified") {
                wrong.push(label);
            }
        }
    }
    println!("{ran} certificate runs");
    assert!(ran >= 10, "only {ran} certificate runs");
    assert!(wrong.is_empty(), "cases with the wrong result: {wrong:?}");
}

/// The Fulcio cases whose `verification_time` is the SET's integratedTime need that time: the
/// same inputs without Rekor (checked at the current time, as cosign with
/// `--insecure-ignore-tlog`) are refused because the 10-minute certificate has expired.
#[test]
fn certificate_vectors_need_the_set_time() {
    let Some((dir, cases)) = cases() else { return };
    let mut ran = 0;
    for case in &cases {
        let name = s(case, "name").expect("name");
        let Some(time) = s(case, "verification_time") else {
            continue;
        };
        if !time.starts_with("SET integratedTime")
            || s(case, "expected") != Some("verified")
            || s(case, "payload_file").is_none()
        {
            continue;
        }
        let layer = cert_layer(&dir, case);
        let (digest, reference, identity) = expectation(&dir, case);
        let got = verify_layer(
            &layer,
            &Authority::Certificates(cert_authority(&dir, case)),
            &Expected {
                digest: &digest,
                reference: &reference,
                identity: &identity,
            },
            None,
        );
        println!("{name:42} without Rekor: {got:?}");
        let msg = got.expect_err("verified without the SET time").to_string();
        assert!(
            msg.contains("expired at") && msg.contains("checked at current time"),
            "{name}: {msg}"
        );
        ran += 1;
    }
    assert!(ran >= 2, "only {ran} cases");
}

/// With trust taken from the sigstore trusted root (`trust.sigstore_trusted_root`: Fulcio CAs
/// and the Rekor key) instead of separate files, the Fulcio cases the file expects to verify
/// still verify, and those rejected for their identity (`required_san_email`,
/// `required_oidc_issuer`) are still rejected. Cases rejected for missing trust material
/// (chain, Rekor key) do not apply: the trusted root supplies that material.
#[test]
fn certificate_vectors_with_trusted_root() {
    let Some((dir, cases)) = cases() else { return };
    let v: Value =
        serde_json::from_slice(&read(&dir, "vectors.json")).expect("vectors.json is JSON");
    let file = s(&v["trust"], "sigstore_trusted_root").expect("trusted root");
    let root = TrustedRoot::from_json(file, &read(&dir, file)).expect("trusted root loads");
    let expected_log = s(&v["trust"], "rekor_log_id").expect("rekor_log_id");
    assert_eq!(
        root.rekor_keys().log_ids().collect::<Vec<_>>(),
        [expected_log],
        "the trusted root's Rekor key is the production key"
    );
    let mut wrong = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let name = s(case, "name").expect("name");
        let identity = &case["identity"];
        if s(identity, "type") != Some("fulcio") || s(case, "payload_file").is_none() {
            continue;
        }
        let expected = s(case, "expected").expect("expected");
        let identity_case = s(identity, "required_san_email").is_some()
            || s(identity, "required_oidc_issuer").is_some();
        if expected != "verified" && !identity_case {
            continue;
        }
        let authority = root
            .cert_authority(file, cert_identity(case))
            .expect("authority");
        ran += 1;
        let label = format!("{name} (trust from {file})");
        if !run_cert_case(
            &label,
            &dir,
            case,
            authority,
            Some(root.rekor_keys()),
            expected,
        ) {
            wrong.push(label);
        }
    }
    println!("{ran} cases with the trusted root");
    assert!(ran >= 3, "only {ran} runs");
    assert!(wrong.is_empty(), "cases with the wrong result: {wrong:?}");
}

/// The layer a registry would serve for this case.
fn layer(dir: &Path, case: &Value) -> SigLayer {
    let payload_file = s(case, "payload_file").expect("payload_file");
    let mut payload = read(dir, payload_file);
    if let Some(how) = s(case, "payload_transform") {
        payload = transform(how, &payload);
    }
    let layer_json = dir
        .join(payload_file)
        .parent()
        .expect("payload dir")
        .join("layer.json");
    let media_type = match std::fs::read(&layer_json) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes).expect("layer.json");
            v["mediaType"].as_str().expect("mediaType").to_owned()
        }
        Err(_) => SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
    };
    let mut annotations = BTreeMap::new();
    if let Some(f) = s(case, "signature_file") {
        annotations.insert(SIGNATURE_ANNOTATION.to_owned(), read_string(dir, f));
    }
    if let Some(f) = s(case, "bundle_file") {
        annotations.insert(BUNDLE_ANNOTATION.to_owned(), read_string(dir, f));
    }
    SigLayer {
        media_type,
        payload,
        annotations,
    }
}

/// The image digest under test: the case's override, else sha256 of its manifest, else the
/// claimed digest.
fn image_digest(dir: &Path, case: &Value) -> String {
    if let Some(d) = s(case, "image_digest_under_test") {
        return d.to_owned();
    }
    if let Some(m) = s(case, "manifest_file") {
        return sha256_digest(&read(dir, m));
    }
    s(case, "claimed_digest")
        .map(str::to_owned)
        // Only the other-attachment case has none; it is refused before any digest check.
        .unwrap_or_else(|| format!("sha256:{}", "0".repeat(64)))
}

/// Every key the case's identity allows (`identity.keys`, `identity.key`, `public_key_file`).
fn key_files(case: &Value) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    let identity = &case["identity"];
    if let Some(keys) = identity["keys"].as_array() {
        files.extend(keys.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    files.extend(s(identity, "key").map(str::to_owned));
    files.extend(s(case, "public_key_file").map(str::to_owned));
    files.sort();
    files.dedup();
    files
}

/// Why a case is not a key-based container-image signature case, if it is not.
fn skip_reason(case: &Value) -> Option<String> {
    if s(case, "blob_file").is_some() {
        return Some("DSSE blob attestation, not a container-image signature".into());
    }
    if s(case, "payload_file").is_none() {
        return Some("Sigstore bundle attestation, no simple-signing layer".into());
    }
    match s(&case["identity"], "type") {
        Some("public-key") => None,
        None if s(case, "public_key_file").is_some() => None,
        Some(other) => Some(format!(
            "identity {other}: certificate-based (see certificate_vectors)"
        )),
        None => Some("no identity and no key".into()),
    }
}

/// Every key-based container-image case of vectors.json comes out as the file says.
#[test]
fn cosign_vectors() {
    let Some((dir, cases)) = cases() else { return };
    let mut wrong = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let name = s(case, "name").expect("name");
        let expected = s(case, "expected").expect("expected");
        if let Some(why) = skip_reason(case) {
            println!("skip {name:42} {why}");
            continue;
        }
        ran += 1;
        let layer = layer(&dir, case);
        let digest = image_digest(&dir, case);
        let claimed = s(case, "claimed_docker_reference");
        let image = s(case, "image_reference_under_test")
            .or(claimed)
            .unwrap_or("example.invalid/no-reference");
        let reference: Reference = image.parse().expect("image reference");
        let identity = if claimed.is_some_and(has_tag) {
            IdentityMatch::Exact
        } else {
            IdentityMatch::Repository
        };
        let rekor = s(case, "rekor_pub_key_file").map(|f| {
            let pem = read(&dir, f);
            RekorKeys::from_named_pems([(f, pem.as_slice())]).expect("Rekor key")
        });
        let expect = Expected {
            digest: &digest,
            reference: &reference,
            identity: &identity,
        };
        let mut verified = None;
        let mut failures = Vec::new();
        for file in key_files(case) {
            let key = PublicKey::from_pem(&file, &read(&dir, &file)).expect("key");
            match verify_layer(&layer, &Authority::Key(key), &expect, rekor.as_ref()) {
                Ok(v) => {
                    assert_eq!(v.tlog, rekor.is_some(), "{name}: tlog flag");
                    verified.get_or_insert(v);
                }
                Err(f) => failures.push(f),
            }
        }
        let got = match (&verified, failures.iter().max_by_key(|f| f.specificity())) {
            (Some(v), _) => format!("verified by {} (tlog: {})", v.key, v.tlog),
            (None, Some(f)) => format!("rejected: {f}"),
            (None, None) => "rejected: no key".to_owned(),
        };
        let ok = match expected {
            "verified" => verified.is_some(),
            "rejected" => verified.is_none(),
            other => panic!("{name}: unknown expected {other:?}"),
        };
        println!(
            "{} {name:42} expected {expected:8} {identity:?}: {got}",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            wrong.push(name.to_owned());
        }
    }
    println!("{ran} of {} cases ran", cases.len());
    assert!(ran > 0, "no case ran");
    assert!(wrong.is_empty(), "cases with the wrong result: {wrong:?}");
}

/// One DER TLV split off a buffer: (whole TLV, tag, contents, rest).
type Tlv<'a> = (&'a [u8], u8, &'a [u8], &'a [u8]);

/// Splits one DER TLV off `buf`.
fn der_tlv(buf: &[u8]) -> Option<Tlv<'_>> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        let mut len = 0usize;
        for i in 0..n {
            len = len * 256 + usize::from(*buf.get(2 + i)?);
        }
        (len, 2 + n)
    };
    Some((
        buf.get(..header + len)?,
        tag,
        buf.get(header..header + len)?,
        buf.get(header + len..)?,
    ))
}

/// The DER SubjectPublicKeyInfo of a PEM certificate.
fn certificate_spki(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("certificate base64");
    let (_, _, cert, _) = der_tlv(&der).expect("Certificate");
    let (_, _, mut tbs, _) = der_tlv(cert).expect("TBSCertificate");
    // [0] version (optional), serial, signature, issuer, validity, subject, then the SPKI.
    if tbs.first() == Some(&0xa0) {
        tbs = der_tlv(tbs).expect("version").3;
    }
    for _ in 0..5 {
        tbs = der_tlv(tbs).expect("TBS field").3;
    }
    der_tlv(tbs).expect("SPKI").0.to_vec()
}

/// Signature-math compatibility on the certificate vectors that should verify: the leaf's own
/// key (RSA-4096 PKCS#1 v1.5 for pki-valid, P-256 for the Fulcio ones) verifies the layer's
/// signature, digest and identity. Chains, SANs and Rekor are not what this checks.
#[test]
fn certificate_vectors_leaf_key() {
    let Some((dir, cases)) = cases() else { return };
    let mut ran = 0;
    for case in &cases {
        let name = s(case, "name").expect("name");
        let (Some(cert), Some(_), Some("verified")) = (
            s(case, "certificate_file"),
            s(case, "payload_file"),
            s(case, "expected"),
        ) else {
            continue;
        };
        let key = PublicKey::from_spki_der(name, &certificate_spki(&read_string(&dir, cert)))
            .expect("leaf key");
        let mut layer = layer(&dir, case);
        layer.annotations.remove(BUNDLE_ANNOTATION);
        let digest = image_digest(&dir, case);
        let reference: Reference = s(case, "claimed_docker_reference")
            .expect("reference")
            .parse()
            .expect("reference");
        let got = verify_layer(
            &layer,
            &Authority::Key(key.clone()),
            &Expected {
                digest: &digest,
                reference: &reference,
                identity: &IdentityMatch::Repository,
            },
            None,
        );
        println!("{name:42} leaf key {}: {got:?}", key.algorithm());
        assert!(got.is_ok(), "{name}: {got:?}");
        ran += 1;
    }
    println!("{ran} certificate cases checked with their leaf key");
    assert!(ran > 0);
}
