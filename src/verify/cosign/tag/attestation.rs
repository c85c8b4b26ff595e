//! Tag-based attestations: one layer of the `sha256-<hex>.att` manifest that
//! `cosign attest --new-bundle-format=false` (cosign 2.x's default) writes, checked against one
//! [`Authority`].
//!
//! - **Layer**: media type [`DSSE_MEDIA_TYPE`], blob = the DSSE envelope JSON (see
//!   [`crate::verify::cosign::intoto`]), an empty signature annotation, and for keyless
//!   `dev.sigstore.cosign/certificate` / `.../chain` (PEM) and `dev.sigstore.cosign/bundle`
//!   (Rekor SET + entry, as for signatures; the entry kinds an attestation may be logged as are
//!   in [`super::rekor_bundle`]).
//! - **Blob attestation** (`cosign attest-blob`): a bare envelope, key-signed
//!   ([`verify_blob_envelope`]).
//!
//! Order of checks ([`verify_attestation_layer`]): media type; envelope shape and bounds; with
//! Rekor, the bundle's SET (its integrated time is the trusted signing time); the signer's key
//! (the configured key, or the certificate annotation checked with the chain annotation at the
//! integrated time, or now without Rekor); one signature verifying over PAE; with Rekor, the
//! entry body bound to this envelope, signature and key/certificate; then `payloadType` must be
//! in-toto, the statement is parsed (serde_json, never re-serialized), and a subject must carry
//! the image's sha256 digest. A key-based attestation's Rekor entry must name the bare public
//! key (not a certificate for it).
//!
//! Failures are [`AttestationFailure`]s; where a shared check fails (certificate, Rekor SET)
//! the signature path's [`Failure`] is wrapped. Predicate conditions are separate
//! ([`crate::verify::cosign::conditions`]): a caller checks them on a
//! [`VerifiedAttestation`]'s statement.

use super::rekor_bundle::{self, EntrySigner};
use super::{BUNDLE_ANNOTATION, DSSE_MEDIA_TYPE, Failure, SigLayer, layer_certificates};
use crate::verify::cosign::intoto::{
    AttestationFailure, Envelope, EnvelopeSignature, IN_TOTO_PAYLOAD_TYPE, Statement, sha256_hex,
};
use crate::verify::cosign::{Authority, LeafSummary, PublicKey, RekorKeys, now_unix, shown};

/// An attestation whose signature, signer, transparency-log proof (when required) and subject
/// all checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedAttestation {
    /// The signed statement.
    pub statement: Statement,
    /// Who signed: the attestor's name, and for certificates the identity, e.g.
    /// `fulcio (cody@soyland.com, issuer https://github.com/login/oauth)`.
    pub signer: String,
    /// Whether a transparency-log entry was verified and bound to this envelope.
    pub tlog: bool,
    /// The Rekor integrated time (Unix seconds) the certificate was checked at, if any.
    pub integrated_time: Option<i64>,
}

/// The key an envelope must be signed with, and what the Rekor entry must name.
enum Signer<'a> {
    /// A configured public key.
    Key(&'a PublicKey),
    /// A certificate checked against the attestor's CA.
    Cert {
        key: Box<PublicKey>,
        leaf_der: Vec<u8>,
        summary: LeafSummary,
        attestor: &'a str,
    },
}

impl Signer<'_> {
    fn key(&self) -> &PublicKey {
        match self {
            Signer::Key(key) => key,
            Signer::Cert { key, .. } => key,
        }
    }

    /// For messages: `key NAME` or `the certificate of SUBJECT (attestor NAME)`.
    fn described(&self) -> String {
        match self {
            Signer::Key(key) => format!("key {}", key.name()),
            Signer::Cert {
                summary, attestor, ..
            } => format!(
                "the certificate of {} (attestor {attestor})",
                shown(&summary.subjects.join(", "))
            ),
        }
    }

    /// For [`VerifiedAttestation::signer`]: the attestor, and the certificate identity.
    fn identity(&self) -> String {
        match self {
            Signer::Key(key) => key.name().to_owned(),
            Signer::Cert {
                summary, attestor, ..
            } => {
                let mut s = format!("{attestor} ({}", shown(&summary.subjects.join(", ")));
                if let Some(issuer) = &summary.issuer {
                    s.push_str(", issuer ");
                    s.push_str(&shown(issuer));
                }
                s.push(')');
                s
            }
        }
    }

    /// The same signer as a Rekor entry must name it.
    fn entry_signer(&self) -> EntrySigner<'_> {
        match self {
            Signer::Key(key) => EntrySigner::Key(key),
            Signer::Cert { leaf_der, .. } => EntrySigner::Certificate(leaf_der),
        }
    }
}

/// The signer for `authority`: the key itself, or the certificate `cert` yields (leaf and
/// untrusted chain, DER) verified by the attestor's CA at `at` (named `time_source` in a
/// refusal).
fn signer<'a>(
    authority: &'a Authority,
    cert: impl FnOnce() -> Result<(Vec<u8>, Vec<Vec<u8>>), Failure>,
    at: i64,
    time_source: &str,
) -> Result<Signer<'a>, AttestationFailure> {
    match authority {
        Authority::Key(key) => Ok(Signer::Key(key)),
        Authority::Certificates(ca) => {
            let (leaf, chain) = cert()?;
            let (key, summary) = ca.verify_leaf_at(&leaf, &chain, at, time_source)?;
            Ok(Signer::Cert {
                key: Box::new(key),
                leaf_der: leaf,
                summary,
                attestor: &ca.name,
            })
        }
    }
}

/// The envelope's signature by `signer` over PAE, or the failure naming the key and type.
fn verified_signature<'e>(
    envelope: &'e Envelope,
    signer: &Signer<'_>,
) -> Result<&'e EnvelopeSignature, AttestationFailure> {
    envelope
        .verified_by(signer.key())
        .ok_or_else(|| AttestationFailure::BadSignature {
            signer: signer.described(),
            payload_type: shown(&envelope.payload_type),
        })
}

/// After the signature: the payload type must be in-toto and the payload a statement.
fn statement_of(envelope: &Envelope) -> Result<Statement, AttestationFailure> {
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(AttestationFailure::NotInToto {
            found: shown(&envelope.payload_type),
        });
    }
    Statement::parse(&envelope.payload)
}

fn check_subject(
    statement: &Statement,
    digest: &str,
    artifact: &'static str,
) -> Result<(), AttestationFailure> {
    if sha256_hex(digest).is_none() {
        return Err(AttestationFailure::UnsupportedDigest {
            artifact,
            digest: shown(digest),
        });
    }
    if statement.names_digest(digest) {
        Ok(())
    } else {
        Err(AttestationFailure::SubjectMismatch {
            artifact,
            digest: shown(digest),
            subjects: statement.subjects_summary(),
        })
    }
}

/// Verifies one layer of a cosign `.att` manifest with one authority: the envelope's
/// signature over PAE, with `rekor: Some` the `dev.sigstore.cosign/bundle` annotation (SET,
/// and the entry body bound to this envelope; its integrated time is when the certificate must
/// have been valid), then the statement and its subject `digest` (`sha256:<hex>`). Without
/// Rekor, a bundle annotation is ignored and certificates are checked at the current time.
pub fn verify_attestation_layer(
    layer: &SigLayer,
    authority: &Authority,
    digest: &str,
    rekor: Option<&RekorKeys>,
) -> Result<VerifiedAttestation, AttestationFailure> {
    if layer.media_type != DSSE_MEDIA_TYPE {
        return Err(AttestationFailure::NotDsse {
            media_type: shown(&layer.media_type),
        });
    }
    let envelope = Envelope::parse(&layer.payload)?;
    let entry = match rekor {
        None => None,
        Some(keys) => {
            let raw = layer
                .annotations
                .get(BUNDLE_ANNOTATION)
                .ok_or(Failure::NoBundle)?;
            Some(rekor_bundle::verify_set(raw, keys)?)
        }
    };
    // As for `.sig` layers: the certificate is checked at the Rekor integration time, or now
    // when there is no log entry.
    let (at, time_source) = match &entry {
        Some(e) => (e.integrated_time, "Rekor integration time"),
        None => (now_unix(), "current time"),
    };
    let signer = signer(
        authority,
        || layer_certificates(layer, authority.name()),
        at,
        time_source,
    )?;
    let sig = verified_signature(&envelope, &signer)?;
    if let Some(entry) = &entry {
        rekor_bundle::bind_entry(
            &entry.body,
            entry.log_index,
            &envelope,
            Some(&layer.payload),
            sig,
            signer.entry_signer(),
        )?;
    }
    let statement = statement_of(&envelope)?;
    check_subject(&statement, digest, "image")?;
    Ok(VerifiedAttestation {
        statement,
        signer: signer.identity(),
        tlog: entry.is_some(),
        integrated_time: entry.map(|e| e.integrated_time),
    })
}

/// Verifies a DSSE envelope of a blob attestation (`cosign attest-blob`) with a key: the
/// signature over PAE, the statement, and a subject whose sha256 is `blob_sha256_hex`. A bare
/// envelope carries no certificate, so certificate authorities need a Sigstore bundle.
pub fn verify_blob_envelope(
    envelope: &[u8],
    authority: &Authority,
    blob_sha256_hex: &str,
) -> Result<Statement, AttestationFailure> {
    let envelope = Envelope::parse(envelope)?;
    let key = match authority {
        Authority::Key(key) => key,
        Authority::Certificates(ca) => {
            return Err(Failure::Certificate {
                reason: format!(
                    "a bare DSSE envelope carries no certificate; attestor {} needs a sigstore bundle",
                    ca.name
                ),
            }
            .into());
        }
    };
    let signer = Signer::Key(key);
    verified_signature(&envelope, &signer)?;
    let statement = statement_of(&envelope)?;
    check_subject(&statement, &format!("sha256:{blob_sha256_hex}"), "blob")?;
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosign::hex;
    use crate::verify::cosign::intoto::{
        MAX_ENVELOPE_BYTES, MAX_SIGNATURES, STATEMENT_V01, STATEMENT_V1, pae,
    };
    use crate::verify::cosign::tag::CERTIFICATE_ANNOTATION;
    use crate::verify::cosign::tag::rekor_bundle::tests::FakeLog;
    use crate::verify::cosign::trust::keys::tests::signer as keypair;
    use crate::verify::cosign::{CertAuthority, CertIdentity, SIGNATURE_ANNOTATION};
    use base64::Engine as _;
    use serde_json::Value;
    use serde_json::json;
    use sha2::{Digest as _, Sha256};
    use sigstore::crypto::{SigStoreSigner, SigningScheme};
    use std::collections::BTreeMap;

    const DIGEST_HEX: &str = "634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
    const OTHER_HEX: &str = "d9dcafdb00000000000000000000000000000000000000000000000000000000";

    fn digest() -> String {
        format!("sha256:{DIGEST_HEX}")
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// An in-toto statement about the given sha256 subjects.
    fn statement(kind: &str, subjects: &[&str], predicate: Value) -> Vec<u8> {
        let subjects: Vec<Value> = subjects
            .iter()
            .map(|h| json!({"name": "registry.example.com/app", "digest": {"sha256": h}}))
            .collect();
        json!({
            "_type": kind,
            "predicateType": "https://slsa.dev/provenance/v1",
            "subject": subjects,
            "predicate": predicate,
        })
        .to_string()
        .into_bytes()
    }

    fn slsa() -> Vec<u8> {
        statement(
            STATEMENT_V01,
            &[DIGEST_HEX],
            json!({"builder": {"id": "https://github.com/actions/runner"}}),
        )
    }

    /// Envelope JSON as cosign writes it (Go field order, `keyid` always present).
    fn envelope_json(payload_type: &str, payload: &[u8], sigs: &[Vec<u8>]) -> Vec<u8> {
        let sigs: Vec<String> = sigs
            .iter()
            .map(|s| format!(r#"{{"keyid":"","sig":"{}"}}"#, b64(s)))
            .collect();
        format!(
            r#"{{"payloadType":{},"payload":"{}","signatures":[{}]}}"#,
            serde_json::to_string(payload_type).unwrap(),
            b64(payload),
            sigs.join(",")
        )
        .into_bytes()
    }

    struct Attestor {
        signer: SigStoreSigner,
        pem: String,
        key: PublicKey,
    }

    impl Attestor {
        fn new(name: &str) -> Self {
            let (signer, pem) = keypair(SigningScheme::ECDSA_P256_SHA256_ASN1);
            let key = PublicKey::from_pem(name, pem.as_bytes()).unwrap();
            Attestor { signer, pem, key }
        }

        fn authority(&self) -> Authority {
            Authority::Key(self.key.clone())
        }

        fn sign_pae(&self, payload_type: &str, payload: &[u8]) -> Vec<u8> {
            self.signer.sign(&pae(payload_type, payload)).unwrap()
        }

        /// A correctly signed envelope (signature over PAE) and its signature.
        fn envelope(&self, payload_type: &str, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let sig = self.sign_pae(payload_type, payload);
            (
                envelope_json(payload_type, payload, std::slice::from_ref(&sig)),
                sig,
            )
        }
    }

    fn att_layer(envelope: &[u8]) -> SigLayer {
        SigLayer {
            media_type: DSSE_MEDIA_TYPE.to_owned(),
            payload: envelope.to_vec(),
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), String::new())]),
        }
    }

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn intoto_v001(envelope: &[u8], payload: &[u8], key_pem: &str) -> Value {
        json!({"apiVersion": "0.0.1", "kind": "intoto", "spec": {
            "content": {
                "hash": {"algorithm": "sha256", "value": sha(envelope)},
                "payloadHash": {"algorithm": "sha256", "value": sha(payload)},
            },
            "publicKey": b64(key_pem.as_bytes()),
        }})
    }

    fn intoto_v002(envelope: &[u8], payload: &[u8], sig: &[u8], key_pem: &str) -> Value {
        json!({"apiVersion": "0.0.2", "kind": "intoto", "spec": {"content": {
            "envelope": {
                "payloadType": IN_TOTO_PAYLOAD_TYPE,
                "signatures": [{"publicKey": b64(key_pem.as_bytes()), "sig": b64(b64(sig).as_bytes())}],
            },
            "hash": {"algorithm": "sha256", "value": sha(envelope)},
            "payloadHash": {"algorithm": "sha256", "value": sha(payload)},
        }}})
    }

    fn dsse_v001(envelope: &[u8], payload: &[u8], sig: &[u8], key_pem: &str) -> Value {
        json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": sha(envelope)},
            "payloadHash": {"algorithm": "sha256", "value": sha(payload)},
            "signatures": [{"signature": b64(sig), "verifier": b64(key_pem.as_bytes())}],
        }})
    }

    fn verify_layer_key(
        layer: &SigLayer,
        a: &Attestor,
        rekor: Option<&RekorKeys>,
    ) -> Result<VerifiedAttestation, AttestationFailure> {
        verify_attestation_layer(layer, &a.authority(), &digest(), rekor)
    }

    /// An envelope signed over PAE verifies as a layer and as a blob attestation, with
    /// statements v0.1 and v1; the statement comes back parsed.
    #[test]
    fn signed_envelope_verifies() {
        let a = Attestor::new("release");
        for kind in [STATEMENT_V01, STATEMENT_V1] {
            let payload = statement(kind, &[DIGEST_HEX], json!({"builder": {"id": "b"}}));
            let (env, _) = a.envelope(IN_TOTO_PAYLOAD_TYPE, &payload);
            let v = verify_layer_key(&att_layer(&env), &a, None).unwrap();
            assert_eq!(v.signer, "release");
            assert!(!v.tlog);
            assert_eq!(v.integrated_time, None);
            assert_eq!(v.statement.predicate_type, "https://slsa.dev/provenance/v1");
            assert_eq!(v.statement.predicate["builder"]["id"], "b");
            assert_eq!(v.statement.subjects[0].name, "registry.example.com/app");
            let st = verify_blob_envelope(&env, &a.authority(), DIGEST_HEX).unwrap();
            assert_eq!(st, v.statement);
        }
    }

    /// A signature over the raw payload (not PAE), or over PAE with another payloadType,
    /// does not verify; the message names the key and the payloadType used.
    #[test]
    fn signature_must_be_over_pae() {
        let a = Attestor::new("release");
        let payload = slsa();
        let raw_sig = a.signer.sign(&payload).unwrap();
        let env = envelope_json(IN_TOTO_PAYLOAD_TYPE, &payload, &[raw_sig]);
        let err = verify_layer_key(&att_layer(&env), &a, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "attestation signature does not verify with key release (DSSE PAE over payloadType application/vnd.in-toto+json)"
        );
        assert_eq!(err.specificity(), 2);
        let other_type = a.sign_pae("application/json", &payload);
        let env = envelope_json(IN_TOTO_PAYLOAD_TYPE, &payload, &[other_type]);
        let err = verify_layer_key(&att_layer(&env), &a, None).unwrap_err();
        assert!(
            matches!(err, AttestationFailure::BadSignature { .. }),
            "{err}"
        );
        // Another key's valid envelope.
        let b = Attestor::new("b");
        let (env, _) = b.envelope(IN_TOTO_PAYLOAD_TYPE, &payload);
        assert!(matches!(
            verify_layer_key(&att_layer(&env), &a, None),
            Err(AttestationFailure::BadSignature { .. })
        ));
    }

    /// A valid signature over another payload type is refused after the signature check.
    #[test]
    fn other_payload_type_is_refused() {
        let a = Attestor::new("a");
        let (env, _) = a.envelope("application/json", &slsa());
        let err = verify_layer_key(&att_layer(&env), &a, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signed payload type \"application/json\" is not application/vnd.in-toto+json"
        );
        assert_eq!(err.specificity(), 4);
    }

    /// The statement must name the image's sha256 digest; hex case does not matter; other
    /// algorithms never match; the message lists what the statement names.
    #[test]
    fn subject_must_name_the_digest() {
        let a = Attestor::new("a");
        let (env, _) = a.envelope(
            IN_TOTO_PAYLOAD_TYPE,
            &statement(STATEMENT_V01, &[OTHER_HEX], json!({})),
        );
        let err = verify_layer_key(&att_layer(&env), &a, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "statement subject does not include this image's digest {} (it names sha256:d9dcafdb0000... (registry.example.com/app))",
                digest()
            )
        );
        assert_eq!(err.specificity(), 5);

        let upper = statement(
            STATEMENT_V01,
            &[OTHER_HEX, &DIGEST_HEX.to_uppercase()],
            json!({}),
        );
        let (env, _) = a.envelope(IN_TOTO_PAYLOAD_TYPE, &upper);
        assert!(verify_layer_key(&att_layer(&env), &a, None).is_ok());
        let upper_image = format!("sha256:{}", DIGEST_HEX.to_uppercase());
        assert!(
            verify_attestation_layer(&att_layer(&env), &a.authority(), &upper_image, None).is_ok()
        );

        let err = verify_attestation_layer(&att_layer(&env), &a.authority(), "sha512:abcd", None)
            .unwrap_err();
        assert!(
            matches!(err, AttestationFailure::UnsupportedDigest { .. }),
            "{err}"
        );

        // A subject with only a sha512 digest does not count.
        let sha512_only = json!({"_type": STATEMENT_V1, "predicateType": "x", "predicate": {},
            "subject": [{"name": "a", "digest": {"sha512": DIGEST_HEX}}]});
        let (env, _) = a.envelope(IN_TOTO_PAYLOAD_TYPE, sha512_only.to_string().as_bytes());
        let err = verify_layer_key(&att_layer(&env), &a, None).unwrap_err();
        assert!(
            err.to_string().ends_with("(it names sha512 only... (a))"),
            "{err}"
        );

        // Blobs are named as such.
        let (env, _) = a.envelope(IN_TOTO_PAYLOAD_TYPE, &slsa());
        let err = verify_blob_envelope(&env, &a.authority(), OTHER_HEX).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("statement subject does not include this blob's"),
            "{err}"
        );
    }

    /// Payloads that are not statements are refused, naming the problem.
    #[test]
    fn statement_shapes() {
        let a = Attestor::new("a");
        for bad in [
            &br#"{"_type":"https://in-toto.io/Statement/v0.2","predicateType":"x","subject":[]}"#[..],
            br#"{"_type":"https://in-toto.io/Statement/v1","subject":[]}"#,
            b"[]",
            b"not json",
            br#"{"_type":"https://in-toto.io/Statement/v1","predicateType":"x","subject":[{"name":"a"}]}"#,
        ] {
            let (env, _) = a.envelope(IN_TOTO_PAYLOAD_TYPE, bad);
            let err = verify_layer_key(&att_layer(&env), &a, None).unwrap_err();
            assert!(matches!(err, AttestationFailure::BadStatement { .. }), "{err}");
        }
        let no_predicate = Statement::parse(
            br#"{"_type":"https://in-toto.io/Statement/v1","predicateType":"x","subject":[]}"#,
        )
        .unwrap();
        assert_eq!(no_predicate.predicate, Value::Null);
    }

    /// Envelope bounds and shapes: signature count, base64 forms, size, layer media type.
    #[test]
    fn envelope_bounds() {
        let a = Attestor::new("a");
        let payload = slsa();
        let good = a.sign_pae(IN_TOTO_PAYLOAD_TYPE, &payload);
        let junk = vec![1u8; 70];
        // The verifying signature need not be the first.
        let env = envelope_json(
            IN_TOTO_PAYLOAD_TYPE,
            &payload,
            &[junk.clone(), good.clone()],
        );
        assert!(verify_layer_key(&att_layer(&env), &a, None).is_ok());
        // 17 signatures are refused before any is checked.
        let mut many = vec![junk.clone(); MAX_SIGNATURES];
        many.push(good.clone());
        let env = envelope_json(IN_TOTO_PAYLOAD_TYPE, &payload, &many);
        assert_eq!(
            verify_layer_key(&att_layer(&env), &a, None).unwrap_err(),
            AttestationFailure::TooManySignatures { count: 17 }
        );
        let env = envelope_json(IN_TOTO_PAYLOAD_TYPE, &payload, &[]);
        assert!(matches!(
            verify_layer_key(&att_layer(&env), &a, None),
            Err(AttestationFailure::EnvelopeMalformed { .. })
        ));
        // URL-safe unpadded base64 (allowed by DSSE) is read.
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let env = json!({"payloadType": IN_TOTO_PAYLOAD_TYPE, "payload": url.encode(&payload),
            "signatures": [{"sig": url.encode(&good)}]});
        assert!(verify_layer_key(&att_layer(env.to_string().as_bytes()), &a, None).is_ok());
        for bad in [
            json!({"payloadType": IN_TOTO_PAYLOAD_TYPE, "payload": "!!", "signatures": [{"sig": b64(&good)}]}),
            json!({"payloadType": IN_TOTO_PAYLOAD_TYPE, "payload": b64(&payload), "signatures": [{"sig": ""}]}),
            json!({"payloadType": 5, "payload": b64(&payload), "signatures": [{"sig": b64(&good)}]}),
            json!({"payload": b64(&payload), "signatures": [{"sig": b64(&good)}]}),
            json!([]),
        ] {
            let err =
                verify_layer_key(&att_layer(bad.to_string().as_bytes()), &a, None).unwrap_err();
            assert!(
                matches!(err, AttestationFailure::EnvelopeMalformed { .. }),
                "{bad}: {err}"
            );
            assert_eq!(err.specificity(), 1);
        }
        let huge = vec![b' '; MAX_ENVELOPE_BYTES + 1];
        let err = Envelope::parse(&huge).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
        // Not a DSSE layer at all.
        let mut layer = att_layer(&envelope_json(IN_TOTO_PAYLOAD_TYPE, &payload, &[good]));
        layer.media_type = "application/vnd.dev.cosign.simplesigning.v1+json".into();
        let err = verify_layer_key(&layer, &a, None).unwrap_err();
        assert!(matches!(err, AttestationFailure::NotDsse { .. }), "{err}");
        assert_eq!(err.specificity(), 0);
    }

    /// A legacy `.att` layer with a Rekor bundle of each supported kind verifies, with the
    /// bundle's integrated time; without Rekor keys the bundle is ignored.
    #[test]
    fn legacy_layer_with_rekor_bundle() {
        let log = FakeLog::new();
        let a = Attestor::new("a");
        let payload = slsa();
        let (env, sig) = a.envelope(IN_TOTO_PAYLOAD_TYPE, &payload);
        let parsed = Envelope::parse(&env).unwrap();
        let go_form = parsed.go_json(true);
        assert_eq!(
            go_form.as_bytes(),
            env.as_slice(),
            "cosign's form round-trips"
        );
        for body in [
            intoto_v001(&env, &payload, &a.pem),
            intoto_v002(&env, &payload, &sig, &a.pem),
            dsse_v001(&env, &payload, &sig, &a.pem),
        ] {
            let mut layer = att_layer(&env);
            layer
                .annotations
                .insert(BUNDLE_ANNOTATION.into(), log.bundle_with_body(&body));
            let v = verify_layer_key(&layer, &a, Some(&log.keys())).unwrap();
            assert!(v.tlog, "{body}");
            assert_eq!(v.integrated_time, Some(1_700_000_000));
            assert!(!verify_layer_key(&layer, &a, None).unwrap().tlog);
        }
        // intoto 0.0.2 whose signature is encoded once is accepted too.
        let mut body = intoto_v002(&env, &payload, &sig, &a.pem);
        body["spec"]["content"]["envelope"]["signatures"][0]["sig"] = b64(&sig).into();
        let mut layer = att_layer(&env);
        layer
            .annotations
            .insert(BUNDLE_ANNOTATION.into(), log.bundle_with_body(&body));
        assert!(verify_layer_key(&layer, &a, Some(&log.keys())).is_ok());
    }

    /// A genuine Rekor entry about another envelope, payload, signature or key is refused,
    /// naming what differs; so are other entry kinds, a missing bundle and an untrusted log.
    #[test]
    fn legacy_layer_bundle_mismatches() {
        let log = FakeLog::new();
        let a = Attestor::new("a");
        let other = Attestor::new("other");
        let payload = slsa();
        let (env, sig) = a.envelope(IN_TOTO_PAYLOAD_TYPE, &payload);
        let other_payload = statement(STATEMENT_V01, &[OTHER_HEX], json!({}));
        let (other_env, other_sig) = other.envelope(IN_TOTO_PAYLOAD_TYPE, &other_payload);
        let run = |body: Option<Value>| {
            let mut layer = att_layer(&env);
            if let Some(body) = body {
                layer
                    .annotations
                    .insert(BUNDLE_ANNOTATION.into(), log.bundle_with_body(&body));
            }
            verify_layer_key(&layer, &a, Some(&log.keys())).unwrap_err()
        };
        let what = |err: AttestationFailure| match err {
            AttestationFailure::Check(Failure::BundleMismatch {
                what,
                log_index: 42,
            }) => what,
            other => panic!("not a mismatch: {other}"),
        };
        assert_eq!(run(None), AttestationFailure::Check(Failure::NoBundle));
        // Another entry's genuine body, each kind.
        assert_eq!(
            what(run(Some(intoto_v001(
                &other_env,
                &other_payload,
                &other.pem
            )))),
            "envelope hash"
        );
        assert_eq!(
            what(run(Some(intoto_v002(
                &other_env,
                &other_payload,
                &other_sig,
                &other.pem
            )))),
            "envelope hash"
        );
        assert_eq!(
            what(run(Some(dsse_v001(
                &other_env,
                &other_payload,
                &other_sig,
                &other.pem
            )))),
            "envelope hash"
        );
        // Right envelope hash, wrong payload hash.
        assert_eq!(
            what(run(Some(intoto_v001(&env, &other_payload, &a.pem)))),
            "payload hash"
        );
        assert_eq!(
            what(run(Some(dsse_v001(&env, &other_payload, &sig, &a.pem)))),
            "payload hash"
        );
        // Right hashes, wrong signature or key.
        assert_eq!(
            what(run(Some(intoto_v002(&env, &payload, &other_sig, &a.pem)))),
            "signature"
        );
        assert_eq!(
            what(run(Some(dsse_v001(&env, &payload, &other_sig, &a.pem)))),
            "signature"
        );
        assert_eq!(
            what(run(Some(intoto_v001(&env, &payload, &other.pem)))),
            "public key"
        );
        assert_eq!(
            what(run(Some(intoto_v002(&env, &payload, &sig, &other.pem)))),
            "public key"
        );
        assert_eq!(
            what(run(Some(dsse_v001(&env, &payload, &sig, &other.pem)))),
            "public key"
        );
        let mut wrong_type = intoto_v002(&env, &payload, &sig, &a.pem);
        wrong_type["spec"]["content"]["envelope"]["payloadType"] = "application/json".into();
        assert_eq!(what(run(Some(wrong_type))), "payload type");
        // A certificate where the key should be.
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            what(run(Some(dsse_v001(&env, &payload, &sig, cert)))),
            "public key"
        );
        // The signature path's entry kind is not an attestation entry.
        let err = run(Some(
            crate::verify::cosign::tag::rekor_bundle::tests::hashedrekord(&env, &sig, &a.pem),
        ));
        assert_eq!(
            err.to_string(),
            "Rekor entry kind hashedrekord 0.0.1 is not an attestation entry (intoto 0.0.1, intoto 0.0.2 or dsse 0.0.1 expected)"
        );
        let mut v3 = dsse_v001(&env, &payload, &sig, &a.pem);
        v3["apiVersion"] = "0.0.3".into();
        assert!(matches!(
            run(Some(v3)),
            AttestationFailure::UnsupportedEntry { .. }
        ));
        // A body of the right kind but the wrong shape.
        let err = run(Some(
            json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {"signatures": 5}}),
        ));
        assert!(
            matches!(
                err,
                AttestationFailure::Check(Failure::BundleMalformed { .. })
            ),
            "{err}"
        );
        // A bundle from a log that is not configured.
        let stranger = FakeLog::new();
        let mut layer = att_layer(&env);
        layer.annotations.insert(
            BUNDLE_ANNOTATION.into(),
            stranger.bundle_with_body(&dsse_v001(&env, &payload, &sig, &a.pem)),
        );
        let err = verify_layer_key(&layer, &a, Some(&log.keys())).unwrap_err();
        assert!(
            matches!(err, AttestationFailure::Check(Failure::UntrustedLog { .. })),
            "{err}"
        );
        assert_eq!(err.specificity(), 3);
    }

    /// A certificate authority needs the certificate annotation (checked before the stub or
    /// real chain verification), and a bare blob envelope can never satisfy it.
    #[test]
    fn certificate_material_is_required() {
        let a = Attestor::new("a");
        let root = crate::verify::cosign::trust::certificates::tests::make(
            &crate::verify::cosign::trust::certificates::tests::Spec::ca("root"),
            None,
        );
        let ca = CertAuthority::from_der(
            "fulcio",
            vec![root.der],
            Vec::new(),
            CertIdentity::default(),
        )
        .unwrap();
        let authority = Authority::Certificates(ca);
        let (env, _) = a.envelope(IN_TOTO_PAYLOAD_TYPE, &slsa());
        let err =
            verify_attestation_layer(&att_layer(&env), &authority, &digest(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "certificate: layer has no dev.sigstore.cosign/certificate annotation, but attestor fulcio accepts only certificate-signed signatures"
        );
        let mut layer = att_layer(&env);
        layer
            .annotations
            .insert(CERTIFICATE_ANNOTATION.into(), a.pem.clone());
        let err = verify_attestation_layer(&layer, &authority, &digest(), None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("certificate: dev.sigstore.cosign/certificate: "),
            "{err}"
        );
        let err = verify_blob_envelope(&env, &authority, DIGEST_HEX).unwrap_err();
        assert!(err.to_string().contains("needs a sigstore bundle"), "{err}");
    }

    /// Ranking picks a subject mismatch over a Rekor problem over a bad signature over
    /// something that is not an attestation.
    #[test]
    fn specificity_ranking() {
        let failures = [
            AttestationFailure::NotDsse {
                media_type: "x".into(),
            },
            AttestationFailure::BadSignature {
                signer: "k".into(),
                payload_type: "t".into(),
            },
            AttestationFailure::Check(Failure::NoBundle),
            AttestationFailure::UnsupportedEntry {
                kind: "k".into(),
                version: "v".into(),
            },
            AttestationFailure::SubjectMismatch {
                artifact: "image",
                digest: "d".into(),
                subjects: "s".into(),
            },
        ];
        let ranks: Vec<u8> = failures
            .iter()
            .map(AttestationFailure::specificity)
            .collect();
        assert_eq!(ranks, [0, 2, 3, 3, 5]);
        assert_eq!(
            AttestationFailure::Check(Failure::Certificate { reason: "r".into() }).specificity(),
            2
        );
    }

    /// Arbitrary damage to an envelope or a bundle never panics (a small deterministic fuzz).
    #[test]
    fn no_panic_on_noise() {
        let fake = FakeLog::new();
        let a = Attestor::new("a");
        let payload = slsa();
        let sig = a.sign_pae(IN_TOTO_PAYLOAD_TYPE, &payload);
        let env = envelope_json(IN_TOTO_PAYLOAD_TYPE, &payload, std::slice::from_ref(&sig));
        let legacy = fake.bundle_with_body(&dsse_v001(&env, &payload, &sig, &a.pem));
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut noisy = |s: &[u8]| {
                let mut v = s.to_vec();
                for _ in 0..(next() % 4) {
                    if v.is_empty() {
                        break;
                    }
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                if next() % 5 == 0 {
                    let cut = (next() as usize) % (v.len() + 1);
                    v.truncate(cut);
                }
                v
            };
            let mut layer = att_layer(&noisy(&env));
            layer.annotations.insert(
                BUNDLE_ANNOTATION.into(),
                String::from_utf8_lossy(&noisy(legacy.as_bytes())).into_owned(),
            );
            let _ = verify_layer_key(&layer, &a, Some(&fake.keys()));
            let _ = verify_blob_envelope(&noisy(&env), &a.authority(), DIGEST_HEX);
        }
    }
}
