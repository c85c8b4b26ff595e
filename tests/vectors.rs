//! Real cosign-made signatures (`../shared/testdata/cosign-real`, see its README) through
//! `verify::cosign::verify_layer`. Every key-based container-image signature case of
//! vectors.json runs, plus the other-attachment case; the expected result comes from the
//! file, never from this test. Skipped cases are listed with the reason.
//!
//! Without the folder (e.g. outside this workspace) the tests print a notice and pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use cri_guard::verify::cosign::{
    Authority, BUNDLE_ANNOTATION, Expected, IdentityMatch, PublicKey, RekorKeys,
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SigLayer, verify_layer,
};
use oci_client::Reference;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/testdata/cosign-real"
);

/// The vectors folder and its cases, or `None` (with a notice) when it is absent.
fn cases() -> Option<(PathBuf, Vec<Value>)> {
    let dir = PathBuf::from(DIR);
    let Ok(text) = std::fs::read_to_string(dir.join("vectors.json")) else {
        eprintln!("notice: {DIR}/vectors.json is absent; cosign vector tests skipped");
        return None;
    };
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
            "identity {other}: certificate-based, not key-based"
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
