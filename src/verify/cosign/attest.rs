//! Offline verification of cosign attestations: DSSE envelopes over in-toto statements, as
//! `cosign attest --new-bundle-format=false` stores them (legacy `.att` layers), plus simple
//! conditions on the statement's predicate. Sigstore bundles (what cosign 3 writes by default)
//! are verified by `bundle.rs`, which shares the envelope and statement types defined here.
//!
//! # Formats
//!
//! - **DSSE envelope**
//!   `{"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64}]}`.
//!   The signature is over the pre-authentication encoding [`pae`]
//!   `"DSSEv1" SP len(type) SP type SP len(payload) SP payload` of the *decoded* payload, never
//!   over the payload itself, so a signature cannot be replayed as one over another type
//!   (vector NEG-attestation-not-PAE).
//! - **in-toto Statement** v0.1 or v1 (`_type`), with `predicateType`, `subject[].digest` and
//!   `predicate`; the payload when `payloadType` is [`IN_TOTO_PAYLOAD_TYPE`].
//! - **Legacy layer**: one layer of the `sha256-<hex>.att` manifest, media type
//!   [`DSSE_MEDIA_TYPE`], blob = the envelope JSON, an empty signature annotation, and for
//!   keyless `dev.sigstore.cosign/certificate` / `.../chain` (PEM) and
//!   `dev.sigstore.cosign/bundle` (Rekor SET + entry, as for signatures).
//! - **Rekor entry bodies** an attestation may be logged as (all three are checked against the
//!   envelope; a valid SET over somebody else's entry proves nothing):
//!   - `intoto` 0.0.1: `spec.content.hash` = sha256 of the envelope bytes as uploaded,
//!     `spec.content.payloadHash` = sha256 of the decoded payload, `spec.publicKey` =
//!     base64(PEM key or certificate). No signature: the envelope hash covers it.
//!   - `intoto` 0.0.2: the same two hashes, `spec.content.envelope.payloadType`, and
//!     `spec.content.envelope.signatures[] {keyid?, sig, publicKey}` where `sig` is base64 of
//!     the envelope's *base64 text* of the signature (encoded twice) and `publicKey` base64(PEM).
//!   - `dsse` 0.0.1: `spec.envelopeHash`, `spec.payloadHash`, `spec.signatures[] {signature,
//!     verifier}` with `signature` the envelope's base64 signature and `verifier` base64(PEM).
//!
//!   The envelope hash is over the bytes the client uploaded. A legacy layer holds exactly those
//!   bytes; a sigstore bundle re-serializes the envelope (protobuf JSON, `keyid` dropped), so the
//!   hash is recomputed over cosign's Go serialization
//!   `{"payloadType":..,"payload":..,"signatures":[{"keyid":"","sig":..}]}`.
//!
//! # Order of checks
//!
//! Legacy layer ([`verify_attestation_layer`]): media type; envelope shape and bounds (at most
//! [`MAX_SIGNATURES`] signatures); with Rekor, the bundle's SET (its integrated time is the
//! trusted signing time); the signer's key (the configured key, or the certificate annotation
//! checked with the chain annotation at the integrated time, or now without Rekor); one
//! signature verifying over PAE; with Rekor, the entry body bound to this envelope, signature
//! and key/certificate; then `payloadType` must be in-toto, the statement is parsed (serde_json,
//! never re-serialized), and a subject must carry the image's sha256 digest.
//!
//! Failures are [`AttestationFailure`]s; where a shared check fails (certificate, Rekor SET)
//! the signature path's [`Failure`] is wrapped. Predicate conditions ([`Condition`]) are
//! separate: a caller checks them on a [`VerifiedAttestation`]'s statement.
//!
//! # Bounds, and what is not checked
//!
//! Envelopes of at most [`MAX_ENVELOPE_BYTES`], at most [`MAX_SIGNATURES`] signatures;
//! serde_json's recursion limit bounds nesting. Not checked: the `keyid`s. A key-based
//! attestation's Rekor entry must name the bare public key (not a certificate for it).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::rekor::{self, RekorKeys, hex};
use super::{
    Authority, BUNDLE_ANNOTATION, Failure, LeafSummary, PublicKey, SigLayer, decode_base64,
    layer_certificates, now_unix, shown,
};
pub use super::{CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION};

/// Media type of a cosign attestation layer: the blob is a DSSE envelope.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The DSSE `payloadType` of an in-toto statement; the only one accepted.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement `_type` v0.1 (what cosign writes).
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
/// in-toto Statement `_type` v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// Most signatures an envelope may carry; more is refused before any is checked.
pub const MAX_SIGNATURES: usize = 16;
/// Largest envelope accepted (an SBOM attestation can be several MB).
pub const MAX_ENVELOPE_BYTES: usize = 32 << 20;
/// Longest dotted path a condition may have.
const MAX_PATH_SEGMENTS: usize = 64;

/// Why an attestation did not verify. Messages are operator-facing; text from the attestation
/// is truncated and escaped. Use [`AttestationFailure::specificity`] to pick the most telling
/// failure across many layers and attestors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationFailure {
    /// The layer is some other attachment, not a DSSE envelope.
    #[error("layer media type {media_type} is not a DSSE envelope ({DSSE_MEDIA_TYPE})")]
    NotDsse {
        /// The layer's media type.
        media_type: String,
    },
    /// The envelope cannot be read.
    #[error("DSSE envelope is malformed: {reason}")]
    EnvelopeMalformed {
        /// What is wrong.
        reason: String,
    },
    /// More signatures than [`MAX_SIGNATURES`].
    #[error("DSSE envelope has {count} signatures; at most {MAX_SIGNATURES} are accepted")]
    TooManySignatures {
        /// How many the envelope has.
        count: usize,
    },
    /// No signature of the envelope verifies over PAE with the signer's key.
    #[error(
        "attestation signature does not verify with {signer} (DSSE PAE over payloadType {payload_type})"
    )]
    BadSignature {
        /// `key NAME`, or the certificate's identity.
        signer: String,
        /// The envelope's payloadType (what the PAE was computed with).
        payload_type: String,
    },
    /// A check shared with signature verification failed: certificate or Rekor bundle.
    #[error(transparent)]
    Check(#[from] Failure),
    /// The Rekor entry is of a kind that does not describe an attestation.
    #[error(
        "Rekor entry kind {kind} {version} is not an attestation entry (intoto 0.0.1, intoto 0.0.2 or dsse 0.0.1 expected)"
    )]
    UnsupportedEntry {
        /// Entry kind.
        kind: String,
        /// Entry apiVersion.
        version: String,
    },
    /// A valid signature over something other than an in-toto statement.
    #[error("signed payload type {found:?} is not {IN_TOTO_PAYLOAD_TYPE}")]
    NotInToto {
        /// The envelope's payloadType.
        found: String,
    },
    /// A valid signature over an in-toto payload that is not a statement.
    #[error("signed payload is not an in-toto statement: {reason}")]
    BadStatement {
        /// What is wrong.
        reason: String,
    },
    /// The digest to match is not `sha256:<64 hex>`.
    #[error(
        "{artifact} digest {digest} is not a sha256 digest; attestation subjects are matched by sha256 only"
    )]
    UnsupportedDigest {
        /// `image` or `blob`.
        artifact: &'static str,
        /// The digest given.
        digest: String,
    },
    /// A valid attestation about something else.
    #[error(
        "statement subject does not include this {artifact}'s digest {digest} (it names {subjects})"
    )]
    SubjectMismatch {
        /// `image` or `blob`.
        artifact: &'static str,
        /// The digest looked for.
        digest: String,
        /// The statement's subjects, shortened.
        subjects: String,
    },
}

impl AttestationFailure {
    /// How close the attestation came to verifying; the higher, the more worth reporting:
    /// a valid attestation for another digest (5) over a statement problem (4) over a Rekor
    /// problem (3) over a signature or certificate that does not verify (2) over a malformed
    /// envelope (1) over something that is not an attestation at all (0).
    pub fn specificity(&self) -> u8 {
        use AttestationFailure as A;
        match self {
            A::NotDsse { .. } => 0,
            A::EnvelopeMalformed { .. } | A::TooManySignatures { .. } => 1,
            A::BadSignature { .. } => 2,
            A::Check(f) => f.specificity().min(3),
            A::UnsupportedEntry { .. } => 3,
            A::NotInToto { .. } | A::BadStatement { .. } | A::UnsupportedDigest { .. } => 4,
            A::SubjectMismatch { .. } => 5,
        }
    }
}

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

/// An in-toto statement (v0.1 or v1).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    /// `predicateType`, a URI such as `https://slsa.dev/provenance/v1`.
    pub predicate_type: String,
    /// `subject`: what the statement is about.
    pub subjects: Vec<Subject>,
    /// `predicate`, as parsed (`null` when absent).
    pub predicate: Value,
}

/// One subject of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `name` (empty when absent).
    pub name: String,
    /// `digest`: algorithm to hex value.
    pub digest: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    subject: Vec<RawSubject>,
    #[serde(default)]
    predicate: Value,
}

#[derive(Deserialize)]
struct RawSubject {
    #[serde(default)]
    name: String,
    digest: BTreeMap<String, String>,
}

impl Statement {
    /// Parses an in-toto statement v0.1 or v1 (the decoded DSSE payload).
    pub fn parse(payload: &[u8]) -> Result<Statement, AttestationFailure> {
        let bad = |reason: String| AttestationFailure::BadStatement { reason };
        let raw: RawStatement =
            serde_json::from_slice(payload).map_err(|e| bad(shown(&e.to_string())))?;
        if raw.kind != STATEMENT_V01 && raw.kind != STATEMENT_V1 {
            return Err(bad(format!(
                "_type {:?} is not {STATEMENT_V01} or {STATEMENT_V1}",
                shown(&raw.kind)
            )));
        }
        Ok(Statement {
            predicate_type: raw.predicate_type,
            subjects: raw
                .subject
                .into_iter()
                .map(|s| Subject {
                    name: s.name,
                    digest: s.digest,
                })
                .collect(),
            predicate: raw.predicate,
        })
    }

    /// Whether a subject carries `digest` (`sha256:<hex>`; hex compared case-insensitively).
    /// Any other algorithm never matches.
    pub fn names_digest(&self, digest: &str) -> bool {
        sha256_hex(digest).is_some_and(|want| {
            self.subjects.iter().any(|s| {
                s.digest
                    .get("sha256")
                    .is_some_and(|have| have.eq_ignore_ascii_case(want))
            })
        })
    }

    /// The subjects for a message: `sha256:0123456789ab… (name)`, at most four.
    pub(crate) fn subjects_summary(&self) -> String {
        if self.subjects.is_empty() {
            return "no subject".to_owned();
        }
        let mut parts: Vec<String> = self
            .subjects
            .iter()
            .take(4)
            .map(|s| {
                let digest = match s.digest.get("sha256") {
                    Some(h) => format!("sha256:{}", h.get(..12).unwrap_or(h)),
                    None => match s.digest.keys().next() {
                        Some(alg) => format!("{alg} only"),
                        None => "no digest".to_owned(),
                    },
                };
                if s.name.is_empty() {
                    shown(&digest)
                } else {
                    shown(&format!("{digest}... ({})", s.name))
                }
            })
            .collect();
        if self.subjects.len() > 4 {
            parts.push(format!("and {} more", self.subjects.len() - 4));
        }
        parts.join(", ")
    }
}

/// The hex of a `sha256:<64 hex>` digest.
fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// DSSE v1 pre-authentication encoding: the bytes a DSSE signature is over.
/// `"DSSEv1" SP len(type) SP type SP len(payload) SP payload`, lengths in ASCII decimal bytes.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let payload_len = payload.len().to_string();
    let mut out = Vec::with_capacity(
        10 + type_len.len() + payload_type.len() + payload_len.len() + payload.len(),
    );
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// A parsed DSSE envelope. The base64 texts are kept to recompute Rekor's envelope hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `payloadType`.
    pub payload_type: String,
    /// The decoded payload (what PAE and the payload hash are computed over).
    pub payload: Vec<u8>,
    /// The signatures, at least one and at most [`MAX_SIGNATURES`].
    pub signatures: Vec<EnvelopeSignature>,
    payload_b64: String,
}

/// One signature of a DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSignature {
    /// `keyid` (empty when absent; never trusted).
    pub keyid: String,
    /// The decoded signature.
    pub sig: Vec<u8>,
    sig_b64: String,
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
struct RawSignature {
    #[serde(default)]
    keyid: Option<String>,
    sig: String,
}

impl Envelope {
    /// Parses envelope JSON, bounded: at most [`MAX_ENVELOPE_BYTES`] and [`MAX_SIGNATURES`].
    pub fn parse(json: &[u8]) -> Result<Envelope, AttestationFailure> {
        if json.len() > MAX_ENVELOPE_BYTES {
            return Err(envelope_malformed(format!(
                "{} bytes; at most {MAX_ENVELOPE_BYTES} are accepted",
                json.len()
            )));
        }
        let raw: RawEnvelope =
            serde_json::from_slice(json).map_err(|e| envelope_malformed(shown(&e.to_string())))?;
        Envelope::from_raw(raw)
    }

    fn from_raw(raw: RawEnvelope) -> Result<Envelope, AttestationFailure> {
        if raw.signatures.len() > MAX_SIGNATURES {
            return Err(AttestationFailure::TooManySignatures {
                count: raw.signatures.len(),
            });
        }
        if raw.signatures.is_empty() {
            return Err(envelope_malformed("no signatures".into()));
        }
        let payload = dsse_base64(&raw.payload)
            .ok_or_else(|| envelope_malformed("payload is not base64".into()))?;
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for (i, s) in raw.signatures.into_iter().enumerate() {
            let sig = dsse_base64(&s.sig)
                .filter(|sig| !sig.is_empty())
                .ok_or_else(|| {
                    envelope_malformed(format!("signature {i} is empty or not base64"))
                })?;
            signatures.push(EnvelopeSignature {
                keyid: s.keyid.unwrap_or_default(),
                sig,
                sig_b64: s.sig,
            });
        }
        Ok(Envelope {
            payload_type: raw.payload_type,
            payload,
            signatures,
            payload_b64: raw.payload,
        })
    }

    /// The first signature that is `key`'s signature over [`pae`] of this envelope.
    pub fn verified_by(&self, key: &PublicKey) -> Option<&EnvelopeSignature> {
        let message = pae(&self.payload_type, &self.payload);
        self.signatures
            .iter()
            .find(|s| key.verifies(&s.sig, &message))
    }

    /// cosign's (Go `encoding/json`) serialization of this envelope, which is what cosign
    /// uploads to Rekor and hence what an entry's envelope hash covers. `keyid` is written
    /// always (go-securesystemslib), or only when non-empty.
    fn go_json(&self, keyid_always: bool) -> String {
        let mut s = String::with_capacity(self.payload_b64.len() + 256);
        s.push_str("{\"payloadType\":");
        go_json_string(&mut s, &self.payload_type);
        s.push_str(",\"payload\":");
        go_json_string(&mut s, &self.payload_b64);
        s.push_str(",\"signatures\":[");
        for (i, sig) in self.signatures.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('{');
            if keyid_always || !sig.keyid.is_empty() {
                s.push_str("\"keyid\":");
                go_json_string(&mut s, &sig.keyid);
                s.push(',');
            }
            s.push_str("\"sig\":");
            go_json_string(&mut s, &sig.sig_b64);
            s.push('}');
        }
        s.push_str("]}");
        s
    }
}

fn envelope_malformed(reason: String) -> AttestationFailure {
    AttestationFailure::EnvelopeMalformed { reason }
}

/// DSSE base64 as go-securesystemslib reads it: standard or URL-safe, padded or not.
fn dsse_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(s.as_bytes()).ok())
}

/// A JSON string as Go's `encoding/json` (1.22+) writes it: HTML-safe escapes for `<`, `>`,
/// `&`, `\u2028`, `\u2029`; short escapes for `\b \f \n \r \t`; `\u00XX` for other controls.
fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
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
    fn entry_signer(&self) -> rekor::EntrySigner<'_> {
        match self {
            Signer::Key(key) => rekor::EntrySigner::Key(key),
            Signer::Cert { leaf_der, .. } => rekor::EntrySigner::Certificate(leaf_der),
        }
    }

    /// What a Rekor entry names this signer as, for mismatch messages.
    fn what(&self) -> &'static str {
        self.entry_signer().what()
    }

    /// Whether `b64_pem` (base64 of a PEM, as Rekor stores keys) is this signer: the same
    /// SubjectPublicKeyInfo for a key, the same certificate for a certificate.
    fn is_named_by(&self, b64_pem: &str) -> bool {
        decode_base64(b64_pem).is_some_and(|pem| self.entry_signer().is_named_by_pem(&pem))
    }
}

/// The signer for `authority`: the key itself, or the certificate `cert` yields (leaf and
/// untrusted chain, DER) verified by the attestor's CA at every one of `times`.
fn signer<'a>(
    authority: &'a Authority,
    cert: impl FnOnce() -> Result<(Vec<u8>, Vec<Vec<u8>>), Failure>,
    times: &[i64],
) -> Result<Signer<'a>, AttestationFailure> {
    match authority {
        Authority::Key(key) => Ok(Signer::Key(key)),
        Authority::Certificates(ca) => {
            let (leaf, chain) = cert()?;
            let mut verified = None;
            for &at in times {
                verified = Some(ca.verify_leaf(&leaf, &chain, at)?);
            }
            let (key, summary) = verified.ok_or_else(|| Failure::Certificate {
                reason: "no time to check the certificate at".into(),
            })?;
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
            Some(rekor::verify_set(raw, keys)?)
        }
    };
    let at = entry.as_ref().map_or_else(now_unix, |e| e.integrated_time);
    let signer = signer(
        authority,
        || layer_certificates(layer, authority.name()),
        &[at],
    )?;
    let sig = verified_signature(&envelope, &signer)?;
    if let Some(entry) = &entry {
        bind_entry(
            &entry.body,
            entry.log_index,
            &envelope,
            Some(&layer.payload),
            sig,
            &signer,
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

// ---------------------------------------------------------------------------------------------
// Rekor entry bodies

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

/// Checks that a Rekor entry body (whose SET verified) is about this envelope, its verifying
/// signature `sig` and `signer`. `raw` is the envelope as uploaded, when known (legacy layer).
fn bind_entry(
    body: &[u8],
    log_index: i64,
    envelope: &Envelope,
    raw: Option<&[u8]>,
    sig: &EnvelopeSignature,
    signer: &Signer<'_>,
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
            if !signer.is_named_by(&spec.public_key) {
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
                |s| signer.is_named_by(&s.public_key),
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
                |s| signer.is_named_by(&s.verifier),
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
    signer: &Signer<'_>,
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

// ---------------------------------------------------------------------------------------------
// Predicate types and conditions

/// The predicate type URI for one of cosign's `--type` names (`cosign attest --type`, in
/// cosign's `options/predicate.go`); anything else is returned unchanged, as a URI.
pub fn predicate_type(name: &str) -> &str {
    match name {
        "custom" => "https://cosign.sigstore.dev/attestation/v1",
        "slsaprovenance" | "slsaprovenance02" => "https://slsa.dev/provenance/v0.2",
        "slsaprovenance1" => "https://slsa.dev/provenance/v1",
        "spdx" | "spdxjson" => "https://spdx.dev/Document",
        "cyclonedx" | "cyclonedxxml" => "https://cyclonedx.org/bom",
        "link" => "https://in-toto.io/Link/v1",
        "vuln" => "https://cosign.sigstore.dev/attestation/vuln/v1",
        "openvex" => "https://openvex.dev/ns",
        other => other,
    }
}

const CONDITION_KEYS: [&str; 5] = ["path", "equals", "oneOf", "matches", "exists"];

/// A condition on a statement's predicate, from policy TOML:
///
/// ```toml
/// { path = "builder.id", equals = "https://github.com/actions/runner" }
/// { path = "buildType", oneOf = ["https://a.example/v1", "https://b.example/v1"] }
/// { path = "materials.0.uri", matches = "git\\+https://github\\.com/acme/.*" }
/// { path = 'metadata."example.com/reviewed"', exists = true }
/// ```
///
/// `path` is a dotted path into the predicate: a segment is an object key, or an array index
/// when the value there is an array and the segment is a number; a key containing dots or
/// quotes is written in double quotes (`\"` and `\\` escape). Exactly one test:
/// - `equals`: the value equals this TOML value (numbers by value, `1` equals `1.0`);
/// - `oneOf`: it equals one of these;
/// - `matches`: it is a string and the *whole* string matches this regular expression (Rust
///   `regex` syntax; anchored, unlike cosign's identity regexps, so that `https://x/.*` cannot
///   be met by `https://evil/?https://x/`);
/// - `exists`: `true` when the path leads to a value other than `null`, `false` when not.
#[derive(Debug, Clone)]
pub struct Condition {
    path: Vec<Segment>,
    path_text: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    text: String,
    /// Written in quotes: always an object key, never an index.
    quoted: bool,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Matches {
        regex: regex::Regex,
        pattern: String,
    },
    Exists(bool),
}

impl Condition {
    /// Parses a condition table; `at` names it in messages (e.g. `rules[0].conditions[1]`).
    /// Every problem is reported, separated by `; `.
    pub fn from_toml(at: &str, v: &toml::Value) -> Result<Condition, String> {
        let Some(table) = v.as_table() else {
            return Err(format!(
                "{at}: a condition is a table such as {{ path = \"builder.id\", equals = \"...\" }}"
            ));
        };
        let mut problems = Vec::new();
        for key in table.keys() {
            if !CONDITION_KEYS.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown key {key:?}; valid keys are {}",
                    CONDITION_KEYS.join(", ")
                ));
            }
        }
        let path = match table.get("path") {
            None => {
                problems.push("path is missing".to_owned());
                None
            }
            Some(toml::Value::String(p)) => match parse_path(p) {
                Ok(path) => Some((path, p.clone())),
                Err(e) => {
                    problems.push(format!("path {p:?}: {e}"));
                    None
                }
            },
            Some(_) => {
                problems.push("path must be a string such as \"builder.id\"".to_owned());
                None
            }
        };
        let mut tests = Vec::new();
        if let Some(v) = table.get("equals") {
            match toml_to_json(v) {
                Ok(v) => tests.push(Test::Equals(v)),
                Err(e) => problems.push(format!("equals: {e}")),
            }
        }
        if let Some(v) = table.get("oneOf") {
            match v {
                toml::Value::Array(items) if !items.is_empty() => {
                    match items
                        .iter()
                        .map(toml_to_json)
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(values) => tests.push(Test::OneOf(values)),
                        Err(e) => problems.push(format!("oneOf: {e}")),
                    }
                }
                _ => problems.push("oneOf must be a non-empty array".to_owned()),
            }
        }
        if let Some(v) = table.get("matches") {
            match v {
                toml::Value::String(pattern) => {
                    match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                        .size_limit(1 << 20)
                        .build()
                    {
                        Ok(regex) => tests.push(Test::Matches {
                            regex,
                            pattern: pattern.clone(),
                        }),
                        Err(e) => problems.push(format!(
                            "matches: invalid regular expression: {}",
                            e.to_string().replace('\n', " ")
                        )),
                    }
                }
                _ => problems.push("matches must be a string (a regular expression)".to_owned()),
            }
        }
        if let Some(v) = table.get("exists") {
            match v {
                toml::Value::Boolean(b) => tests.push(Test::Exists(*b)),
                _ => problems.push("exists must be true or false".to_owned()),
            }
        }
        let present: Vec<&str> = ["equals", "oneOf", "matches", "exists"]
            .into_iter()
            .filter(|k| table.contains_key(*k))
            .collect();
        match present.len() {
            0 => problems.push("needs one of equals, oneOf, matches, exists".to_owned()),
            1 => {}
            _ => problems.push(format!(
                "has {}; give exactly one test per condition",
                present.join(" and ")
            )),
        }
        if !problems.is_empty() {
            return Err(format!("{at}: {}", problems.join("; ")));
        }
        match (path, tests.pop()) {
            (Some((path, path_text)), Some(test)) if tests.is_empty() => Ok(Condition {
                path,
                path_text,
                test,
            }),
            _ => Err(format!("{at}: invalid condition")),
        }
    }

    /// The dotted path, as written.
    pub fn path(&self) -> &str {
        &self.path_text
    }

    /// Checks the condition on a predicate. The message names the path, what was expected
    /// and what was found (shortened and escaped).
    pub fn check(&self, predicate: &Value) -> Result<(), String> {
        let found = lookup(predicate, &self.path);
        let ok = match (&self.test, found) {
            (Test::Equals(want), Some(v)) => json_eq(want, v),
            (Test::OneOf(wants), Some(v)) => wants.iter().any(|w| json_eq(w, v)),
            (Test::Matches { regex, .. }, Some(Value::String(s))) => regex.is_match(s),
            (Test::Exists(want), found) => *want == found.is_some_and(|v| !v.is_null()),
            (_, _) => false,
        };
        if ok {
            return Ok(());
        }
        let found = match found {
            None => "nothing (no such field)".to_owned(),
            Some(v) => short_json(v),
        };
        Err(format!(
            "predicate {}: expected {}, found {found}",
            shown(&self.path_text),
            self.expected()
        ))
    }

    fn expected(&self) -> String {
        match &self.test {
            Test::Equals(v) => short_json(v),
            Test::OneOf(vs) => format!("one of {}", short_json(&Value::Array(vs.clone()))),
            Test::Matches { pattern, .. } => {
                format!("a string matching {}", shown(&format!("/{pattern}/")))
            }
            Test::Exists(true) => "a value".to_owned(),
            Test::Exists(false) => "no value".to_owned(),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", shown(&self.path_text))?;
        match &self.test {
            Test::Equals(v) => write!(f, "equals {}", short_json(v)),
            Test::OneOf(vs) => write!(f, "is one of {}", short_json(&Value::Array(vs.clone()))),
            Test::Matches { pattern, .. } => {
                write!(f, "matches {}", shown(&format!("/{pattern}/")))
            }
            Test::Exists(true) => f.write_str("exists"),
            Test::Exists(false) => f.write_str("does not exist"),
        }
    }
}

fn parse_path(s: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut text = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some(e @ ('"' | '\\')) => text.push(e),
                        _ => return Err("only \\\" and \\\\ may be escaped in a quoted key".into()),
                    },
                    c => text.push(c),
                }
            }
            if !closed {
                return Err("a quoted key is not closed".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err("a quote may only start a key".into());
                }
                text.push(c);
                chars.next();
            }
            if text.is_empty() {
                return Err("empty segment (use quotes for an empty key: \"\")".into());
            }
        }
        segments.push(Segment { text, quoted });
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!("more than {MAX_PATH_SEGMENTS} segments"));
        }
        match chars.next() {
            None => return Ok(segments),
            Some('.') if chars.peek().is_some() => {}
            Some('.') => return Err("ends with a dot".into()),
            Some(_) => return Err("a quoted key must be followed by a dot or the end".into()),
        }
    }
}

fn lookup<'a>(mut v: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(map) => map.get(&seg.text)?,
            Value::Array(items) if !seg.quoted && seg.text.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(seg.text.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(v)
}

/// Equality with numbers compared by value (TOML `1` equals JSON `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

fn toml_to_json(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Compact JSON of `v`, at most about 128 characters and escaped; serialization stops early,
/// so a huge predicate is never written out whole.
fn short_json(v: &Value) -> String {
    struct Limited(Vec<u8>);
    impl std::io::Write for Limited {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() >= 160 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Limited(Vec::new());
    let complete = serde_json::to_writer(&mut out, v).is_ok();
    let text = String::from_utf8_lossy(&out.0);
    let mut s = shown(&text);
    if !complete && !s.ends_with("...") {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosign::keys::tests::signer as keypair;
    use crate::verify::cosign::rekor::tests::FakeLog;
    use crate::verify::cosign::{CertAuthority, CertIdentity, SIGNATURE_ANNOTATION};
    use serde_json::json;
    use sigstore::crypto::{SigStoreSigner, SigningScheme};

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

    /// PAE is byte for byte the DSSE v1 encoding (the spec's example; lengths in bytes).
    #[test]
    fn pae_bytes() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
        assert_eq!(pae("\u{e9}", b"\x00\xff"), b"DSSEv1 2 \xc3\xa9 2 \x00\xff");
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
        let err = run(Some(crate::verify::cosign::rekor::tests::hashedrekord(
            &env, &sig, &a.pem,
        )));
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
        let root = crate::verify::cosign::x509::tests::make(
            &crate::verify::cosign::x509::tests::Spec::ca("root"),
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

    /// Go's JSON string escaping, which the envelope hash depends on.
    #[test]
    fn go_json_escaping() {
        let mut s = String::new();
        go_json_string(&mut s, "a\"b\\<&>\u{2028}\n\u{1}\u{8}\u{c}é");
        assert_eq!(s, r#""a\"b\\\u003c\u0026\u003e\u2028\n\u0001\b\fé""#);
    }

    // --- Conditions ----------------------------------------------------------------------

    fn cond(src: &str) -> Result<Condition, String> {
        let table: toml::Table = toml::from_str(&format!("c = {src}")).unwrap();
        Condition::from_toml("rules[0].conditions[0]", &table["c"])
    }

    fn predicate() -> Value {
        json!({
            "builder": {"id": "https://github.com/actions/runner"},
            "buildType": "https://b.example/v1",
            "materials": [{"uri": "git+https://github.com/acme/app@refs/heads/main"}],
            "metadata": {"example.com/reviewed": true, "count": 3, "nothing": null, "0": "zero"},
            "long": "x".repeat(1000),
            "evil": "a\u{202e}b\nc",
        })
    }

    /// Each test kind passes on a matching predicate.
    #[test]
    fn conditions_that_hold() {
        let p = predicate();
        for src in [
            r#"{ path = "builder.id", equals = "https://github.com/actions/runner" }"#,
            r#"{ path = "buildType", oneOf = ["https://a.example/v1", "https://b.example/v1"] }"#,
            r#"{ path = "materials.0.uri", matches = 'git\+https://github\.com/acme/.*' }"#,
            r#"{ path = 'metadata."example.com/reviewed"', exists = true }"#,
            r#"{ path = 'metadata."example.com/reviewed"', equals = true }"#,
            r#"{ path = "metadata.nothing", exists = false }"#,
            r#"{ path = "metadata.missing", exists = false }"#,
            r#"{ path = "metadata.count", equals = 3.0 }"#,
            r#"{ path = "metadata.0", equals = "zero" }"#,
            r#"{ path = "builder", equals = { id = "https://github.com/actions/runner" } }"#,
        ] {
            let c = cond(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(c.check(&p), Ok(()), "{src}");
        }
    }

    /// A failing condition names the path, the expectation and what was found, shortened
    /// and escaped.
    #[test]
    fn conditions_that_fail() {
        let p = predicate();
        let fails = |src: &str| cond(src).unwrap().check(&p).unwrap_err();
        assert_eq!(
            fails(r#"{ path = "builder.id", equals = "https://other" }"#),
            r#"predicate builder.id: expected "https://other", found "https://github.com/actions/runner""#
        );
        assert_eq!(
            fails(r#"{ path = "buildType", oneOf = ["a", "b"] }"#),
            r#"predicate buildType: expected one of ["a","b"], found "https://b.example/v1""#
        );
        // Anchored: a match in the middle is not enough.
        assert_eq!(
            fails(r#"{ path = "materials.0.uri", matches = 'github\.com/acme' }"#),
            r#"predicate materials.0.uri: expected a string matching /github\.com/acme/, found "git+https://github.com/acme/app@refs/heads/main""#
        );
        assert_eq!(
            fails(r#"{ path = "metadata.count", matches = "3" }"#),
            "predicate metadata.count: expected a string matching /3/, found 3"
        );
        assert_eq!(
            fails(r#"{ path = "builder.version", exists = true }"#),
            "predicate builder.version: expected a value, found nothing (no such field)"
        );
        assert_eq!(
            fails(r#"{ path = "metadata.nothing", exists = true }"#),
            "predicate metadata.nothing: expected a value, found null"
        );
        assert_eq!(
            fails(r#"{ path = "builder", exists = false }"#),
            r#"predicate builder: expected no value, found {"id":"https://github.com/actions/runner"}"#
        );
        assert!(
            fails(r#"{ path = "materials.1.uri", exists = true }"#)
                .ends_with("found nothing (no such field)")
        );
        assert!(
            fails(r#"{ path = "materials.x", exists = true }"#)
                .ends_with("found nothing (no such field)")
        );
        assert!(
            fails(r#"{ path = 'materials."0"', exists = true }"#)
                .ends_with("found nothing (no such field)")
        );
        let long = fails(r#"{ path = "long", equals = "x" }"#);
        assert!(long.len() < 250 && long.ends_with("..."), "{long}");
        let evil = fails(r#"{ path = "evil", equals = "x" }"#);
        assert!(!evil.contains('\u{202e}') && !evil.contains('\n'), "{evil}");
        let whole = fails(r#"{ path = "metadata", equals = 1 }"#);
        assert!(whole.len() < 300, "{whole}");
    }

    /// Malformed conditions are refused with every problem named, the valid keys listed for
    /// an unknown one, and the location first.
    #[test]
    fn condition_errors() {
        let err = |src: &str| cond(src).unwrap_err();
        assert_eq!(
            err(r#"{ path = "a", equal = "x" }"#),
            "rules[0].conditions[0]: unknown key \"equal\"; valid keys are path, equals, oneOf, matches, exists; needs one of equals, oneOf, matches, exists"
        );
        assert_eq!(
            err(r#"{ path = "a", equals = "x", exists = true }"#),
            "rules[0].conditions[0]: has equals and exists; give exactly one test per condition"
        );
        assert!(err(r#"{ equals = "x" }"#).contains("path is missing"));
        assert!(err(r#"{ path = 5, equals = "x" }"#).contains("path must be a string"));
        assert!(
            err(r#"{ path = "a", matches = "(" }"#).contains("matches: invalid regular expression")
        );
        assert!(err(r#"{ path = "a", matches = 5 }"#).contains("matches must be a string"));
        assert!(err(r#"{ path = "a", oneOf = [] }"#).contains("oneOf must be a non-empty array"));
        assert!(err(r#"{ path = "a", oneOf = "x" }"#).contains("oneOf must be a non-empty array"));
        assert!(err(r#"{ path = "a", exists = "yes" }"#).contains("exists must be true or false"));
        assert!(err(r#"{ path = "a", equals = nan }"#).contains("no JSON form"));
        for bad_path in [
            "", "a..b", "a.", ".a", "\"open", "a\"b\"", "\"a\"b", "\"\\n\"",
        ] {
            let e = err(&format!(
                "{{ path = {}, exists = true }}",
                toml::Value::String(bad_path.into())
            ));
            assert!(
                e.starts_with("rules[0].conditions[0]: path "),
                "{bad_path}: {e}"
            );
        }
        let deep = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
        assert!(err(&format!("{{ path = \"{deep}\", exists = true }}")).contains("segments"));
        let not_table = Condition::from_toml("c", &toml::Value::String("x".into())).unwrap_err();
        assert!(
            not_table.starts_with("c: a condition is a table"),
            "{not_table}"
        );
        // Quoted keys keep dots and escaped quotes.
        let c = cond(r#"{ path = 'a."b.c"."d\"e"', exists = true }"#).unwrap();
        assert_eq!(c.check(&json!({"a": {"b.c": {"d\"e": 1}}})), Ok(()));
        assert_eq!(c.path(), r#"a."b.c"."d\"e""#);
        assert_eq!(
            cond(r#"{ path = "builder.id", equals = "x" }"#)
                .unwrap()
                .to_string(),
            r#"builder.id equals "x""#
        );
    }

    /// cosign's `--type` names map to their URIs; anything else is taken as a URI.
    #[test]
    fn predicate_type_aliases() {
        for (name, uri) in [
            ("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
            ("slsaprovenance02", "https://slsa.dev/provenance/v0.2"),
            ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
            ("spdx", "https://spdx.dev/Document"),
            ("spdxjson", "https://spdx.dev/Document"),
            ("cyclonedx", "https://cyclonedx.org/bom"),
            ("link", "https://in-toto.io/Link/v1"),
            ("vuln", "https://cosign.sigstore.dev/attestation/vuln/v1"),
            ("custom", "https://cosign.sigstore.dev/attestation/v1"),
            ("openvex", "https://openvex.dev/ns"),
            ("https://example.com/p/v1", "https://example.com/p/v1"),
        ] {
            assert_eq!(predicate_type(name), uri);
        }
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
