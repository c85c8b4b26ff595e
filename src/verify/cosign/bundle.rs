//! Sigstore bundles (`application/vnd.dev.sigstore.bundle…`, v0.1 to v0.3): what cosign 3
//! writes by default, for `cosign sign` (a DSSE envelope over an in-toto Statement with
//! predicate type [`SIGN_PREDICATE_TYPE`] and the image digest as subject) and for
//! `cosign attest` (the attestation's predicate type), and what `cosign sign-blob --bundle`
//! writes (a message signature or a DSSE envelope over a blob).
//!
//! # Who checks what
//!
//! A bundle is verified against one attestor: its [`Authority`] (a key, or a certificate
//! authority with the identity the signing certificate must carry) and its [`Transparency`]
//! (trusted Rekor logs, timestamp authorities, CT logs, Fulcio CAs, and how much of that
//! proof it requires).
//!
//! - When the bundle carries transparency-log entries or RFC 3161 timestamps and the attestor
//!   trusts logs or timestamp authorities, the Sigstore project's `sigstore-verify` checks the
//!   bundle: the signature (DSSE PAE, or the message signature over the artifact), Rekor v1
//!   SETs, inclusion proofs and checkpoints (Rekor v1 and v2), RFC 3161 timestamps, the log
//!   entries' consistency with this bundle, and for Fulcio certificates the chain to the
//!   trusted root's CAs at every verified signing time (each CA, log and TSA within its
//!   `validFor`) and the SCT when CT logs are trusted. It passes the 47 community conformance
//!   cases (`tests/conformance.rs`). What it lacks, this module adds:
//!   - identity matching by regular expression and on every SAN (sigstore-verify matches one
//!     identity exactly): [`CertAuthority`]'s identity is checked on the leaf;
//!   - your own PKI: sigstore-verify takes every certificate of a trusted root's CA as a trust
//!     anchor and requires the code-signing EKU (Go, and so cosign, treat a missing EKU as any
//!     usage); certificates of a `certificates` attestor are checked by [`CertAuthority`] at
//!     every verified signing time instead;
//!   - how much proof the attestor requires ([`Transparency::require_tlog`],
//!     [`Transparency::min_timestamps`]).
//! - Otherwise (a key-signed cosign 3 bundle carries only a public-key hint: no log entry, no
//!   timestamp; or the attestor trusts no log and no timestamp authority) sigstore-verify
//!   refuses the bundle outright ("must have at least one tlog entry or timestamp"), even
//!   with its `skip_tlog_unsafe`, where cosign 3 with `--insecure-ignore-tlog` accepts it. If
//!   the attestor requires no proof, the signature is checked here: with the key, or with the
//!   certificate's key once [`CertAuthority`] has checked the certificate at the current time
//!   (cosign's behaviour without a trusted time). Evidence the attestor cannot check is
//!   ignored, as a legacy Rekor bundle is for attestors without Rekor keys.
//!
//! Then, in both cases, the content is bound to what the caller expects: a DSSE payload must
//! be an in-toto statement whose subject carries the artifact's sha256 digest and, when asked,
//! whose predicate type is the expected one; a message signature's digest must be the
//! artifact's. The statement is parsed by [`Statement::parse`] (serde_json, never
//! re-serialized).
//!
//! # Bounds
//!
//! Bundles of at most [`MAX_BUNDLE_BYTES`]; serde_json's recursion limit bounds nesting; a
//! DSSE envelope in a bundle has exactly one signature (sigstore-types refuses others).

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use sigstore_types::bundle::VerificationMaterialContent;
use sigstore_types::{Bundle, SignatureContent};

use super::intoto::{IN_TOTO_PAYLOAD_TYPE, Statement, pae};
use super::trust::transparency::Transparency;
use super::{Authority, CertAuthority, Failure, PublicKey, hex, now_unix, shown};

/// Media types of Sigstore bundles start with this (cosign checks the same prefix on the
/// layer of a referrer).
pub const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// The predicate type of the statement `cosign sign` (3.x) signs for an image.
pub const SIGN_PREDICATE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";
/// Largest bundle accepted (an SBOM attestation can be several MB).
pub const MAX_BUNDLE_BYTES: usize = 32 << 20;
/// Longest text taken from a verifier's message into ours.
const MAX_REASON: usize = 240;

/// What a bundle must be about.
#[derive(Debug, Clone, Copy)]
pub enum Artifact<'a> {
    /// A digest, `sha256:<64 hex>` (an image's manifest digest).
    Digest(&'a str),
    /// The artifact's bytes (a blob).
    Blob(&'a [u8]),
}

impl Artifact<'_> {
    /// The artifact's sha256, lowercase hex, if it is one (a digest must be canonical).
    fn sha256_hex(&self) -> Option<String> {
        match self {
            Artifact::Digest(d) => super::intoto::sha256_hex(d).map(str::to_ascii_lowercase),
            Artifact::Blob(b) => Some(hex(&Sha256::digest(b))),
        }
    }
}

/// What the caller expects of a bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleExpect<'a> {
    /// What it must be about.
    pub artifact: Artifact<'a>,
    /// The predicate type its statement must have (e.g. [`SIGN_PREDICATE_TYPE`] for an
    /// image signature); `None`: any (a message signature has none, and only passes then).
    pub predicate_type: Option<&'a str>,
}

/// A bundle that verified.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedBundle {
    /// For certificate signers, what the signing certificate says, e.g.
    /// `dev@example.com (issuer https://issuer.example.com)` (escaped for display).
    pub identity: Option<String>,
    /// The signed statement (DSSE content); `None` for a message signature.
    pub statement: Option<Statement>,
    /// Whether a transparency-log entry's inclusion was verified.
    pub tlog: bool,
    /// How many RFC 3161 timestamps were verified.
    pub timestamps: usize,
    /// The earliest verified signing time (Unix seconds): from a timestamp or a Rekor SET.
    pub signed_at: Option<i64>,
}

/// Why a bundle did not verify. Messages are operator-facing; text from the bundle or from
/// the verifier is truncated and escaped. [`BundleFailure::specificity`] ranks failures
/// across bundles and attestors as the other formats' failures do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleFailure {
    /// Not a Sigstore bundle, or one this version cannot read.
    #[error("not a Sigstore bundle cri-guard can read: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify with the attestor's key or the certificate's key.
    #[error("bundle signature does not verify with {signer}: {reason}")]
    Signature {
        /// `key NAME` or the certificate's identity.
        signer: String,
        /// What failed.
        reason: String,
    },
    /// The signing certificate is missing, untrusted or for another identity.
    #[error("bundle certificate: {reason}")]
    Certificate {
        /// What is wrong.
        reason: String,
    },
    /// The key or certificate authority does not fit the bundle's verification material.
    #[error("{reason}")]
    WrongMaterial {
        /// What is wrong.
        reason: String,
    },
    /// A transparency-log entry does not verify (inclusion proof, checkpoint, SET, unknown
    /// log, or an entry about something else).
    #[error("bundle transparency log: {reason}")]
    Log {
        /// What failed.
        reason: String,
    },
    /// An RFC 3161 timestamp does not verify, or no trusted signing time exists.
    #[error("bundle timestamp: {reason}")]
    Timestamp {
        /// What failed.
        reason: String,
    },
    /// The bundle lacks proof the attestor requires.
    #[error("{reason}")]
    Missing {
        /// What is missing, and which attestor setting requires it.
        reason: String,
    },
    /// A valid signature over something that is not an in-toto statement.
    #[error("bundle content: {reason}")]
    Statement {
        /// What is wrong.
        reason: String,
    },
    /// A valid bundle of another predicate type (e.g. an attestation where a signature is
    /// expected).
    #[error("bundle statement has predicate type {found}, not {expected}")]
    PredicateType {
        /// The statement's predicate type.
        found: String,
        /// The expected one.
        expected: String,
    },
    /// A valid bundle about another artifact.
    #[error("{reason}")]
    Subject {
        /// What it is about instead.
        reason: String,
    },
}

impl BundleFailure {
    /// How close the bundle came to verifying; the higher, the more worth reporting (the
    /// same scale as `Failure::specificity` and `AttestationFailure::specificity`).
    pub fn specificity(&self) -> u8 {
        match self {
            BundleFailure::Malformed { .. } => 1,
            BundleFailure::Signature { .. }
            | BundleFailure::Certificate { .. }
            | BundleFailure::WrongMaterial { .. } => 2,
            BundleFailure::Log { .. }
            | BundleFailure::Timestamp { .. }
            | BundleFailure::Missing { .. } => 3,
            BundleFailure::Statement { .. } | BundleFailure::PredicateType { .. } => 4,
            BundleFailure::Subject { .. } => 5,
        }
    }
}

/// Text from a bundle or a verifier, made safe for a message: at most [`MAX_REASON`]
/// characters, anything but printable ASCII escaped.
fn reason(s: &str) -> String {
    super::shown_max(s, MAX_REASON)
}

/// Parses a bundle, bounded by [`MAX_BUNDLE_BYTES`].
pub fn parse_bundle(json: &[u8]) -> Result<Bundle, BundleFailure> {
    let malformed = |r: String| BundleFailure::Malformed { reason: r };
    if json.len() > MAX_BUNDLE_BYTES {
        return Err(malformed(format!(
            "{} bytes; at most {MAX_BUNDLE_BYTES} are accepted",
            json.len()
        )));
    }
    let text =
        std::str::from_utf8(json).map_err(|_| malformed("the bundle is not UTF-8 JSON".into()))?;
    Bundle::from_json(text).map_err(|e| malformed(reason(&e.to_string())))
}

/// Verifies a Sigstore bundle (JSON) with one attestor, bound to `expect` (see the module
/// documentation for the order of checks and who does what).
pub fn verify_bundle(
    json: &[u8],
    authority: &Authority,
    trust: &Transparency,
    expect: &BundleExpect<'_>,
) -> Result<VerifiedBundle, BundleFailure> {
    let bundle = parse_bundle(json)?;
    let sha256 = expect
        .artifact
        .sha256_hex()
        .ok_or_else(|| BundleFailure::Subject {
            reason:
                "the artifact digest is not a sha256 digest; bundles are matched by sha256 only"
                    .into(),
        })?;
    let material = &bundle.verification_material;
    let timestamps = material
        .timestamp_verification_data
        .rfc3161_timestamps
        .len();
    let evidence = !material.tlog_entries.is_empty() || timestamps > 0;
    let mut verified = match trust.verifier() {
        Some(verifier) if evidence && trust.can_check_evidence() => {
            with_sigstore(verifier, &bundle, authority, trust, expect, &sha256)?
        }
        _ => {
            require_nothing(authority, trust, evidence)?;
            signature_only(&bundle, authority, expect, &sha256)?
        }
    };
    verified.statement = bind(&bundle, expect, &sha256)?;
    Ok(verified)
}

/// Without checkable evidence, only an attestor that requires none may pass.
fn require_nothing(
    authority: &Authority,
    trust: &Transparency,
    evidence: bool,
) -> Result<(), BundleFailure> {
    let name = authority.name();
    if trust.require_tlog {
        return Err(BundleFailure::Missing {
            reason: if evidence {
                format!(
                    "the bundle's transparency-log evidence cannot be checked with attestor {name}'s trust material, which it requires"
                )
            } else {
                format!(
                    "the bundle has no transparency-log entry, but attestor {name} requires one (its rekorKey or trustedRoot; set ignoreTlog = true to accept signatures without)"
                )
            },
        });
    }
    if trust.min_timestamps > 0 {
        return Err(BundleFailure::Missing {
            reason: format!(
                "the bundle has no RFC 3161 timestamp cri-guard can check, but attestor {name} requires {} (minTimestamps)",
                trust.min_timestamps
            ),
        });
    }
    Ok(())
}

/// The leaf and the untrusted chain (DER) of a bundle's certificate material.
fn certificates(bundle: &Bundle) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    match &bundle.verification_material.content {
        VerificationMaterialContent::Certificate(c) => {
            Some((c.raw_bytes.as_bytes().to_vec(), Vec::new()))
        }
        VerificationMaterialContent::X509CertificateChain { certificates } => {
            let (leaf, rest) = certificates.split_first()?;
            Some((
                leaf.raw_bytes.as_bytes().to_vec(),
                rest.iter()
                    .take(super::MAX_CHAIN_CERTIFICATES + 1)
                    .map(|c| c.raw_bytes.as_bytes().to_vec())
                    .collect(),
            ))
        }
        _ => None,
    }
}

fn no_certificate(ca: &CertAuthority) -> BundleFailure {
    BundleFailure::WrongMaterial {
        reason: format!(
            "the bundle carries no signing certificate (it is key-signed, or its certificate chain is empty), but attestor {} accepts only certificates from its CA",
            ca.name
        ),
    }
}

fn certificate_failure(f: Failure) -> BundleFailure {
    match f {
        Failure::Certificate { reason } => BundleFailure::Certificate { reason },
        other => BundleFailure::Certificate {
            reason: other.to_string(),
        },
    }
}

/// The sigstore-verify path: the bundle has evidence the attestor can check.
fn with_sigstore(
    verifier: &sigstore_verify::Verifier,
    bundle: &Bundle,
    authority: &Authority,
    trust: &Transparency,
    expect: &BundleExpect<'_>,
    sha256: &str,
) -> Result<VerifiedBundle, BundleFailure> {
    use sigstore_types::{DerPublicKey, Sha256Hash};
    use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy};

    let artifact: sigstore_types::Artifact<'_> = match expect.artifact {
        Artifact::Blob(b) => b.into(),
        Artifact::Digest(_) => Sha256Hash::from_hex(sha256)
            .map_err(|e| BundleFailure::Subject {
                reason: reason(&e.to_string()),
            })?
            .into(),
    };
    let signer = match authority {
        Authority::Key(k) => format!("key {}", k.name()),
        Authority::Certificates(ca) => format!("the signing certificate (attestor {})", ca.name),
    };
    let own_chain = trust.certificate_authorities() == 0;
    let result = match authority {
        Authority::Key(key) => {
            if certificates(bundle).is_some() {
                return Err(BundleFailure::WrongMaterial {
                    reason: format!(
                        "the bundle is signed with a certificate, but attestor {} is the key {} (give the certificate's CA as a keyless or certificates attestor)",
                        key.name(),
                        key.name()
                    ),
                });
            }
            let mut policy =
                PublicKeyVerificationPolicy::new(DerPublicKey::new(key.spki_der().to_vec()));
            if !trust.require_tlog {
                policy = policy.skip_tlog_unsafe();
            }
            verifier.verify(artifact, bundle, &policy)
        }
        Authority::Certificates(ca) => {
            if certificates(bundle).is_none() {
                return Err(no_certificate(ca));
            }
            let mut policy = VerificationPolicy::any_identity();
            if !trust.require_tlog {
                policy = policy.skip_tlog_unsafe();
            }
            if own_chain {
                // Your own PKI: the chain is checked below, at every verified time.
                policy = policy.skip_certificate_chain();
            } else if trust.ct_logs() == 0 {
                policy = policy.skip_sct();
            }
            verifier.verify(artifact, bundle, &policy)
        }
    }
    .map_err(|e| from_sigstore(e, &signer, bundle, sha256))?;

    let times: Vec<i64> = result
        .verified_timestamps()
        .iter()
        .map(|t| t.as_second())
        .collect();
    let identity = match authority {
        Authority::Key(_) => None,
        Authority::Certificates(ca) => {
            let (leaf, chain) = certificates(bundle).ok_or_else(|| no_certificate(ca))?;
            let summary = if own_chain {
                if times.is_empty() {
                    return Err(BundleFailure::Timestamp {
                        reason: "no verified signing time to check the certificate at".into(),
                    });
                }
                let mut summary = None;
                for &t in &times {
                    summary = Some(
                        ca.verify_leaf_at(&leaf, &chain, t, "verified signing time")
                            .map_err(certificate_failure)?
                            .1,
                    );
                }
                summary
            } else {
                Some(ca.check_identity(&leaf).map_err(certificate_failure)?)
            };
            summary.map(|s| s.to_string())
        }
    };

    let entries = bundle.verification_material.tlog_entries.len();
    if trust.require_tlog && (!result.tlog_verified() || entries == 0) {
        return Err(BundleFailure::Missing {
            reason: format!(
                "the bundle's transparency-log entry was not verified, but attestor {} requires one",
                authority.name()
            ),
        });
    }
    let timestamps = bundle
        .verification_material
        .timestamp_verification_data
        .rfc3161_timestamps
        .len();
    if timestamps < trust.min_timestamps {
        return Err(BundleFailure::Missing {
            reason: format!(
                "the bundle has {timestamps} RFC 3161 timestamp(s), but attestor {} requires {} (minTimestamps)",
                authority.name(),
                trust.min_timestamps
            ),
        });
    }
    Ok(VerifiedBundle {
        identity,
        statement: None,
        tlog: result.tlog_verified(),
        timestamps,
        signed_at: times.iter().copied().min(),
    })
}

/// Maps a sigstore-verify failure to ours. A subject mismatch is described from the
/// statement (sigstore-verify checks it after the signature).
fn from_sigstore(
    e: sigstore_verify::Error,
    signer: &str,
    bundle: &Bundle,
    sha256: &str,
) -> BundleFailure {
    use sigstore_verify::Error as E;
    let text = reason(&e.to_string());
    match e {
        E::SignatureInvalid(_) | E::Crypto(_) => BundleFailure::Signature {
            signer: signer.to_owned(),
            reason: text,
        },
        E::ArtifactMismatch(_) => match statement_of(bundle) {
            Some(Ok(statement)) => subject_mismatch(&statement, sha256),
            _ => BundleFailure::Subject {
                reason: format!("the bundle is about another artifact: {text}"),
            },
        },
        E::Certificate(_) | E::IdentityMismatch { .. } | E::IssuerMismatch { .. } => {
            BundleFailure::Certificate { reason: text }
        }
        E::TransparencyLog(_) => BundleFailure::Log { reason: text },
        E::Timestamp(_) => BundleFailure::Timestamp { reason: text },
        E::Bundle(b) => {
            use sigstore_verify::bundle::Error as B;
            match b {
                B::MissingInclusionPromise(_)
                | B::MissingInclusionProof(_)
                | B::MissingCheckpoint => BundleFailure::Log { reason: text },
                B::MissingSigningTimeEvidence | B::MissingTimestamp => {
                    BundleFailure::Timestamp { reason: text }
                }
                _ => BundleFailure::Malformed { reason: text },
            }
        }
        E::UnsupportedBundle(ref m) | E::InvalidBundle(ref m) if m.contains("statement") => {
            BundleFailure::Statement { reason: text }
        }
        _ => BundleFailure::Malformed { reason: text },
    }
}

/// The signature-only path: no evidence, or none the attestor can check.
fn signature_only(
    bundle: &Bundle,
    authority: &Authority,
    expect: &BundleExpect<'_>,
    sha256: &str,
) -> Result<VerifiedBundle, BundleFailure> {
    let (key, identity, signer) = match authority {
        Authority::Key(key) => {
            if certificates(bundle).is_some() {
                return Err(BundleFailure::WrongMaterial {
                    reason: format!(
                        "the bundle is signed with a certificate, but attestor {} is a key",
                        key.name()
                    ),
                });
            }
            (key.clone(), None, format!("key {}", key.name()))
        }
        Authority::Certificates(ca) => {
            let (leaf, chain) = certificates(bundle).ok_or_else(|| no_certificate(ca))?;
            // No trusted time: the certificate must be valid now (cosign without a log or
            // timestamp; a 10-minute Fulcio certificate then never is).
            let (key, summary) = ca
                .verify_leaf_at(&leaf, &chain, now_unix(), "current time")
                .map_err(certificate_failure)?;
            let signer = format!(
                "the certificate of {} (attestor {})",
                shown(&summary.subjects.join(", ")),
                ca.name
            );
            (key, Some(summary.to_string()), signer)
        }
    };
    let ok = match &bundle.content {
        SignatureContent::DsseEnvelope(env) => key.verifies(
            env.signature.sig.as_bytes(),
            &pae(&env.payload_type, env.payload.as_bytes()),
        ),
        SignatureContent::MessageSignature(m) => {
            if let Some(d) = &m.message_digest {
                let same = d.algorithm == sigstore_types::HashAlgorithm::Sha2256
                    && hex(d.digest.as_bytes()) == sha256;
                if !same {
                    return Err(BundleFailure::Subject {
                        reason: format!(
                            "the bundle's message digest is not the artifact's sha256:{sha256}"
                        ),
                    });
                }
            }
            message_signature_verifies(&key, m.signature.as_bytes(), expect, sha256)
        }
        _ => {
            return Err(BundleFailure::Malformed {
                reason: "the bundle holds neither a DSSE envelope nor a message signature".into(),
            });
        }
    };
    if !ok {
        return Err(BundleFailure::Signature {
            signer,
            reason: match &bundle.content {
                SignatureContent::DsseEnvelope(env) => {
                    format!("DSSE PAE over payloadType {}", shown(&env.payload_type))
                }
                _ => "message signature over the artifact".into(),
            },
        });
    }
    Ok(VerifiedBundle {
        identity,
        statement: None,
        tlog: false,
        timestamps: 0,
        signed_at: None,
    })
}

/// A message signature over the artifact: over its bytes, or (given only its digest) over
/// the sha256 digest with the key's prehashed scheme.
fn message_signature_verifies(
    key: &PublicKey,
    sig: &[u8],
    expect: &BundleExpect<'_>,
    sha256: &str,
) -> bool {
    match expect.artifact {
        Artifact::Blob(b) => key.verifies(sig, b),
        Artifact::Digest(_) => {
            use sigstore_verify::crypto::{KeyAlgorithm, verify_signature_prehashed};
            let der = sigstore_types::DerPublicKey::new(key.spki_der().to_vec());
            let Ok(algorithm) = KeyAlgorithm::from_spki(&der) else {
                return false;
            };
            let Ok(scheme) =
                algorithm.resolve_signing_scheme(sigstore_types::HashAlgorithm::Sha2256)
            else {
                return false;
            };
            let Ok(digest) = sigstore_types::Sha256Hash::from_hex(sha256) else {
                return false;
            };
            verify_signature_prehashed(
                &der,
                digest.as_bytes(),
                &sigstore_types::SignatureBytes::new(sig.to_vec()),
                scheme,
            )
            .is_ok()
        }
    }
}

/// The DSSE envelope's statement, if the content is one.
fn statement_of(bundle: &Bundle) -> Option<Result<Statement, BundleFailure>> {
    let SignatureContent::DsseEnvelope(env) = &bundle.content else {
        return None;
    };
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Some(Err(BundleFailure::Statement {
            reason: format!(
                "signed payload type {:?} is not {IN_TOTO_PAYLOAD_TYPE}",
                shown(&env.payload_type)
            ),
        }));
    }
    Some(
        Statement::parse(env.payload.as_bytes()).map_err(|e| BundleFailure::Statement {
            reason: e.to_string(),
        }),
    )
}

fn subject_mismatch(statement: &Statement, sha256: &str) -> BundleFailure {
    BundleFailure::Subject {
        reason: format!(
            "bundle statement subject does not include the digest sha256:{sha256} (it names {})",
            statement.subjects_summary()
        ),
    }
}

/// Binds the verified content to what the caller expects (see the module documentation).
fn bind(
    bundle: &Bundle,
    expect: &BundleExpect<'_>,
    sha256: &str,
) -> Result<Option<Statement>, BundleFailure> {
    match statement_of(bundle) {
        None => match expect.predicate_type {
            None => Ok(None),
            Some(expected) => Err(BundleFailure::PredicateType {
                found: "(a message signature, no statement)".into(),
                expected: shown(expected),
            }),
        },
        Some(statement) => {
            let statement = statement?;
            if !statement.names_digest(&format!("sha256:{sha256}")) {
                return Err(subject_mismatch(&statement, sha256));
            }
            if let Some(expected) = expect.predicate_type {
                if statement.predicate_type != expected {
                    return Err(BundleFailure::PredicateType {
                        found: shown(&statement.predicate_type),
                        expected: shown(expected),
                    });
                }
            }
            Ok(Some(statement))
        }
    }
}

/// The SHA-256 of a DER SubjectPublicKeyInfo, base64: the `publicKey.hint` cosign writes in
/// a key-signed bundle (informative only; the configured key decides).
pub fn key_hint(key: &PublicKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(key.spki_der()))
}

#[cfg(test)]
mod tests {
    //! Bundles made here: key- and certificate-signed, with and without a transparency-log
    //! entry from a test log (SET, inclusion proof, checkpoint). The real cosign 3 bundles
    //! are in `tests/cosign3_bundles.rs`, the conformance cases in `tests/conformance.rs`.

    use super::*;
    use crate::verify::cosign::trust::certificates::tests::{Made, Spec, T, identity, make, pki};
    use crate::verify::cosign::trust::keys::tests::signer as keypair;
    use crate::verify::cosign::trust::transparency::RootBuilder;
    use serde_json::{Value, json};
    use sigstore::crypto::{SigStoreSigner, SigningScheme};

    const DIGEST_HEX: &str = "634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";
    const OTHER_HEX: &str = "d9dcafdb00000000000000000000000000000000000000000000000000000000";
    const SLSA: &str = "https://slsa.dev/provenance/v1";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn sha_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn statement(predicate_type: &str, subject_hex: &str) -> Vec<u8> {
        json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"digest": {"sha256": subject_hex}}],
            "predicateType": predicate_type,
            "predicate": {},
        })
        .to_string()
        .into_bytes()
    }

    struct Key {
        signer: SigStoreSigner,
        pem: String,
        key: PublicKey,
    }

    impl Key {
        fn new(name: &str) -> Key {
            let (signer, pem) = keypair(SigningScheme::ECDSA_P256_SHA256_ASN1);
            let key = PublicKey::from_pem(name, pem.as_bytes()).unwrap();
            Key { signer, pem, key }
        }
    }

    /// The DSSE envelope (bundle form) over `payload` signed by `signer`, and the signature.
    fn envelope(signer: &SigStoreSigner, payload: &[u8]) -> (Value, Vec<u8>) {
        let sig = signer.sign(&pae(IN_TOTO_PAYLOAD_TYPE, payload)).unwrap();
        (
            json!({"payload": b64(payload), "payloadType": IN_TOTO_PAYLOAD_TYPE,
                   "signatures": [{"sig": b64(&sig)}]}),
            sig,
        )
    }

    fn bundle(material: Value, envelope: Value, entries: Vec<Value>) -> Vec<u8> {
        let mut m = material;
        m["tlogEntries"] = Value::Array(entries);
        json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": m,
            "dsseEnvelope": envelope,
        })
        .to_string()
        .into_bytes()
    }

    fn key_material() -> Value {
        json!({"publicKey": {"hint": "ignored"}})
    }

    fn cert_material(leaf: &Made) -> Value {
        json!({"certificate": {"rawBytes": b64(&leaf.der)}})
    }

    /// A Rekor `dsse` 0.0.1 entry body for this envelope, signature and verifier (PEM).
    fn dsse_body(payload: &[u8], sig: &[u8], verifier_pem: &str) -> Value {
        json!({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
            "envelopeHash": {"algorithm": "sha256", "value": sha_hex(b"envelope")},
            "payloadHash": {"algorithm": "sha256", "value": sha_hex(payload)},
            "signatures": [{"signature": b64(sig), "verifier": b64(verifier_pem.as_bytes())}],
        }})
    }

    fn leaf_hash(entry: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update([0u8])
            .chain_update(entry)
            .finalize()
            .into()
    }

    fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
        Sha256::new()
            .chain_update([1u8])
            .chain_update(l)
            .chain_update(r)
            .finalize()
            .into()
    }

    /// RFC 6962 MTH and PATH, straight from the definitions.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn audit_path(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < k {
            let mut p = audit_path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = audit_path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }

    /// A Rekor v1 log that signs SETs and checkpoints.
    struct TestLog {
        signer: SigStoreSigner,
        key: PublicKey,
        id: Vec<u8>,
    }

    impl TestLog {
        fn new() -> TestLog {
            let (signer, pem) = keypair(SigningScheme::ECDSA_P256_SHA256_ASN1);
            let key = PublicKey::from_pem("test-rekor", pem.as_bytes()).unwrap();
            let id = Sha256::digest(key.spki_der()).to_vec();
            TestLog { signer, key, id }
        }

        /// Trust in this log (and `more` setup), requiring it or not.
        fn trust(&self, require_tlog: bool, more: impl FnOnce(&mut RootBuilder)) -> Transparency {
            let mut root = RootBuilder::default();
            root.rekor_key("test-rekor", &self.key);
            more(&mut root);
            Transparency::new("test", &root.build().unwrap(), require_tlog, 0).unwrap()
        }

        /// A tlog entry holding `body` as leaf 3 of 7, integrated at `time`.
        fn entry(&self, body: &Value, time: i64) -> Value {
            let body = body.to_string().into_bytes();
            let mut leaves: Vec<[u8; 32]> = (0..7)
                .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
                .collect();
            leaves[3] = leaf_hash(&body);
            let root = mth(&leaves);
            let note = format!("rekor.example - 1\n7\n{}\n", b64(&root));
            let mut note_sig = self.id[..4].to_vec();
            note_sig.extend(self.signer.sign(note.as_bytes()).unwrap());
            let set_payload = format!(
                "{{\"body\":\"{}\",\"integratedTime\":{time},\"logID\":\"{}\",\"logIndex\":1000}}",
                b64(&body),
                hex(&self.id)
            );
            json!({
                "logIndex": "1000",
                "logId": {"keyId": b64(&self.id)},
                "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                "integratedTime": time.to_string(),
                "inclusionPromise": {"signedEntryTimestamp": b64(&self.signer.sign(set_payload.as_bytes()).unwrap())},
                "inclusionProof": {
                    "logIndex": "3",
                    "rootHash": b64(&root),
                    "treeSize": "7",
                    "hashes": audit_path(3, &leaves).iter().map(|h| b64(h)).collect::<Vec<_>>(),
                    "checkpoint": {"envelope": format!("{note}\n\u{2014} rekor.example {}\n", b64(&note_sig))},
                },
                "canonicalizedBody": b64(&body),
            })
        }
    }

    const DIGEST: &str = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

    fn expect(predicate_type: Option<&str>) -> BundleExpect<'_> {
        BundleExpect {
            artifact: Artifact::Digest(DIGEST),
            predicate_type,
        }
    }

    fn run(
        json: &[u8],
        authority: &Authority,
        trust: &Transparency,
    ) -> Result<VerifiedBundle, BundleFailure> {
        verify_bundle(json, authority, trust, &expect(Some(SLSA)))
    }

    /// A key-signed bundle without evidence (what cosign 3 writes offline) verifies with the
    /// key alone; another key, digest or predicate type, or a required log, does not.
    #[test]
    fn key_signed_without_evidence() {
        let k = Key::new("release");
        let (env, _) = envelope(&k.signer, &statement(SLSA, DIGEST_HEX));
        let b = bundle(key_material(), env, vec![]);
        let authority = Authority::Key(k.key.clone());
        let none = Transparency::none();
        let v = run(&b, &authority, &none).unwrap();
        assert_eq!(v.statement.unwrap().predicate_type, SLSA);
        assert!(!v.tlog && v.timestamps == 0 && v.signed_at.is_none());

        let other = Key::new("other");
        let err = run(&b, &Authority::Key(other.key), &none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle signature does not verify with key other: DSSE PAE over payloadType application/vnd.in-toto+json"
        );
        let err =
            verify_bundle(&b, &authority, &none, &expect(Some(SIGN_PREDICATE_TYPE))).unwrap_err();
        assert!(matches!(err, BundleFailure::PredicateType { .. }), "{err}");
        let (env, _) = envelope(&k.signer, &statement(SLSA, OTHER_HEX));
        let err = run(&bundle(key_material(), env, vec![]), &authority, &none).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "bundle statement subject does not include the digest sha256:634a8f35"
            ),
            "{err}"
        );
        assert_eq!(err.specificity(), 5);
        let log = TestLog::new();
        let err = run(&b, &authority, &log.trust(true, |_| {})).unwrap_err();
        assert!(
            err.to_string()
                .contains("no transparency-log entry, but attestor release requires one"),
            "{err}"
        );
    }

    /// With the log trusted and required, an entry whose SET, inclusion proof and checkpoint
    /// verify (and which is about this envelope) passes and gives the signing time; a damaged
    /// proof, an entry about another signature, or a stranger's log do not. Not required, the
    /// entry is not checked.
    #[test]
    fn key_signed_with_log() {
        let k = Key::new("release");
        let log = TestLog::new();
        let payload = statement(SLSA, DIGEST_HEX);
        let (env, sig) = envelope(&k.signer, &payload);
        let entry = log.entry(&dsse_body(&payload, &sig, &k.pem), T);
        let b = bundle(key_material(), env.clone(), vec![entry.clone()]);
        let authority = Authority::Key(k.key.clone());
        let v = run(&b, &authority, &log.trust(true, |_| {})).unwrap();
        assert!(v.tlog);
        assert_eq!(v.signed_at, Some(T));

        let mut damaged = entry.clone();
        damaged["inclusionProof"]["hashes"][0] = b64(&[0; 32]).into();
        let err = run(
            &bundle(key_material(), env.clone(), vec![damaged]),
            &authority,
            &log.trust(true, |_| {}),
        )
        .unwrap_err();
        assert!(matches!(err, BundleFailure::Log { .. }), "{err}");
        assert!(err.to_string().contains("inclusion proof"), "{err}");

        let (_, other_sig) = envelope(&k.signer, &statement(SLSA, OTHER_HEX));
        let foreign = log.entry(&dsse_body(&payload, &other_sig, &k.pem), T);
        let err = run(
            &bundle(key_material(), env.clone(), vec![foreign]),
            &authority,
            &log.trust(true, |_| {}),
        )
        .unwrap_err();
        assert!(matches!(err, BundleFailure::Log { .. }), "{err}");

        let stranger = TestLog::new();
        let err = run(&b, &authority, &stranger.trust(true, |_| {})).unwrap_err();
        assert!(matches!(err, BundleFailure::Log { .. }), "{err}");
        let v = run(&b, &authority, &stranger.trust(false, |_| {})).unwrap();
        assert!(!v.tlog);
    }

    fn ca(root: &Made, subject: &str) -> Authority {
        Authority::Certificates(
            CertAuthority::from_der(
                "corp",
                vec![root.der.clone()],
                vec![],
                identity(subject, "https://issuer.example.com"),
            )
            .unwrap(),
        )
    }

    /// Your own PKI without evidence: the certificate is checked at the current time (a
    /// current one passes, one from 2023 is expired), identity included; a key attestor
    /// refuses a certificate-signed bundle and a CA refuses a key-signed one.
    #[test]
    fn certificate_signed_without_evidence() {
        let (root, inter) = pki();
        let now = now_unix();
        let leaf = make(&Spec::leaf(now), Some(&inter));
        let chain = json!({"x509CertificateChain": {"certificates": [
            {"rawBytes": b64(&leaf.der)}, {"rawBytes": b64(&inter.der)}]}});
        let (env, _) = envelope(&leaf.signer, &statement(SLSA, DIGEST_HEX));
        let mut b: Value = serde_json::from_slice(&bundle(chain, env, vec![])).unwrap();
        b["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2".into();
        let b = b.to_string().into_bytes();
        let none = Transparency::none();
        let v = run(&b, &ca(&root, "dev@example.com"), &none).unwrap();
        assert_eq!(
            v.identity.as_deref(),
            Some("dev@example.com (issuer https://issuer.example.com)")
        );
        let err = run(&b, &ca(&root, "someone@else"), &none).unwrap_err();
        assert!(matches!(err, BundleFailure::Certificate { .. }), "{err}");

        let old = make(&Spec::leaf(T), Some(&inter));
        let (env, _) = envelope(&old.signer, &statement(SLSA, DIGEST_HEX));
        let material = json!({"x509CertificateChain": {"certificates": [
            {"rawBytes": b64(&old.der)}, {"rawBytes": b64(&inter.der)}]}});
        let mut expired: Value = serde_json::from_slice(&bundle(material, env, vec![])).unwrap();
        expired["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.2".into();
        let err = run(
            expired.to_string().as_bytes(),
            &ca(&root, "dev@example.com"),
            &none,
        )
        .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        let k = Key::new("k");
        let err = run(&b, &Authority::Key(k.key.clone()), &none).unwrap_err();
        assert!(matches!(err, BundleFailure::WrongMaterial { .. }), "{err}");
        let (env, _) = envelope(&k.signer, &statement(SLSA, DIGEST_HEX));
        let err = run(
            &bundle(key_material(), env, vec![]),
            &ca(&root, "dev@example.com"),
            &none,
        )
        .unwrap_err();
        assert!(matches!(err, BundleFailure::WrongMaterial { .. }), "{err}");
    }

    /// Your own PKI with a logged signature: the chain is checked by cri-guard at the log's
    /// integrated time (the certificate has long expired now), sigstore-verify checks the
    /// entry; an integration after the certificate expired is refused.
    #[test]
    fn certificate_signed_with_log() {
        let (root, inter) = pki();
        let log = TestLog::new();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let payload = statement(SLSA, DIGEST_HEX);
        let (env, sig) = envelope(&leaf.signer, &payload);
        let body = dsse_body(&payload, &sig, &leaf.pem());
        // A v0.3 bundle carries only the leaf: the intermediate comes from the attestor.
        let corp = Authority::Certificates(
            CertAuthority::from_der(
                "corp",
                vec![root.der.clone()],
                vec![inter.der.clone()],
                identity("dev@example.com", "https://issuer.example.com"),
            )
            .unwrap(),
        );
        let trust = log.trust(true, |_| {});
        let b = bundle(cert_material(&leaf), env.clone(), vec![log.entry(&body, T)]);
        let v = run(&b, &corp, &trust).unwrap();
        assert!(v.tlog);
        assert_eq!(v.signed_at, Some(T));
        assert!(v.identity.unwrap().starts_with("dev@example.com"));

        let late = bundle(cert_material(&leaf), env, vec![log.entry(&body, T + 3600)]);
        assert!(run(&late, &corp, &trust).is_err());
    }

    /// Arbitrary damage to a bundle never panics, on either path.
    #[test]
    fn no_panic_on_noise() {
        let k = Key::new("k");
        let log = TestLog::new();
        let payload = statement(SLSA, DIGEST_HEX);
        let (env, sig) = envelope(&k.signer, &payload);
        let with_log = bundle(
            key_material(),
            env.clone(),
            vec![log.entry(&dsse_body(&payload, &sig, &k.pem), T)],
        );
        let without = bundle(key_material(), env, vec![]);
        let authority = Authority::Key(k.key.clone());
        let trusts = [Transparency::none(), log.trust(true, |_| {})];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let source = if round % 2 == 0 { &with_log } else { &without };
            let mut v = source.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % v.len();
                v[i] = next() as u8;
            }
            if next() % 5 == 0 {
                v.truncate((next() as usize) % (v.len() + 1));
            }
            for trust in &trusts {
                let _ = run(&v, &authority, trust);
            }
        }
        assert!(run(&with_log, &authority, &trusts[1]).is_ok());
    }
}
