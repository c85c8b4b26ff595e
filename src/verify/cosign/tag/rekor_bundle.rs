//! Offline check of the legacy Rekor bundle annotation (`dev.sigstore.cosign/bundle`) of a
//! tag-based signature or attestation layer.
//!
//! A bundle is `{"SignedEntryTimestamp", "Payload": {"body", "integratedTime", "logIndex",
//! "logID"}}`. Two things must hold, and sigstore 0.15 checks only the first (and keeps even
//! that `pub(crate)`: `Bundle::new_verified`):
//! 1. the SignedEntryTimestamp (SET) is the signature, by the Rekor key whose logID
//!    (hex sha256 of its DER SubjectPublicKeyInfo) is `Payload.logID`, over the canonical JSON
//!    of `Payload` (RFC 8785: keys sorted, no whitespace);
//! 2. the entry body is about *this* signature: a `hashedrekord` 0.0.1 (or `rekord` 0.0.1
//!    with an x509 key) whose data hash is sha256 of this payload, whose signature is this
//!    signature, and whose public key is this key, or for keyless/PKI signatures this very
//!    signing certificate (cosign uploads the certificate's PEM). Without 2, any genuine
//!    bundle copied from another entry passes (vector NEG-bundle-from-other-entry), and for
//!    certificates its integrated time, which decides whether the certificate was valid,
//!    could be borrowed from another entry.
//!
//! Entry kinds: `hashedrekord` 0.0.1 and `rekord` 0.0.1 for signatures (`check_bundle`);
//! for attestations (`bind_entry`; all three are checked against the envelope, a valid SET
//! over somebody else's entry proves nothing):
//! - `intoto` 0.0.1: `spec.content.hash` = sha256 of the envelope bytes as uploaded,
//!   `spec.content.payloadHash` = sha256 of the decoded payload, `spec.publicKey` =
//!   base64(PEM key or certificate). No signature: the envelope hash covers it.
//! - `intoto` 0.0.2: the same two hashes, `spec.content.envelope.payloadType`, and
//!   `spec.content.envelope.signatures[] {keyid?, sig, publicKey}` where `sig` is base64 of
//!   the envelope's *base64 text* of the signature (encoded twice) and `publicKey` base64(PEM).
//! - `dsse` 0.0.1: `spec.envelopeHash`, `spec.payloadHash`, `spec.signatures[] {signature,
//!   verifier}` with `signature` the envelope's base64 signature and `verifier` base64(PEM).
//!
//! The envelope hash is over the bytes the client uploaded. A legacy layer holds exactly those
//! bytes; the hash is also accepted over cosign's Go serialization
//! `{"payloadType":..,"payload":..,"signatures":[{"keyid":"","sig":..}]}`.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::Failure;
use crate::verify::cosign::intoto::{AttestationFailure, Envelope, EnvelopeSignature, dsse_base64};
use crate::verify::cosign::trust::keys::pem_blocks;
use crate::verify::cosign::{PublicKey, RekorKeys, decode_base64, hex, shown};

#[derive(Deserialize)]
struct Bundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: BundlePayload,
}

#[derive(Deserialize)]
struct BundlePayload {
    body: String,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logIndex")]
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    spec: Spec,
}

#[derive(Deserialize)]
struct Spec {
    data: Data,
    signature: SignatureSpec,
}

#[derive(Deserialize)]
struct Data {
    hash: Option<Hash>,
}

#[derive(Deserialize)]
struct Hash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
struct SignatureSpec {
    content: String,
    format: Option<String>,
    #[serde(rename = "publicKey")]
    public_key: KeySpec,
}

#[derive(Deserialize)]
struct KeySpec {
    content: String,
}

fn malformed(reason: impl Into<String>) -> Failure {
    Failure::BundleMalformed {
        reason: reason.into(),
    }
}

/// The bytes the SET signs: canonical JSON (RFC 8785) of the bundle payload. Built by hand:
/// four fixed keys in sorted order, serde_json's string escaping (the same as RFC 8785's for
/// every string), and integers, which RFC 8785 prints the same way below 2^53.
fn canonical_payload(p: &BundlePayload) -> Result<Vec<u8>, Failure> {
    let string = |s: &str| serde_json::to_string(s).map_err(|e| malformed(e.to_string()));
    Ok(format!(
        "{{\"body\":{},\"integratedTime\":{},\"logID\":{},\"logIndex\":{}}}",
        string(&p.body)?,
        p.integrated_time,
        string(&p.log_id)?,
        p.log_index
    )
    .into_bytes())
}

/// A Rekor entry whose SignedEntryTimestamp verified with a trusted log's key. Only its
/// log's signature is vouched for: whether the entry is about a given signature is the
/// caller's check on `body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The decoded entry body (JSON: `apiVersion`, `kind`, `spec`).
    pub body: Vec<u8>,
    /// When the log integrated the entry (Unix seconds): the trusted signing time.
    pub integrated_time: i64,
    /// The entry's index in the log.
    pub log_index: i64,
}

/// Parses a legacy bundle annotation and verifies its SET; see [`verify_set_parts`].
pub(crate) fn verify_set(raw: &str, rekor: &RekorKeys) -> Result<Entry, Failure> {
    let bundle: Bundle = serde_json::from_str(raw)
        .map_err(|e| malformed(format!("not a Rekor bundle: {}", shown(&e.to_string()))))?;
    verify_set_parts(&bundle.payload, &bundle.set, rekor)
}

fn verify_set_parts(p: &BundlePayload, set_b64: &str, rekor: &RekorKeys) -> Result<Entry, Failure> {
    let log_key = rekor
        .by_log_id(&p.log_id)
        .ok_or_else(|| Failure::UntrustedLog {
            log_id: shown(&p.log_id),
        })?;
    let set =
        decode_base64(set_b64).ok_or_else(|| malformed("SignedEntryTimestamp is not base64"))?;
    if !log_key.verifies(&set, &canonical_payload(p)?) {
        return Err(Failure::BadSet {
            log_id: shown(&p.log_id),
        });
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(p.body.as_bytes())
        .map_err(|_| malformed("entry body is not base64"))?;
    Ok(Entry {
        body,
        integrated_time: p.integrated_time,
        log_index: p.log_index,
    })
}

/// What the Rekor entry must name as the signer: the key a signature verified with, or the
/// signing certificate (DER) for keyless and PKI signatures, which cosign uploads as is.
#[derive(Clone, Copy)]
pub(super) enum EntrySigner<'a> {
    /// A public key: the entry must hold this key's `PUBLIC KEY` PEM.
    Key(&'a PublicKey),
    /// A certificate (DER): the entry must hold this certificate's PEM.
    Certificate(&'a [u8]),
}

/// Checks a bundle annotation against the payload, the raw signature and who signed it, and
/// returns the entry's integrated time (Unix seconds), the trusted signing time. Order: shape,
/// trusted log, SET, entry kind, then the three bindings.
pub(super) fn check_bundle(
    raw: &str,
    payload: &[u8],
    signature: &[u8],
    signer: EntrySigner<'_>,
    rekor: &RekorKeys,
) -> Result<i64, Failure> {
    let entry = verify_set(raw, rekor)?;
    let body: Body = serde_json::from_slice(&entry.body).map_err(|e| {
        malformed(format!(
            "entry body is not a Rekor entry: {}",
            shown(&e.to_string())
        ))
    })?;
    let supported = match (body.kind.as_str(), body.api_version.as_str()) {
        ("hashedrekord", "0.0.1") => true,
        ("rekord", "0.0.1") => body.spec.signature.format.as_deref() == Some("x509"),
        _ => false,
    };
    if !supported {
        return Err(Failure::UnsupportedEntry {
            kind: shown(&body.kind),
            version: shown(&body.api_version),
        });
    }
    let mismatch = |what: &'static str| Failure::BundleMismatch {
        what,
        log_index: entry.log_index,
    };

    let payload_hash = hex(&Sha256::digest(payload));
    match &body.spec.data.hash {
        Some(h) if h.algorithm == "sha256" && h.value.eq_ignore_ascii_case(&payload_hash) => {}
        _ => return Err(mismatch("payload hash")),
    }
    if decode_base64(&body.spec.signature.content).as_deref() != Some(signature) {
        return Err(mismatch("signature"));
    }
    let entry_key = decode_base64(&body.spec.signature.public_key.content)
        .ok_or_else(|| malformed("entry public key is not base64"))?;
    if !signer.is_named_by_pem(&entry_key) {
        return Err(mismatch(signer.what()));
    }
    Ok(entry.integrated_time)
}

impl EntrySigner<'_> {
    /// What a Rekor entry names this signer as, for mismatch messages.
    pub(super) fn what(&self) -> &'static str {
        match self {
            EntrySigner::Key(_) => "public key",
            EntrySigner::Certificate(_) => "certificate",
        }
    }

    /// Whether `pem` (a key or certificate as a Rekor entry holds it, base64-decoded) is this
    /// signer: exactly one block of the expected kind with the same DER. A certificate where
    /// a key is expected (or the other way round) is another signer, as is a chain.
    pub(super) fn is_named_by_pem(&self, pem: &[u8]) -> bool {
        let (label, der) = match self {
            EntrySigner::Key(key) => ("PUBLIC KEY", key.spki_der()),
            EntrySigner::Certificate(cert) => ("CERTIFICATE", *cert),
        };
        match pem_blocks(pem).as_deref() {
            Ok([block]) if block.label == label => block.decode().as_deref() == Some(der),
            _ => false,
        }
    }
}

// Rekor entry bodies of attestations

#[derive(Deserialize)]
struct RekorBody {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    spec: Value,
}

#[derive(Deserialize)]
struct HashSpec {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
struct IntotoV001 {
    content: IntotoContent,
    #[serde(rename = "publicKey")]
    public_key: String,
}

#[derive(Deserialize)]
struct IntotoContent {
    hash: Option<HashSpec>,
    #[serde(rename = "payloadHash")]
    payload_hash: Option<HashSpec>,
}

#[derive(Deserialize)]
struct IntotoV002 {
    content: IntotoV002Content,
}

#[derive(Deserialize)]
struct IntotoV002Content {
    envelope: IntotoV002Envelope,
    hash: Option<HashSpec>,
    #[serde(rename = "payloadHash")]
    payload_hash: Option<HashSpec>,
}

#[derive(Deserialize)]
struct IntotoV002Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    signatures: Vec<IntotoV002Signature>,
}

#[derive(Deserialize)]
struct IntotoV002Signature {
    sig: String,
    #[serde(rename = "publicKey")]
    public_key: String,
}

#[derive(Deserialize)]
struct DsseV001 {
    #[serde(rename = "envelopeHash")]
    envelope_hash: Option<HashSpec>,
    #[serde(rename = "payloadHash")]
    payload_hash: Option<HashSpec>,
    signatures: Vec<DsseV001Signature>,
}

#[derive(Deserialize)]
struct DsseV001Signature {
    signature: String,
    verifier: String,
}

fn rekor_malformed(reason: String) -> AttestationFailure {
    Failure::BundleMalformed { reason }.into()
}

fn parse_body(body: &[u8]) -> Result<RekorBody, AttestationFailure> {
    serde_json::from_slice(body).map_err(|e| {
        rekor_malformed(format!(
            "entry body is not a Rekor entry: {}",
            shown(&e.to_string())
        ))
    })
}

fn parse_spec<T: serde::de::DeserializeOwned>(body: &RekorBody) -> Result<T, AttestationFailure> {
    T::deserialize(&body.spec).map_err(|e| {
        rekor_malformed(format!(
            "{} {} entry: {}",
            shown(&body.kind),
            shown(&body.api_version),
            shown(&e.to_string())
        ))
    })
}

fn hash_is(spec: Option<&HashSpec>, candidates: &[[u8; 32]]) -> bool {
    spec.is_some_and(|h| {
        h.algorithm == "sha256"
            && candidates
                .iter()
                .any(|c| h.value.eq_ignore_ascii_case(&hex(c)))
    })
}

/// Whether `b64_pem` (base64 of a PEM, as Rekor stores keys) is `signer`: the same
/// SubjectPublicKeyInfo for a key, the same certificate for a certificate.
fn named_by(signer: EntrySigner<'_>, b64_pem: &str) -> bool {
    decode_base64(b64_pem).is_some_and(|pem| signer.is_named_by_pem(&pem))
}

/// Checks that a Rekor entry body (whose SET verified) is about this envelope, its verifying
/// signature `sig` and `signer`. `raw` is the envelope as uploaded, when known (legacy layer).
pub(super) fn bind_entry(
    body: &[u8],
    log_index: i64,
    envelope: &Envelope,
    raw: Option<&[u8]>,
    sig: &EnvelopeSignature,
    signer: EntrySigner<'_>,
) -> Result<(), AttestationFailure> {
    let body = parse_body(body)?;
    let mismatch = |what: &'static str| -> AttestationFailure {
        Failure::BundleMismatch { what, log_index }.into()
    };
    let mut envelope_hashes: Vec<[u8; 32]> =
        raw.map(|r| Sha256::digest(r).into()).into_iter().collect();
    envelope_hashes.push(Sha256::digest(envelope.go_json(true)).into());
    envelope_hashes.push(Sha256::digest(envelope.go_json(false)).into());
    let payload_hash: [[u8; 32]; 1] = [Sha256::digest(&envelope.payload).into()];

    match (body.kind.as_str(), body.api_version.as_str()) {
        ("intoto", "0.0.1") => {
            let spec: IntotoV001 = parse_spec(&body)?;
            if !hash_is(spec.content.hash.as_ref(), &envelope_hashes) {
                return Err(mismatch("envelope hash"));
            }
            if !hash_is(spec.content.payload_hash.as_ref(), &payload_hash) {
                return Err(mismatch("payload hash"));
            }
            if !named_by(signer, &spec.public_key) {
                return Err(mismatch(signer.what()));
            }
        }
        ("intoto", "0.0.2") => {
            let spec: IntotoV002 = parse_spec(&body)?;
            let content = spec.content;
            if !hash_is(content.hash.as_ref(), &envelope_hashes) {
                return Err(mismatch("envelope hash"));
            }
            if !hash_is(content.payload_hash.as_ref(), &payload_hash) {
                return Err(mismatch("payload hash"));
            }
            if content.envelope.payload_type != envelope.payload_type {
                return Err(mismatch("payload type"));
            }
            // `sig` is base64 of the envelope's base64 text; accept it encoded once too.
            let same_sig = |s: &IntotoV002Signature| {
                decode_base64(&s.sig).is_some_and(|once| {
                    once == sig.sig
                        || std::str::from_utf8(&once)
                            .ok()
                            .and_then(dsse_base64)
                            .is_some_and(|twice| twice == sig.sig)
                })
            };
            check_signatures(
                content.envelope.signatures.iter(),
                same_sig,
                |s| named_by(signer, &s.public_key),
                signer,
                mismatch,
            )?;
        }
        ("dsse", "0.0.1") => {
            let spec: DsseV001 = parse_spec(&body)?;
            if !hash_is(spec.envelope_hash.as_ref(), &envelope_hashes) {
                return Err(mismatch("envelope hash"));
            }
            if !hash_is(spec.payload_hash.as_ref(), &payload_hash) {
                return Err(mismatch("payload hash"));
            }
            check_signatures(
                spec.signatures.iter(),
                |s| decode_base64(&s.signature).is_some_and(|d| d == sig.sig),
                |s| named_by(signer, &s.verifier),
                signer,
                mismatch,
            )?;
        }
        _ => {
            return Err(AttestationFailure::UnsupportedEntry {
                kind: shown(&body.kind),
                version: shown(&body.api_version),
            });
        }
    }
    Ok(())
}

/// Some entry signature must be ours, and name our signer.
fn check_signatures<'s, S: 's>(
    signatures: impl Iterator<Item = &'s S>,
    same_sig: impl Fn(&S) -> bool,
    same_signer: impl Fn(&S) -> bool,
    signer: EntrySigner<'_>,
    mismatch: impl Fn(&'static str) -> AttestationFailure,
) -> Result<(), AttestationFailure> {
    let mut sig_found = false;
    for s in signatures {
        if same_sig(s) {
            if same_signer(s) {
                return Ok(());
            }
            sig_found = true;
        }
    }
    Err(mismatch(if sig_found {
        signer.what()
    } else {
        "signature"
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::verify::cosign::trust::keys::tests::signer;
    use sigstore::crypto::SigningScheme;

    /// A Rekor log made up for tests: signs bundles the way rekor.sigstore.dev does.
    pub(crate) struct FakeLog {
        signer: sigstore::crypto::SigStoreSigner,
        pub pem: String,
    }

    impl FakeLog {
        pub(crate) fn new() -> Self {
            let (signer, pem) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
            FakeLog { signer, pem }
        }

        pub(crate) fn keys(&self) -> RekorKeys {
            RekorKeys::from_named_pems([("test-rekor", self.pem.as_bytes())]).unwrap()
        }

        pub(crate) fn log_id(&self) -> String {
            self.keys().log_ids().next().unwrap().to_owned()
        }

        /// A bundle whose hashedrekord body names `payload`, `sig` and `key_pem`.
        pub(crate) fn bundle(&self, payload: &[u8], sig: &[u8], key_pem: &str) -> String {
            self.bundle_with_body(&hashedrekord(payload, sig, key_pem))
        }

        pub(crate) fn bundle_with_body(&self, body: &serde_json::Value) -> String {
            let b64 = base64::engine::general_purpose::STANDARD;
            let p = BundlePayload {
                body: b64.encode(body.to_string()),
                integrated_time: 1_700_000_000,
                log_index: 42,
                log_id: self.log_id(),
            };
            let set = self.signer.sign(&canonical_payload(&p).unwrap()).unwrap();
            serde_json::json!({
                "SignedEntryTimestamp": b64.encode(set),
                "Payload": {
                    "body": p.body,
                    "integratedTime": p.integrated_time,
                    "logIndex": p.log_index,
                    "logID": p.log_id,
                }
            })
            .to_string()
        }
    }

    pub(crate) fn hashedrekord(payload: &[u8], sig: &[u8], key_pem: &str) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": hex(&Sha256::digest(payload))}},
                "signature": {
                    "content": b64.encode(sig),
                    "publicKey": {"content": b64.encode(key_pem)}
                }
            }
        })
    }

    /// The hand-built canonical form equals serde_json's sorted-map output for a payload
    /// with characters that need escaping.
    #[test]
    fn canonical_form_matches_sorted_json() {
        let p = BundlePayload {
            body: "a\"b\\c\n\u{1}é".to_owned(),
            integrated_time: -5,
            log_index: 9_007_199_254_740_991,
            log_id: "ab".to_owned(),
        };
        let mut map = serde_json::Map::new();
        map.insert("logIndex".into(), p.log_index.into());
        map.insert("body".into(), p.body.clone().into());
        map.insert("logID".into(), p.log_id.clone().into());
        map.insert("integratedTime".into(), p.integrated_time.into());
        let mut sorted: Vec<_> = map.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let expected = format!(
            "{{{}}}",
            sorted
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(canonical_payload(&p).unwrap(), expected.into_bytes());
    }

    /// A rekord 0.0.1 entry with an x509 key is accepted; other kinds are named.
    #[test]
    fn rekord_and_unsupported_kinds() {
        let log = FakeLog::new();
        let (signer, pem) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let key = PublicKey::from_pem("k", pem.as_bytes()).unwrap();
        let payload = b"payload";
        let sig = signer.sign(payload).unwrap();
        let mut body = hashedrekord(payload, &sig, &pem);
        body["kind"] = "rekord".into();
        body["spec"]["signature"]["format"] = "x509".into();
        let bundle = log.bundle_with_body(&body);
        assert_eq!(
            check_bundle(&bundle, payload, &sig, EntrySigner::Key(&key), &log.keys()),
            Ok(1_700_000_000)
        );

        body["kind"] = "intoto".into();
        let bundle = log.bundle_with_body(&body);
        let err =
            check_bundle(&bundle, payload, &sig, EntrySigner::Key(&key), &log.keys()).unwrap_err();
        assert!(matches!(err, Failure::UnsupportedEntry { .. }), "{err}");
    }

    /// Malformed bundles (bad JSON, bad base64, huge numbers, wrong types) are failures, not
    /// panics.
    #[test]
    fn malformed_bundles() {
        let log = FakeLog::new();
        let (_, pem) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let key = PublicKey::from_pem("k", pem.as_bytes()).unwrap();
        let id = log.log_id();
        for raw in [
            String::new(),
            "null".to_owned(),
            "{".to_owned(),
            r#"{"SignedEntryTimestamp":1,"Payload":{}}"#.to_owned(),
            format!(
                r#"{{"SignedEntryTimestamp":"x","Payload":{{"body":"e30=","integratedTime":1e400,"logIndex":1,"logID":"{id}"}}}}"#
            ),
            format!(
                r#"{{"SignedEntryTimestamp":"x","Payload":{{"body":"e30=","integratedTime":99999999999999999999999,"logIndex":1,"logID":"{id}"}}}}"#
            ),
            format!(
                r#"{{"SignedEntryTimestamp":"!!","Payload":{{"body":"e30=","integratedTime":1,"logIndex":1,"logID":"{id}"}}}}"#
            ),
        ] {
            let err =
                check_bundle(&raw, b"p", b"s", EntrySigner::Key(&key), &log.keys()).unwrap_err();
            assert!(
                matches!(err, Failure::BundleMalformed { .. }),
                "{raw}: {err}"
            );
        }
        // A valid SET over a body that is not JSON.
        let b64 = base64::engine::general_purpose::STANDARD;
        let p = BundlePayload {
            body: b64.encode("not json"),
            integrated_time: 1,
            log_index: 1,
            log_id: id.clone(),
        };
        let set = log.signer.sign(&canonical_payload(&p).unwrap()).unwrap();
        let raw = serde_json::json!({"SignedEntryTimestamp": b64.encode(set), "Payload": {
            "body": p.body, "integratedTime": 1, "logIndex": 1, "logID": id}})
        .to_string();
        let err = check_bundle(&raw, b"p", b"s", EntrySigner::Key(&key), &log.keys()).unwrap_err();
        assert!(matches!(err, Failure::BundleMalformed { .. }), "{err}");
    }
}
