//! Tag-based signatures: one layer of a `sha256-<digest>.sig` manifest checked against one
//! [`Authority`]: a public key, or a certificate authority (keyless/Fulcio or your own PKI)
//! plus the identity its signing certificate must carry. Signature over the exact payload
//! bytes, optional offline Rekor bundle, then the payload's claims (type, digest,
//! docker-reference).
//!
//! The signature math is sigstore's (and `p384`/`ed25519-dalek` where it has gaps); this
//! module adds the checks sigstore 0.15 lacks (design.md section 5), each pinned by a real
//! cosign vector in `tests/vectors.rs`:
//! - docker-reference matching ([`IdentityMatch`]); sigstore checks none, so a signature
//!   copied from another repository verifies there;
//! - the legacy Rekor bundle's entry body must be about this payload, signature and key or
//!   certificate, not only carry a valid SET (`rekor_bundle.rs`); sigstore's SET check is also not
//!   public;
//! - certificate signers (`trust/certificates.rs`): the chain is built from the configured roots and
//!   intermediates plus the layer's untrusted `dev.sigstore.cosign/chain`, and checked at the
//!   Rekor integration time (or now, without Rekor), where sigstore checks at now and trusts
//!   every configured certificate as a root; SAN/issuer matching with regexes; a sigstore
//!   `trusted_root.json` read offline (`trust/trusted_root.rs`);
//! - a layer that is not `application/vnd.dev.cosign.simplesigning.v1+json` is one failed
//!   layer here, where sigstore's Client fails the whole fetch and hides valid signatures
//!   next to it (the caller verifies layer by layer);
//! - verification without a registry: sigstore's verified `SignatureLayer` can only be built
//!   inside the crate;
//! - operator-facing key and certificate errors (`trust/keys.rs`, `trust/certificates.rs`).
//!
//! Order of checks: media type, signature annotation; for a key, the signature over the exact
//! bytes, then the Rekor bundle (when required); for certificates, the certificate and chain
//! annotations, the signature with the leaf's key, the Rekor bundle (when required; it gives
//! the time), then chain, usage and identity at that time. Only then is the payload parsed
//! (serde_json, never re-serialized): type, digest, docker-reference.

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::rekor_bundle;
use super::{BUNDLE_ANNOTATION, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SigLayer};
use super::{docker_reference, layer_certificates};
use crate::verify::cosign::{
    Authority, CertAuthority, IdentityMatch, LeafSummary, RekorKeys, decode_base64, now_unix, shown,
};

/// The only payload type a container image signature may have.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";

/// What the signature must be about.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The digest the image resolved to, `sha256:<hex>`; compared exactly.
    pub digest: &'a str,
    /// The image as requested, normalized (its tag, if any, is what [`IdentityMatch::Exact`]
    /// compares).
    pub reference: &'a oci_client::Reference,
    /// How the signed docker-reference must relate to `reference`.
    pub identity: &'a IdentityMatch,
}

/// A layer that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Name of the attestor (key or certificate authority) that verified it.
    pub key: String,
    /// Whether a Rekor bundle was checked (SET and entry binding).
    pub tlog: bool,
    /// For certificate signers, what the signing certificate says, e.g.
    /// `mitr@redhat.com (issuer https://github.com/login/oauth)` (escaped for display).
    pub identity: Option<String>,
}

/// Why a layer didn't verify. The message is short and says what to look at; text taken from
/// the layer is truncated and escaped. Use [`Failure::specificity`] to pick the most relevant
/// failure across many layers and keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A signing certificate is missing, malformed, untrusted or for another identity.
    #[error("certificate: {reason}")]
    Certificate {
        /// What is wrong, naming the certificate field or chain step.
        reason: String,
    },
    /// The layer is some other attachment, not a signature.
    #[error("layer media type {media_type} is not a cosign simple-signing signature")]
    NotSimpleSigning {
        /// The layer's media type.
        media_type: String,
    },
    /// No (or an empty) signature annotation.
    #[error("layer has no {SIGNATURE_ANNOTATION} annotation")]
    NoSignature,
    /// The signature annotation is not base64.
    #[error("signature annotation is not valid base64")]
    SignatureNotBase64,
    /// The signature is not this key's signature over the payload bytes.
    #[error("signature does not verify with key {key}")]
    BadSignature {
        /// The key tried.
        key: String,
    },
    /// A transparency-log proof is required but the layer carries no bundle.
    #[error("no Rekor bundle ({BUNDLE_ANNOTATION}), but the policy requires the transparency log")]
    NoBundle,
    /// The bundle annotation cannot be read.
    #[error("Rekor bundle is malformed: {reason}")]
    BundleMalformed {
        /// What is wrong.
        reason: String,
    },
    /// The bundle is from a log whose key is not configured.
    #[error("Rekor bundle is from log {log_id}, which is not a trusted Rekor log")]
    UntrustedLog {
        /// The bundle's logID.
        log_id: String,
    },
    /// The SignedEntryTimestamp does not verify with the log's key.
    #[error("Rekor bundle's signed entry timestamp does not verify with the key of log {log_id}")]
    BadSet {
        /// The bundle's logID.
        log_id: String,
    },
    /// The Rekor entry is of a kind we don't check.
    #[error(
        "Rekor entry kind {kind} {version} is not supported (hashedrekord 0.0.1 or rekord 0.0.1 expected)"
    )]
    UnsupportedEntry {
        /// Entry kind.
        kind: String,
        /// Entry apiVersion.
        version: String,
    },
    /// A genuine Rekor entry, but about another payload, signature or key.
    #[error("Rekor bundle (entry {log_index}) does not match this signature: different {what}")]
    BundleMismatch {
        /// `payload hash`, `signature` or `public key`.
        what: &'static str,
        /// The entry's log index.
        log_index: i64,
    },
    /// A valid signature over something that is not a simple-signing payload.
    #[error("signed payload is not a cosign simple-signing payload: {reason}")]
    BadPayload {
        /// The JSON error.
        reason: String,
    },
    /// A valid signature over a payload of another type.
    #[error("signed payload type {found:?} is not {COSIGN_SIGNATURE_TYPE:?}")]
    WrongType {
        /// The payload's `critical.type`.
        found: String,
    },
    /// A valid signature for another digest.
    #[error("signed digest {signed} is not the image digest {expected}")]
    DigestMismatch {
        /// The payload's `critical.image.docker-manifest-digest`.
        signed: String,
        /// The image's digest.
        expected: String,
    },
    /// The payload's docker-reference cannot be parsed.
    #[error("signed docker-reference {reference:?} is not a valid image reference")]
    InvalidSignedReference {
        /// The payload's docker-reference.
        reference: String,
    },
    /// A valid signature for this digest, made for another image name (or tag).
    #[error("signed for {signed}, not {image}")]
    IdentityMismatch {
        /// The signed name (with tag or digest where it matters).
        signed: String,
        /// The image name as compared (with tag where it matters).
        image: String,
    },
}

impl Failure {
    /// How close the layer came to verifying; the higher, the more worth reporting. A valid
    /// signature for the wrong digest or name (5, 6) says more than a Rekor problem (3), which
    /// says more than "does not verify with key X" (2) or a layer that isn't a signature (0).
    pub fn specificity(&self) -> u8 {
        match self {
            Failure::NotSimpleSigning { .. } => 0,
            Failure::NoSignature | Failure::SignatureNotBase64 => 1,
            Failure::BadSignature { .. } | Failure::Certificate { .. } => 2,
            Failure::NoBundle
            | Failure::BundleMalformed { .. }
            | Failure::UntrustedLog { .. }
            | Failure::BadSet { .. }
            | Failure::UnsupportedEntry { .. }
            | Failure::BundleMismatch { .. } => 3,
            Failure::BadPayload { .. }
            | Failure::WrongType { .. }
            | Failure::InvalidSignedReference { .. } => 4,
            Failure::DigestMismatch { .. } => 5,
            Failure::IdentityMismatch { .. } => 6,
        }
    }
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
    #[serde(default)]
    #[allow(dead_code)] // parsed so that its JSON is checked; its content is never trusted
    optional: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Verify one signature layer with one authority. With `rekor: Some`, a legacy bundle must be
/// present and valid: SET signature by a Rekor key whose logID matches, and the Rekor entry
/// body (hashedrekord 0.0.1, or rekord 0.0.1 with an x509 key) must name this payload's
/// sha256, this signature and this public key (for a key) or this signing certificate (for
/// certificates). With `None` the bundle is ignored.
///
/// For [`Authority::Certificates`] the layer must carry its signing certificate
/// ([`super::CERTIFICATE_ANNOTATION`], one PEM certificate) and may carry a chain
/// ([`super::CHAIN_ANNOTATION`], untrusted intermediates). The certificate is checked by
/// [`CertAuthority::verify_leaf_at`] at the bundle's integrated time when `rekor` is `Some`,
/// else at the current time (as cosign with `--insecure-ignore-tlog`; a Fulcio certificate,
/// valid for 10 minutes, then fails as expired).
pub fn verify_layer(
    layer: &SigLayer,
    authority: &Authority,
    expected: &Expected<'_>,
    rekor: Option<&RekorKeys>,
) -> Result<Verified, Failure> {
    if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
        return Err(Failure::NotSimpleSigning {
            media_type: shown(&layer.media_type),
        });
    }
    let signature = layer
        .annotations
        .get(SIGNATURE_ANNOTATION)
        .filter(|s| !s.is_empty())
        .ok_or(Failure::NoSignature)?;
    let signature = decode_base64(signature).ok_or(Failure::SignatureNotBase64)?;
    let (tlog, identity) = match authority {
        Authority::Key(key) => {
            if !key.verifies(&signature, &layer.payload) {
                return Err(Failure::BadSignature {
                    key: key.name().to_owned(),
                });
            }
            let tlog = match rekor {
                None => false,
                Some(rekor) => {
                    let bundle = layer
                        .annotations
                        .get(BUNDLE_ANNOTATION)
                        .ok_or(Failure::NoBundle)?;
                    let signer = rekor_bundle::EntrySigner::Key(key);
                    rekor_bundle::check_bundle(bundle, &layer.payload, &signature, signer, rekor)?;
                    true
                }
            };
            (tlog, None)
        }
        Authority::Certificates(ca) => {
            let (tlog, summary) = check_certificate(layer, ca, &signature, rekor)?;
            (tlog, Some(summary.to_string()))
        }
    };

    let payload: SimpleSigning =
        serde_json::from_slice(&layer.payload).map_err(|e| Failure::BadPayload {
            reason: shown(&e.to_string()),
        })?;
    let critical = payload.critical;
    if critical.kind != COSIGN_SIGNATURE_TYPE {
        return Err(Failure::WrongType {
            found: shown(&critical.kind),
        });
    }
    if critical.image.docker_manifest_digest != expected.digest {
        return Err(Failure::DigestMismatch {
            signed: shown(&critical.image.docker_manifest_digest),
            expected: shown(expected.digest),
        });
    }
    docker_reference::check(&critical.identity.docker_reference, expected)?;
    Ok(Verified {
        key: authority.name().to_owned(),
        tlog,
        identity,
    })
}

/// The certificate half of [`verify_layer`]: the signature with the leaf's key, then the
/// trusted time (the Rekor integration time from a verified bundle about this payload,
/// signature and certificate, or the current time without Rekor), then the chain and identity
/// at that time. Returns whether Rekor was checked and what the leaf says.
fn check_certificate(
    layer: &SigLayer,
    ca: &CertAuthority,
    signature: &[u8],
    rekor: Option<&RekorKeys>,
) -> Result<(bool, LeafSummary), Failure> {
    let (leaf, chain) = layer_certificates(layer, &ca.name)?;
    let leaf = leaf.as_slice();
    let key = crate::verify::cosign::trust::certificates::leaf_public_key_der(&ca.name, leaf)?;
    if !key.verifies(signature, &layer.payload) {
        return Err(Failure::BadSignature {
            key: key.name().to_owned(),
        });
    }

    let (at, source, tlog) = match rekor {
        Some(rekor) => {
            let bundle = layer
                .annotations
                .get(BUNDLE_ANNOTATION)
                .ok_or(Failure::NoBundle)?;
            let signer = rekor_bundle::EntrySigner::Certificate(leaf);
            let at = rekor_bundle::check_bundle(bundle, &layer.payload, signature, signer, rekor)?;
            (at, "Rekor integration time", true)
        }
        // What cosign does with --insecure-ignore-tlog: without a trusted signing time the
        // certificate must be valid now (a 10-minute Fulcio certificate then never is).
        None => (now_unix(), "current time", false),
    };
    let (_, summary) = ca.verify_leaf_at(leaf, &chain, at, source)?;
    Ok((tlog, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosign::CERTIFICATE_ANNOTATION;
    use crate::verify::cosign::PublicKey;
    use crate::verify::cosign::tag::CHAIN_ANNOTATION;
    use crate::verify::cosign::tag::rekor_bundle::tests::{FakeLog, hashedrekord};
    use crate::verify::cosign::trust::keys::tests::signer;
    use base64::Engine as _;
    use oci_client::Reference;
    use sigstore::crypto::{SigStoreSigner, SigningScheme};
    use std::collections::BTreeMap;

    const DIGEST: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
    const REPO: &str = "registry.example.com/app";

    /// A cosign-style compact payload.
    fn payload(reference: &str, digest: &str) -> Vec<u8> {
        format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
        )
        .into_bytes()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn layer(payload: &[u8], sig: &[u8]) -> SigLayer {
        SigLayer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE.to_owned(),
            payload: payload.to_vec(),
            annotations: BTreeMap::from([(SIGNATURE_ANNOTATION.to_owned(), b64(sig))]),
        }
    }

    struct Attestor {
        signer: SigStoreSigner,
        pem: String,
        key: PublicKey,
    }

    impl Attestor {
        fn new(name: &str, scheme: SigningScheme) -> Self {
            let (signer, pem) = signer(scheme);
            let key = PublicKey::from_pem(name, pem.as_bytes()).expect("load key");
            Attestor { signer, pem, key }
        }

        fn signed(&self, payload: &[u8]) -> SigLayer {
            layer(payload, &self.signer.sign(payload).unwrap())
        }
    }

    fn verify(
        layer: &SigLayer,
        key: &PublicKey,
        image: &str,
        identity: IdentityMatch,
        rekor: Option<&RekorKeys>,
    ) -> Result<Verified, Failure> {
        let reference: Reference = image.parse().unwrap();
        verify_layer(
            layer,
            &Authority::Key(key.clone()),
            &Expected {
                digest: DIGEST,
                reference: &reference,
                identity: &identity,
            },
            rekor,
        )
    }

    fn verify_default(layer: &SigLayer, key: &PublicKey) -> Result<Verified, Failure> {
        verify(
            layer,
            key,
            &format!("{REPO}:v1"),
            IdentityMatch::Repository,
            None,
        )
    }

    /// A valid signature verifies for every supported key type (RSA: PKCS#1 v1.5, SHA-256).
    #[test]
    fn valid_signatures_verify() {
        for scheme in [
            SigningScheme::ECDSA_P256_SHA256_ASN1,
            SigningScheme::ECDSA_P384_SHA384_ASN1,
            SigningScheme::ECDSA_P521_SHA512_ASN1,
            SigningScheme::ED25519,
            SigningScheme::RSA_PKCS1_SHA256(2048),
        ] {
            let a = Attestor::new("release", scheme);
            let v = verify_default(&a.signed(&payload(REPO, DIGEST)), &a.key)
                .unwrap_or_else(|e| panic!("{scheme}: {e}"));
            assert_eq!(
                v,
                Verified {
                    key: "release".into(),
                    tlog: false,
                    identity: None,
                }
            );
        }
    }

    /// What current cosign signs that sigstore 0.15 alone cannot check: P-384 over SHA-256 and
    /// Ed25519ph. Both verify through verify_layer (also with a Rekor bundle); another key's
    /// signature, a tampered payload and a corrupted signature do not.
    #[test]
    fn p384_sha256_and_ed25519ph_verify() {
        use crate::verify::cosign::trust::keys::tests::{
            ed25519_signer, ed25519ph_sign, p384_sha256_sign, p384_sha256_signer,
        };
        let p = payload(REPO, DIGEST);
        let tampered = payload("registry.example.com/other", DIGEST);
        let (p384, p384_pem) = p384_sha256_signer(11);
        let (p384_other, _) = p384_sha256_signer(12);
        let (ed, ed_pem) = ed25519_signer(13);
        let (ed_other, _) = ed25519_signer(14);
        let cases = [
            (
                p384_pem,
                p384_sha256_sign(&p384, &p),
                p384_sha256_sign(&p384_other, &p),
                p384_sha256_sign(&p384, &tampered),
            ),
            (
                ed_pem,
                ed25519ph_sign(&ed, &p),
                ed25519ph_sign(&ed_other, &p),
                ed25519ph_sign(&ed, &tampered),
            ),
        ];
        let log = FakeLog::new();
        for (pem, good, other_key, other_payload) in cases {
            let key = PublicKey::from_pem("release", pem.as_bytes()).unwrap();
            let ok = verify_default(&layer(&p, &good), &key)
                .unwrap_or_else(|e| panic!("{}: {e}", key.algorithm()));
            assert_eq!(ok.key, "release");
            let mut l = layer(&p, &good);
            l.annotations
                .insert(BUNDLE_ANNOTATION.into(), log.bundle(&p, &good, &pem));
            let v = verify(&l, &key, REPO, IdentityMatch::Repository, Some(&log.keys()))
                .unwrap_or_else(|e| panic!("{} with bundle: {e}", key.algorithm()));
            assert!(v.tlog);
            let mut corrupted = good.clone();
            if let Some(last) = corrupted.last_mut() {
                *last ^= 1;
            }
            for bad in [other_key, other_payload, corrupted] {
                let err = verify_default(&layer(&p, &bad), &key).unwrap_err();
                assert!(matches!(err, Failure::BadSignature { .. }), "{err}");
            }
        }
    }

    /// RSA-PSS signatures are not what cosign makes for RSA keys, and do not verify.
    #[test]
    fn rsa_pss_is_not_accepted() {
        let (signer, pem) = signer(SigningScheme::RSA_PSS_SHA256(2048));
        let key = PublicKey::from_pem("rsa", pem.as_bytes()).unwrap();
        let p = payload(REPO, DIGEST);
        let err = verify_default(&layer(&p, &signer.sign(&p).unwrap()), &key).unwrap_err();
        assert!(matches!(err, Failure::BadSignature { .. }), "{err}");
    }

    /// Another key's signature is reported as not verifying with this key, by name.
    #[test]
    fn wrong_key() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let b = Attestor::new("release-key", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let err = verify_default(&a.signed(&payload(REPO, DIGEST)), &b.key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signature does not verify with key release-key"
        );
    }

    /// The signature covers the exact bytes: a re-serialized payload (same JSON) fails.
    #[test]
    fn exact_bytes() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let mut l = a.signed(&payload(REPO, DIGEST));
        let v: serde_json::Value = serde_json::from_slice(&l.payload).unwrap();
        l.payload = serde_json::to_vec_pretty(&v).unwrap();
        assert!(matches!(
            verify_default(&l, &a.key),
            Err(Failure::BadSignature { .. })
        ));
    }

    /// Layers of other media types never count, even with a valid signature annotation.
    #[test]
    fn other_media_type() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let mut l = a.signed(&payload(REPO, DIGEST));
        l.media_type = "text/plain".into();
        let err = verify_default(&l, &a.key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer media type text/plain is not a cosign simple-signing signature"
        );
    }

    /// Missing, empty and non-base64 signature annotations; wrapped base64 is accepted.
    #[test]
    fn signature_annotation_forms() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let good = a.signed(&payload(REPO, DIGEST));
        let mut l = good.clone();
        l.annotations.clear();
        assert_eq!(verify_default(&l, &a.key), Err(Failure::NoSignature));
        l.annotations
            .insert(SIGNATURE_ANNOTATION.into(), String::new());
        assert_eq!(verify_default(&l, &a.key), Err(Failure::NoSignature));
        l.annotations
            .insert(SIGNATURE_ANNOTATION.into(), "not base64!".into());
        assert_eq!(verify_default(&l, &a.key), Err(Failure::SignatureNotBase64));
        let sig = &good.annotations[SIGNATURE_ANNOTATION];
        let (head, tail) = sig.split_at(20);
        l.annotations
            .insert(SIGNATURE_ANNOTATION.into(), format!("{head}\n{tail}\r\n"));
        assert!(verify_default(&l, &a.key).is_ok());
    }

    /// A valid signature for another digest is reported with both digests.
    #[test]
    fn digest_mismatch() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let other = format!("sha256:{}", "ab".repeat(32));
        let err = verify_default(&a.signed(&payload(REPO, &other)), &a.key).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("signed digest {other} is not the image digest {DIGEST}")
        );
        assert_eq!(err.specificity(), 5);
    }

    /// A valid signature for another repository (the copied-signature attack) is refused.
    #[test]
    fn copied_from_other_repository() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let l = a.signed(&payload("registry.example.com/other", DIGEST));
        let err = verify_default(&l, &a.key).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signed for registry.example.com/other, not registry.example.com/app"
        );
        // ... unless the policy says any name will do.
        assert!(verify(&l, &a.key, REPO, IdentityMatch::Any, None).is_ok());
    }

    /// Exact and RemapPrefix are applied to the payload's docker-reference.
    #[test]
    fn identity_modes_through_verify_layer() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let tagged = a.signed(&payload(&format!("{REPO}:v1"), DIGEST));
        assert!(
            verify(
                &tagged,
                &a.key,
                &format!("{REPO}:v1"),
                IdentityMatch::Exact,
                None
            )
            .is_ok()
        );
        assert!(
            verify(
                &tagged,
                &a.key,
                &format!("{REPO}:v2"),
                IdentityMatch::Exact,
                None
            )
            .is_err()
        );
        assert!(
            verify(
                &tagged,
                &a.key,
                &format!("{REPO}:v2"),
                IdentityMatch::Repository,
                None
            )
            .is_ok()
        );
        let mirror = IdentityMatch::RemapPrefix {
            prefix: "mirror.local".into(),
            signed_prefix: "registry.example.com".into(),
        };
        assert!(verify(&tagged, &a.key, "mirror.local/app:v1", mirror.clone(), None).is_ok());
        assert!(
            verify(
                &tagged,
                &a.key,
                "mirror.local/app:v1",
                IdentityMatch::Exact,
                None
            )
            .is_err()
        );
    }

    /// Payloads of the wrong type or shape are refused after the signature verified.
    #[test]
    fn payload_shape() {
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let wrong_type = String::from_utf8(payload(REPO, DIGEST))
            .unwrap()
            .replace("cosign container image signature", "something else");
        let err = verify_default(&a.signed(wrong_type.as_bytes()), &a.key).unwrap_err();
        assert!(matches!(err, Failure::WrongType { .. }), "{err}");
        let deep = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{REPO}"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        // Deep nesting in the ignored `optional` is skipped without recursion: fine.
        assert!(verify_default(&a.signed(deep.as_bytes()), &a.key).is_ok());
        let deep_critical = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":{}"#,
            "[".repeat(10_000)
        );
        for bad in [
            &b""[..],
            b"null",
            b"\xff\xfe",
            b"[]",
            br#"{"critical":{"identity":{"docker-reference":5},"image":{"docker-manifest-digest":"x"},"type":"t"}}"#,
            br#"{"critical":{"identity":{"docker-reference":"a"},"image":{"docker-manifest-digest":1e999999},"type":"t"}}"#,
            br#"{"critical":{"type":"a","type":"b","identity":{"docker-reference":"a"},"image":{"docker-manifest-digest":"x"}}}"#,
            deep_critical.as_bytes(),
        ] {
            let err = verify_default(&a.signed(bad), &a.key).unwrap_err();
            assert!(matches!(err, Failure::BadPayload { .. }), "{err}");
            assert!(err.to_string().len() < 300, "message too long: {err}");
        }
    }

    /// A genuine bundle for this exact signature verifies and is reported as tlog.
    #[test]
    fn rekor_bundle_valid() {
        let log = FakeLog::new();
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let p = payload(REPO, DIGEST);
        let sig = a.signer.sign(&p).unwrap();
        let mut l = layer(&p, &sig);
        l.annotations
            .insert(BUNDLE_ANNOTATION.into(), log.bundle(&p, &sig, &a.pem));
        let v = verify(
            &l,
            &a.key,
            REPO,
            IdentityMatch::Repository,
            Some(&log.keys()),
        )
        .unwrap();
        assert!(v.tlog);
        // Without Rekor keys the bundle is ignored.
        assert!(!verify_default(&l, &a.key).unwrap().tlog);
    }

    /// A required bundle must exist, come from a trusted log, carry a valid SET and be about
    /// this payload, signature and key.
    #[test]
    fn rekor_bundle_failures() {
        let log = FakeLog::new();
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let other = Attestor::new("other", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let p = payload(REPO, DIGEST);
        let sig = a.signer.sign(&p).unwrap();
        let keys = log.keys();
        let run = |bundle: Option<String>| {
            let mut l = layer(&p, &sig);
            if let Some(b) = bundle {
                l.annotations.insert(BUNDLE_ANNOTATION.into(), b);
            }
            verify(&l, &a.key, REPO, IdentityMatch::Repository, Some(&keys)).unwrap_err()
        };
        assert_eq!(run(None), Failure::NoBundle);

        // Another entry's genuine bundle (other payload, other signature, other key).
        let p2 = payload("registry.example.com/x", DIGEST);
        let sig2 = other.signer.sign(&p2).unwrap();
        let err = run(Some(log.bundle(&p2, &sig2, &other.pem)));
        assert_eq!(
            err,
            Failure::BundleMismatch {
                what: "payload hash",
                log_index: 42
            }
        );
        assert_eq!(
            err.to_string(),
            "Rekor bundle (entry 42) does not match this signature: different payload hash"
        );
        // Same payload, other signature.
        let sig3 = a.signer.sign(&p).unwrap();
        assert_ne!(sig3, sig, "ECDSA signatures are randomized");
        let err = run(Some(log.bundle(&p, &sig3, &a.pem)));
        assert!(
            matches!(
                err,
                Failure::BundleMismatch {
                    what: "signature",
                    ..
                }
            ),
            "{err}"
        );
        // Right payload and signature, but the entry names another key.
        let err = run(Some(log.bundle(&p, &sig, &other.pem)));
        assert!(
            matches!(
                err,
                Failure::BundleMismatch {
                    what: "public key",
                    ..
                }
            ),
            "{err}"
        );
        // The entry holds a certificate instead of the key.
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let err = run(Some(log.bundle(&p, &sig, cert)));
        assert!(
            matches!(
                err,
                Failure::BundleMismatch {
                    what: "public key",
                    ..
                }
            ),
            "{err}"
        );

        // Untrusted log.
        let stranger = FakeLog::new();
        let err = run(Some(stranger.bundle(&p, &sig, &a.pem)));
        assert!(matches!(err, Failure::UntrustedLog { .. }), "{err}");

        // SET no longer covers the payload once integratedTime is changed.
        let good = log.bundle(&p, &sig, &a.pem);
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["Payload"]["integratedTime"] = 1.into();
        let err = run(Some(v.to_string()));
        assert!(matches!(err, Failure::BadSet { .. }), "{err}");
        // Nor once the body is swapped for another entry's body.
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v["Payload"]["body"] =
            b64(hashedrekord(&p2, &sig2, &other.pem).to_string().as_bytes()).into();
        let err = run(Some(v.to_string()));
        assert!(matches!(err, Failure::BadSet { .. }), "{err}");
    }

    /// Ranking picks the near miss over "does not verify" and "not a signature".
    #[test]
    fn specificity_ranking() {
        let failures = [
            Failure::NotSimpleSigning {
                media_type: "text/plain".into(),
            },
            Failure::BadSignature { key: "k".into() },
            Failure::IdentityMismatch {
                signed: "a".into(),
                image: "b".into(),
            },
            Failure::NoBundle,
        ];
        let best = failures.iter().max_by_key(|f| f.specificity()).unwrap();
        assert!(matches!(best, Failure::IdentityMismatch { .. }));
        assert!(
            Failure::NoBundle.specificity()
                > Failure::BadSignature { key: "k".into() }.specificity()
        );
    }

    mod certificates {
        //! The certificate branch of verify_layer, with certificates made by x509's tests.

        use super::*;
        use crate::verify::cosign::trust::certificates::tests::{
            Made, Spec, T, identity, make, pki,
        };

        fn cert_layer(leaf: &Made, payload: &[u8]) -> (SigLayer, Vec<u8>) {
            let sig = leaf.signer.sign(payload).unwrap();
            let mut l = layer(payload, &sig);
            l.annotations
                .insert(CERTIFICATE_ANNOTATION.into(), leaf.pem());
            (l, sig)
        }

        fn run(
            l: &SigLayer,
            ca: &CertAuthority,
            rekor: Option<&RekorKeys>,
        ) -> Result<Verified, Failure> {
            let reference: Reference = format!("{REPO}:v1").parse().unwrap();
            verify_layer(
                l,
                &Authority::Certificates(ca.clone()),
                &Expected {
                    digest: DIGEST,
                    reference: &reference,
                    identity: &IdentityMatch::Repository,
                },
                rekor,
            )
        }

        fn ca_for(root: &Made) -> CertAuthority {
            CertAuthority::from_der(
                "test-ca",
                vec![root.der.clone()],
                vec![],
                identity("dev@example.com", "https://issuer.example.com"),
            )
            .unwrap()
        }

        fn reason(r: Result<Verified, Failure>) -> String {
            match r {
                Err(Failure::Certificate { reason }) => reason,
                other => panic!("not a certificate failure: {other:?}"),
            }
        }

        /// Without Rekor the chain is checked now: a current certificate verifies (with the
        /// chain annotation), a 2023 one is expired and says it was checked at the current
        /// time.
        #[test]
        fn without_rekor_the_time_is_now() {
            let now = now_unix();
            let (root, inter) = pki();
            let ca = ca_for(&root);
            let leaf = make(&Spec::leaf(now), Some(&inter));
            let (mut l, _) = cert_layer(&leaf, &payload(REPO, DIGEST));
            l.annotations.insert(
                CHAIN_ANNOTATION.into(),
                format!("{}\n", leaf_chain(&inter, &root)),
            );
            let v = run(&l, &ca, None).unwrap();
            assert_eq!(
                v,
                Verified {
                    key: "test-ca".into(),
                    tlog: false,
                    identity: Some("dev@example.com (issuer https://issuer.example.com)".into()),
                }
            );
            let old = make(&Spec::leaf(T), Some(&inter));
            let (mut l, _) = cert_layer(&old, &payload(REPO, DIGEST));
            l.annotations
                .insert(CHAIN_ANNOTATION.into(), leaf_chain(&inter, &root));
            let msg = reason(run(&l, &ca, None));
            assert!(
                msg.starts_with("expired at 2023-11-14T22:22:20Z (checked at current time "),
                "{msg}"
            );
        }

        fn leaf_chain(inter: &Made, root: &Made) -> String {
            format!("{}{}", inter.pem(), root.pem())
        }

        /// With Rekor the chain is checked at the bundle's integration time, and the entry
        /// must name this very certificate: not its bare key, not another certificate.
        #[test]
        fn with_rekor_the_time_is_the_integration_time() {
            let log = FakeLog::new();
            let keys = log.keys();
            let (root, inter) = pki();
            let ca = ca_for(&root);
            let p = payload(REPO, DIGEST);
            let leaf = make(&Spec::leaf(T), Some(&inter));
            let (mut l, sig) = cert_layer(&leaf, &p);
            l.annotations.insert(CHAIN_ANNOTATION.into(), inter.pem());
            assert_eq!(run(&l, &ca, Some(&keys)), Err(Failure::NoBundle));

            let mut good = l.clone();
            good.annotations
                .insert(BUNDLE_ANNOTATION.into(), log.bundle(&p, &sig, &leaf.pem()));
            let v = run(&good, &ca, Some(&keys)).unwrap();
            assert!(v.tlog);
            assert_eq!(v.key, "test-ca");

            // The entry holds the certificate's public key instead of the certificate.
            let key_pem = crate::verify::cosign::trust::certificates::tests::public_key_pem(&leaf);
            let mut wrong = l.clone();
            wrong
                .annotations
                .insert(BUNDLE_ANNOTATION.into(), log.bundle(&p, &sig, &key_pem));
            let err = run(&wrong, &ca, Some(&keys)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Rekor bundle (entry 42) does not match this signature: different certificate"
            );
            // Another certificate (even one for the same identity).
            let other = make(&Spec::leaf(T), Some(&inter));
            wrong
                .annotations
                .insert(BUNDLE_ANNOTATION.into(), log.bundle(&p, &sig, &other.pem()));
            assert!(matches!(
                run(&wrong, &ca, Some(&keys)),
                Err(Failure::BundleMismatch {
                    what: "certificate",
                    ..
                })
            ));
            // A certificate valid now but not at the integration time.
            let now_leaf = make(&Spec::leaf(now_unix()), Some(&inter));
            let (mut l, sig) = cert_layer(&now_leaf, &p);
            l.annotations.insert(
                BUNDLE_ANNOTATION.into(),
                log.bundle(&p, &sig, &now_leaf.pem()),
            );
            l.annotations.insert(CHAIN_ANNOTATION.into(), inter.pem());
            let msg = reason(run(&l, &ca, Some(&keys)));
            assert!(
                msg.starts_with("not valid before ")
                    && msg.ends_with("(checked at Rekor integration time 2023-11-14T22:13:20Z)"),
                "{msg}"
            );
        }

        /// Missing, multiple and malformed certificate annotations, a malformed chain, and a
        /// signature the leaf's key did not make, each say what is wrong.
        #[test]
        fn annotation_problems() {
            let (root, inter) = pki();
            let ca = ca_for(&root);
            let p = payload(REPO, DIGEST);
            let leaf = make(&Spec::leaf(now_unix()), Some(&inter));
            let (good, _) = cert_layer(&leaf, &p);

            let mut l = good.clone();
            l.annotations.remove(CERTIFICATE_ANNOTATION);
            assert_eq!(
                reason(run(&l, &ca, None)),
                "layer has no dev.sigstore.cosign/certificate annotation, but attestor test-ca accepts only certificate-signed signatures"
            );
            let mut l = good.clone();
            l.annotations
                .insert(CERTIFICATE_ANNOTATION.into(), leaf_chain(&leaf, &inter));
            assert_eq!(
                reason(run(&l, &ca, None)),
                "the dev.sigstore.cosign/certificate annotation holds 2 certificates; exactly one expected"
            );
            let mut l = good.clone();
            l.annotations.insert(
                CERTIFICATE_ANNOTATION.into(),
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".into(),
            );
            assert!(
                reason(run(&l, &ca, None))
                    .starts_with("the signing certificate is not a valid DER X.509 certificate")
            );
            let mut l = good.clone();
            l.annotations.insert(
                CHAIN_ANNOTATION.into(),
                "-----BEGIN CERTIFICATE-----\n".into(),
            );
            assert!(reason(run(&l, &ca, None)).starts_with("dev.sigstore.cosign/chain: "));
            l.annotations.insert(
                CHAIN_ANNOTATION.into(),
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n".into(),
            );
            assert!(
                reason(run(&l, &ca, None))
                    .starts_with("certificate #1 of the signature's chain is not a valid DER")
            );

            // Signed by someone else's key, presenting this certificate.
            let other = Attestor::new("x", SigningScheme::ECDSA_P256_SHA256_ASN1);
            let mut l = other.signed(&p);
            l.annotations
                .insert(CERTIFICATE_ANNOTATION.into(), leaf.pem());
            assert_eq!(
                run(&l, &ca, None).unwrap_err().to_string(),
                "signature does not verify with key test-ca (signing certificate)"
            );
            // The identity is still checked after a good signature.
            let wrong_id = CertAuthority::from_der(
                "test-ca",
                vec![root.der.clone()],
                vec![inter.der.clone()],
                identity("someone@else", "https://issuer.example.com"),
            )
            .unwrap();
            assert_eq!(
                reason(run(&good, &wrong_id, None)),
                "identity dev@example.com does not match subject \"someone@else\""
            );
        }

        /// Arbitrary bytes in the certificate, chain and bundle annotations never panic.
        #[test]
        fn no_panic_on_noise() {
            let log = FakeLog::new();
            let keys = log.keys();
            let (root, inter) = pki();
            let ca = ca_for(&root);
            let p = payload(REPO, DIGEST);
            let leaf = make(&Spec::leaf(T), Some(&inter));
            let (good, sig) = cert_layer(&leaf, &p);
            let fields = [
                (CERTIFICATE_ANNOTATION, leaf.pem()),
                (CHAIN_ANNOTATION, leaf_chain(&inter, &root)),
                (BUNDLE_ANNOTATION, log.bundle(&p, &sig, &leaf.pem())),
            ];
            let mut state: u64 = 0x51_7cc1_b727_220a;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for round in 0..300 {
                let mut l = good.clone();
                for (annotation, text) in &fields {
                    let mut v = text.clone().into_bytes();
                    for _ in 0..(next() % 3) {
                        let i = (next() as usize) % v.len();
                        v[i] = next() as u8;
                    }
                    if next() % 5 == 0 {
                        v.truncate((next() as usize) % (v.len() + 1));
                    }
                    l.annotations.insert(
                        (*annotation).to_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    );
                }
                let rekor = (round % 2 == 0).then_some(&keys);
                let _ = run(&l, &ca, rekor);
            }
            // Unchanged, it verifies (so the noise hit a path that works).
            let mut l = good;
            for (annotation, text) in fields {
                l.annotations.insert(annotation.to_owned(), text);
            }
            assert!(run(&l, &ca, Some(&keys)).is_ok());
        }

        /// A key authority ignores certificate annotations; a certificate authority refuses a
        /// key-signed layer (no certificate) without trying anything else.
        #[test]
        fn authorities_do_not_mix() {
            let a = Attestor::new("k", SigningScheme::ECDSA_P256_SHA256_ASN1);
            let (root, inter) = pki();
            let leaf = make(&Spec::leaf(now_unix()), Some(&inter));
            let mut l = a.signed(&payload(REPO, DIGEST));
            l.annotations
                .insert(CERTIFICATE_ANNOTATION.into(), leaf.pem());
            assert!(verify_default(&l, &a.key).is_ok());
            assert!(matches!(
                run(&l, &ca_for(&root), None),
                Err(Failure::BadSignature { .. })
            ));
        }
    }

    /// Text from the layer is truncated and escaped in messages.
    #[test]
    fn messages_are_sanitized() {
        let mut l = layer(b"{}", b"sig");
        l.media_type = format!("evil\n\u{202e}{}", "x".repeat(500));
        let err = verify_default(&l, &Attestor::new("a", SigningScheme::ED25519).key).unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\u{202e}'), "{msg}");
        assert!(msg.len() < 250, "{msg}");
    }

    /// Arbitrary bytes in every field never panic (a small deterministic fuzz).
    #[test]
    fn no_panic_on_noise() {
        let log = FakeLog::new();
        let a = Attestor::new("a", SigningScheme::ECDSA_P256_SHA256_ASN1);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let p = payload(REPO, DIGEST);
        let sig = a.signer.sign(&p).unwrap();
        let bundle = log.bundle(&p, &sig, &a.pem);
        for _ in 0..300 {
            let mut noisy = |s: &[u8]| {
                let mut v = s.to_vec();
                let n = (next() % 4) as usize;
                for _ in 0..n {
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
            let mut l = SigLayer {
                media_type: SIMPLE_SIGNING_MEDIA_TYPE.into(),
                payload: noisy(&p),
                annotations: BTreeMap::new(),
            };
            l.annotations.insert(
                SIGNATURE_ANNOTATION.into(),
                String::from_utf8_lossy(&noisy(b64(&sig).as_bytes())).into_owned(),
            );
            l.annotations.insert(
                BUNDLE_ANNOTATION.into(),
                String::from_utf8_lossy(&noisy(bundle.as_bytes())).into_owned(),
            );
            let _ = verify(&l, &a.key, REPO, IdentityMatch::Exact, Some(&log.keys()));
            let _ = PublicKey::from_pem("n", &noisy(a.pem.as_bytes()));
        }
    }
}
