//! Offline verification of cosign attestations: DSSE envelopes over in-toto statements, as
//! `cosign attest` stores them (legacy `.att` layers) and as `cosign attest --new-bundle-format`
//! stores them (sigstore bundle v0.3), plus simple conditions on the statement's predicate.
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
//! - **Sigstore bundle v0.3** (`verificationMaterial` {`certificate` | `x509CertificateChain` |
//!   `publicKey`, `tlogEntries`}, `dsseEnvelope`). Each tlog entry carries a SET
//!   (`inclusionPromise`), an RFC 6962 inclusion proof up to `rootHash`, and a checkpoint (a
//!   signed note: `origin\nsize\nbase64(root)\n[other lines]\n\n— name base64(keyhint ‖ sig)\n`,
//!   the key hint being the first 4 bytes of the log ID). The sigstore crate checks none of
//!   these (design.md section 5); they are all checked here.
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
//! Bundle ([`verify_bundle`]): media type and a DSSE envelope; for every tlog entry the SET,
//! inclusion proof and checkpoint ([`verify_bundle_tlog`]); the certificate at every entry's
//! integrated time (or the configured key); one signature over PAE; every entry's body bound to
//! the envelope; payload type, statement, subject.
//!
//! Failures are [`AttestationFailure`]s; where a shared check fails (certificate, Rekor SET)
//! the signature path's [`Failure`] is wrapped. Predicate conditions ([`Condition`]) are
//! separate: a caller checks them on a [`VerifiedAttestation`]'s statement.
//!
//! # Bounds, and what is not checked
//!
//! Envelopes and bundles of at most [`MAX_ENVELOPE_BYTES`], at most [`MAX_SIGNATURES`]
//! signatures, 8 tlog entries, [`MAX_PROOF_HASHES`] proof hashes, 16 checkpoint signature lines;
//! serde_json's recursion limit bounds nesting. Not checked: the checkpoint signer's name
//! (the key hint and the signature by the trusted log key are what count), the `keyid`s, RFC 3161
//! timestamps (a bundle without a tlog entry is refused) and Rekor v2 entries. A key-based
//! attestation's Rekor entry must name the bare public key (not a certificate for it).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de;
use serde::{Deserialize, Deserializer};
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
/// Media type of a sigstore bundle v0.3 (`cosign attest --new-bundle-format`).
pub const BUNDLE_V03_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Media type of a sigstore bundle v0.2; same layout for what is checked here.
pub const BUNDLE_V02_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle+json;version=0.2";
/// in-toto Statement `_type` v0.1 (what cosign writes).
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
/// in-toto Statement `_type` v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// Most signatures an envelope may carry; more is refused before any is checked.
pub const MAX_SIGNATURES: usize = 16;
/// Most hashes an inclusion proof may have (a tree of 2^64 leaves needs 64).
pub const MAX_PROOF_HASHES: usize = 64;
/// Largest envelope or bundle accepted (an SBOM attestation can be several MB).
pub const MAX_ENVELOPE_BYTES: usize = 32 << 20;
/// Most tlog entries a bundle may carry.
const MAX_TLOG_ENTRIES: usize = 8;
/// Largest checkpoint note and most signature lines it may carry.
const MAX_CHECKPOINT_BYTES: usize = 64 << 10;
const MAX_CHECKPOINT_SIGNATURES: usize = 16;
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
    /// A sigstore bundle of a version not handled here.
    #[error(
        "sigstore bundle media type {media_type} is not supported ({BUNDLE_V03_MEDIA_TYPE} or version 0.2 expected)"
    )]
    UnsupportedBundle {
        /// The bundle's `mediaType`.
        media_type: String,
    },
    /// A sigstore bundle with a plain message signature, not an attestation.
    #[error("sigstore bundle holds no DSSE envelope (a message signature is not an attestation)")]
    NotDsseBundle,
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
    /// The sigstore bundle cannot be read.
    #[error("sigstore bundle is malformed: {reason}")]
    BundleMalformed {
        /// What is wrong.
        reason: String,
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
    /// A sigstore bundle without any transparency log entry.
    #[error("sigstore bundle has no transparency log entry; Rekor is required for bundles")]
    NoTlogEntry,
    /// A tlog entry lacks a part that offline verification needs.
    #[error("Rekor entry {log_index} in the bundle has no {what}")]
    TlogIncomplete {
        /// The entry's log index.
        log_index: i64,
        /// `signed entry timestamp (inclusionPromise)`, `inclusion proof`, `checkpoint`.
        what: &'static str,
    },
    /// The RFC 6962 inclusion proof does not lead to the root hash.
    #[error("Rekor inclusion proof for entry {log_index} does not verify: {reason}")]
    InclusionProof {
        /// The entry's log index.
        log_index: i64,
        /// What did not add up.
        reason: String,
    },
    /// The checkpoint is unsigned, signed by another key, or for another tree.
    #[error("Rekor checkpoint for entry {log_index} is not valid: {reason}")]
    Checkpoint {
        /// The entry's log index.
        log_index: i64,
        /// What is wrong.
        reason: String,
    },
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
            A::NotDsse { .. } | A::UnsupportedBundle { .. } | A::NotDsseBundle => 0,
            A::EnvelopeMalformed { .. }
            | A::TooManySignatures { .. }
            | A::BundleMalformed { .. } => 1,
            A::BadSignature { .. } => 2,
            A::Check(f) => f.specificity().min(3),
            A::NoTlogEntry
            | A::TlogIncomplete { .. }
            | A::InclusionProof { .. }
            | A::Checkpoint { .. }
            | A::UnsupportedEntry { .. } => 3,
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
    fn subjects_summary(&self) -> String {
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
/// envelope carries no certificate, so certificate authorities need [`verify_bundle`].
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
// Sigstore bundles

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: RawMaterial,
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    certificate: Option<RawBytes>,
    x509_certificate_chain: Option<RawChain>,
    #[serde(default)]
    tlog_entries: Vec<RawTlogEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTlogEntry {
    #[serde(deserialize_with = "int64")]
    log_index: i64,
    log_id: RawLogId,
    kind_version: Option<RawKindVersion>,
    #[serde(deserialize_with = "int64")]
    integrated_time: i64,
    inclusion_promise: Option<RawPromise>,
    inclusion_proof: Option<RawProof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
struct RawKindVersion {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPromise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProof {
    #[serde(deserialize_with = "int64")]
    log_index: i64,
    root_hash: String,
    #[serde(deserialize_with = "int64")]
    tree_size: i64,
    hashes: Vec<String>,
    checkpoint: Option<RawCheckpoint>,
}

#[derive(Deserialize)]
struct RawCheckpoint {
    envelope: String,
}

/// A protobuf-JSON int64: a decimal string (what protobuf writes) or a number.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Text(String),
        Number(i64),
    }
    match Int64::deserialize(d)? {
        Int64::Number(n) => Ok(n),
        Int64::Text(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            s.parse().map_err(de::Error::custom)
        }
        Int64::Text(s) => Err(de::Error::custom(format!(
            "{:?} is not an integer",
            shown(&s)
        ))),
    }
}

/// A transparency-log entry of a bundle whose SET, inclusion proof and checkpoint verified.
/// Only the log's statements are vouched for; whether the entry is about a given envelope is
/// checked by [`verify_bundle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogEntry {
    /// The entry's global log index (what the SET covers).
    pub log_index: i64,
    /// When the log integrated the entry (Unix seconds): the trusted signing time.
    pub integrated_time: i64,
    /// The log ID, lowercase hex.
    pub log_id: String,
    /// The entry's index in its tree (shard), as proved.
    pub tree_index: u64,
    /// The size of the tree the inclusion proof and checkpoint are for.
    pub tree_size: u64,
    /// The entry body (JSON).
    pub body: Vec<u8>,
}

fn parse_bundle(bundle_json: &[u8]) -> Result<RawBundle, AttestationFailure> {
    if bundle_json.len() > MAX_ENVELOPE_BYTES {
        return Err(bundle_malformed(format!(
            "{} bytes; at most {MAX_ENVELOPE_BYTES} are accepted",
            bundle_json.len()
        )));
    }
    let bundle: RawBundle =
        serde_json::from_slice(bundle_json).map_err(|e| bundle_malformed(shown(&e.to_string())))?;
    if bundle.media_type != BUNDLE_V03_MEDIA_TYPE && bundle.media_type != BUNDLE_V02_MEDIA_TYPE {
        return Err(AttestationFailure::UnsupportedBundle {
            media_type: shown(&bundle.media_type),
        });
    }
    Ok(bundle)
}

fn bundle_malformed(reason: String) -> AttestationFailure {
    AttestationFailure::BundleMalformed { reason }
}

/// Verifies the transparency-log side of a sigstore bundle: for every tlog entry (at least
/// one), the SET with a trusted Rekor key, the RFC 6962 inclusion proof of the entry body up to
/// `rootHash`, and the checkpoint (signed by the same log, for the same tree size and root).
/// Does not look at the envelope, certificate or key; [`verify_bundle`] does all of it.
pub fn verify_bundle_tlog(
    bundle_json: &[u8],
    rekor: &RekorKeys,
) -> Result<Vec<TlogEntry>, AttestationFailure> {
    let bundle = parse_bundle(bundle_json)?;
    tlog_entries(&bundle.verification_material.tlog_entries, rekor)
}

fn tlog_entries(
    raw: &[RawTlogEntry],
    rekor: &RekorKeys,
) -> Result<Vec<TlogEntry>, AttestationFailure> {
    if raw.is_empty() {
        return Err(AttestationFailure::NoTlogEntry);
    }
    if raw.len() > MAX_TLOG_ENTRIES {
        return Err(bundle_malformed(format!(
            "{} tlog entries; at most {MAX_TLOG_ENTRIES} are accepted",
            raw.len()
        )));
    }
    raw.iter().map(|e| tlog_entry(e, rekor)).collect()
}

fn tlog_entry(raw: &RawTlogEntry, rekor: &RekorKeys) -> Result<TlogEntry, AttestationFailure> {
    let log_index = raw.log_index;
    let incomplete = |what| AttestationFailure::TlogIncomplete { log_index, what };
    let log_id_bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.log_id.key_id.as_bytes())
        .map_err(|_| bundle_malformed("logId.keyId is not base64".into()))?;
    let log_id = hex(&log_id_bytes);
    let promise = raw
        .inclusion_promise
        .as_ref()
        .ok_or_else(|| incomplete("signed entry timestamp (inclusionPromise)"))?;
    let entry = rekor::verify_set_fields(
        &raw.canonicalized_body,
        raw.integrated_time,
        log_index,
        &log_id,
        &promise.signed_entry_timestamp,
        rekor,
    )?;
    if let Some(kv) = &raw.kind_version {
        let body = parse_body(&entry.body)?;
        if kv.kind != body.kind || kv.version != body.api_version {
            return Err(bundle_malformed(format!(
                "kindVersion {} {} does not match the entry body's {} {}",
                shown(&kv.kind),
                shown(&kv.version),
                shown(&body.kind),
                shown(&body.api_version)
            )));
        }
    }

    let proof = raw
        .inclusion_proof
        .as_ref()
        .ok_or_else(|| incomplete("inclusion proof"))?;
    let proof_failure = |reason: String| AttestationFailure::InclusionProof { log_index, reason };
    let (Ok(index), Ok(size)) = (
        u64::try_from(proof.log_index),
        u64::try_from(proof.tree_size),
    ) else {
        return Err(proof_failure("negative log index or tree size".into()));
    };
    if proof.hashes.len() > MAX_PROOF_HASHES {
        return Err(proof_failure(format!(
            "{} hashes; at most {MAX_PROOF_HASHES} are accepted",
            proof.hashes.len()
        )));
    }
    let hash32 = |what: &str, b64: &str| -> Result<[u8; 32], AttestationFailure> {
        decode_base64(b64)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| proof_failure(format!("{what} is not a base64 SHA-256 hash")))
    };
    let root = hash32("rootHash", &proof.root_hash)?;
    let hashes = proof
        .hashes
        .iter()
        .map(|h| hash32("a proof hash", h))
        .collect::<Result<Vec<_>, _>>()?;
    verify_inclusion(index, size, &leaf_hash(&entry.body), &hashes, &root)
        .map_err(proof_failure)?;

    let checkpoint = proof
        .checkpoint
        .as_ref()
        .ok_or_else(|| incomplete("checkpoint"))?;
    let key = rekor.key(&log_id).ok_or_else(|| Failure::UntrustedLog {
        log_id: shown(&log_id),
    })?;
    verify_checkpoint(&checkpoint.envelope, key, &log_id_bytes, size, &root)
        .map_err(|reason| AttestationFailure::Checkpoint { log_index, reason })?;

    Ok(TlogEntry {
        log_index,
        integrated_time: entry.integrated_time,
        log_id,
        tree_index: index,
        tree_size: size,
        body: entry.body,
    })
}

/// Verifies a sigstore bundle (v0.3, or v0.2) holding a DSSE attestation with one authority:
/// every tlog entry's SET, inclusion proof and checkpoint ([`verify_bundle_tlog`]); the
/// certificate (`verificationMaterial.certificate` or `x509CertificateChain`) at every entry's
/// integrated time, or the configured key; a signature over PAE; every entry body bound to this
/// envelope, signature and signer; then the statement and its subject `digest`. Rekor is always
/// required: a bundle is only as good as its log proofs.
pub fn verify_bundle(
    bundle_json: &[u8],
    authority: &Authority,
    digest: &str,
    rekor: &RekorKeys,
) -> Result<VerifiedAttestation, AttestationFailure> {
    let bundle = parse_bundle(bundle_json)?;
    let raw_envelope = bundle
        .dsse_envelope
        .ok_or(AttestationFailure::NotDsseBundle)?;
    let envelope = Envelope::from_raw(raw_envelope)?;
    let material = bundle.verification_material;
    let entries = tlog_entries(&material.tlog_entries, rekor)?;
    let times: Vec<i64> = entries.iter().map(|e| e.integrated_time).collect();
    let signer = signer(authority, || bundle_certificates(&material), &times)?;
    let sig = verified_signature(&envelope, &signer)?;
    for entry in &entries {
        bind_entry(&entry.body, entry.log_index, &envelope, None, sig, &signer)?;
    }
    let statement = statement_of(&envelope)?;
    check_subject(&statement, digest, "image")?;
    Ok(VerifiedAttestation {
        statement,
        signer: signer.identity(),
        tlog: true,
        integrated_time: times.iter().copied().min(),
    })
}

/// The leaf and chain (DER) of a bundle's verification material.
fn bundle_certificates(material: &RawMaterial) -> Result<(Vec<u8>, Vec<Vec<u8>>), Failure> {
    let decode = |c: &RawBytes| {
        decode_base64(&c.raw_bytes).ok_or_else(|| Failure::Certificate {
            reason: "a bundle certificate is not base64".into(),
        })
    };
    if let Some(cert) = &material.certificate {
        return Ok((decode(cert)?, Vec::new()));
    }
    if let Some(chain) = &material.x509_certificate_chain {
        let mut certs = chain
            .certificates
            .iter()
            .take(MAX_SIGNATURES)
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        if !certs.is_empty() {
            let leaf = certs.remove(0);
            return Ok((leaf, certs));
        }
    }
    Err(Failure::Certificate {
        reason: "the bundle's verification material holds no certificate".into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Merkle tree (RFC 6962 / RFC 9162) and checkpoints

/// RFC 6962 leaf hash: SHA-256(0x00 || entry).
fn leaf_hash(entry: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(entry)
        .finalize()
        .into()
}

/// RFC 6962 interior node hash: SHA-256(0x01 || left || right).
fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2): the leaf at `index` of a tree of
/// `size` leaves, with audit path `proof`, hashes up to `root`.
fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8; 32],
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), String> {
    if index >= size {
        return Err(format!("leaf index {index} is not below tree size {size}"));
    }
    if proof.len() > MAX_PROOF_HASHES {
        return Err(format!(
            "{} hashes; at most {MAX_PROOF_HASHES} are accepted",
            proof.len()
        ));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(format!(
                "{} hashes are more than a tree of {size} needs for leaf {index}",
                proof.len()
            ));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(format!(
            "{} hashes are fewer than a tree of {size} needs for leaf {index}",
            proof.len()
        ));
    }
    if r != *root {
        return Err(format!(
            "the path from the entry leads to root {}, not rootHash {}",
            hex(&r),
            hex(root)
        ));
    }
    Ok(())
}

/// Verifies a checkpoint (signed note): a signature line whose key hint is the first 4 bytes
/// of the log ID and whose signature by `key` verifies over the note text, and a note naming
/// `size` and `root`.
fn verify_checkpoint(
    text: &str,
    key: &PublicKey,
    log_id: &[u8],
    size: u64,
    root: &[u8; 32],
) -> Result<(), String> {
    if text.len() > MAX_CHECKPOINT_BYTES {
        return Err(format!(
            "{} bytes; at most {MAX_CHECKPOINT_BYTES} are accepted",
            text.len()
        ));
    }
    let split = text
        .find("\n\n")
        .ok_or("no blank line between the note and its signatures")?;
    let (note, signatures) = (&text[..=split], &text[split + 2..]);
    let mut lines = note.lines();
    let origin = lines.next().unwrap_or_default();
    if origin.is_empty() {
        return Err("the note has no origin line".into());
    }
    let size_line = lines.next().unwrap_or_default();
    let note_size: u64 = size_line
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| size_line.parse().ok())
        .flatten()
        .ok_or_else(|| format!("tree size {:?} is not a number", shown(size_line)))?;
    let note_root = lines
        .next()
        .and_then(|l| base64::engine::general_purpose::STANDARD.decode(l).ok())
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or("the root hash line is not a base64 SHA-256 hash")?;

    let hint = log_id
        .get(..4)
        .ok_or("the log ID is shorter than a key hint")?;
    let mut from_log = 0;
    let mut verified = false;
    for (i, line) in signatures.lines().enumerate() {
        if i == MAX_CHECKPOINT_SIGNATURES {
            return Err(format!(
                "more than {MAX_CHECKPOINT_SIGNATURES} signature lines"
            ));
        }
        let Some((_name, b64)) = line
            .strip_prefix("\u{2014} ")
            .and_then(|rest| rest.split_once(' '))
        else {
            return Err(format!("signature line {:?} is malformed", shown(line)));
        };
        let Some(sig) = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|s| s.len() > 4)
        else {
            return Err(format!("signature line {:?} is not base64", shown(line)));
        };
        if sig.get(..4) == Some(hint) {
            from_log += 1;
            if key.verifies(&sig[4..], note.as_bytes()) {
                verified = true;
                break;
            }
        }
    }
    if !verified {
        return Err(if from_log == 0 {
            format!(
                "it has no signature by log {} (key hint {})",
                hex(log_id),
                hex(hint)
            )
        } else {
            format!(
                "its signature does not verify with the key of log {}",
                hex(log_id)
            )
        });
    }
    if note_size != size || note_root != *root {
        return Err(format!(
            "it is for tree size {note_size} with root {}, the inclusion proof for size {size} with root {}",
            hex(&note_root),
            hex(root)
        ));
    }
    Ok(())
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

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
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

    // --- Merkle trees ------------------------------------------------------------------

    /// RFC 6962 MTH, straight from the definition.
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

    /// The largest power of two below `n` (n > 1).
    fn split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// RFC 6962 PATH(m, D[n]), straight from the definition.
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

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n)
            .map(|i| leaf_hash(format!("entry {i}").as_bytes()))
            .collect()
    }

    /// Every leaf of every tree up to 17 leaves proves its inclusion; a wrong leaf, index,
    /// root, or a proof with a hash too many or too few does not. (A wrong size alone can
    /// still lead to the same root for some leaves: the checkpoint, signed over size and
    /// root, is what pins the size.)
    #[test]
    fn inclusion_proofs_on_small_trees() {
        for n in 1..=17usize {
            let l = leaves(n);
            let root = mth(&l);
            for m in 0..n {
                let (i, size) = (m as u64, n as u64);
                let proof = audit_path(m, &l);
                assert_eq!(
                    verify_inclusion(i, size, &l[m], &proof, &root),
                    Ok(()),
                    "{m}/{n}"
                );
                let other = leaf_hash(b"other");
                assert!(verify_inclusion(i, size, &other, &proof, &root).is_err());
                assert!(verify_inclusion(i, size, &l[m], &proof, &other).is_err());
                if n > 1 {
                    let j = (m + 1) % n;
                    assert!(
                        verify_inclusion(j as u64, size, &l[m], &proof, &root).is_err(),
                        "{m}/{n}"
                    );
                    assert!(verify_inclusion(i, size, &l[m], &proof[1..], &root).is_err());
                    let mut flipped = proof.clone();
                    flipped[0][0] ^= 1;
                    assert!(verify_inclusion(i, size, &l[m], &flipped, &root).is_err());
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(verify_inclusion(i, size, &l[m], &longer, &root).is_err());
            }
            assert!(verify_inclusion(n as u64, n as u64, &l[0], &[], &root).is_err());
        }
        let err = verify_inclusion(0, u64::MAX, &[0; 32], &[[0; 32]; 65], &[0; 32]).unwrap_err();
        assert!(err.contains("at most 64"), "{err}");
        // A one-leaf tree: the root is the leaf hash, with an empty proof.
        assert_eq!(verify_inclusion(0, 1, &[7; 32], &[], &[7; 32]), Ok(()));
    }

    // --- A test log that signs SETs and checkpoints -----------------------------------

    struct TestLog {
        signer: SigStoreSigner,
        keys: RekorKeys,
        log_id: String,
    }

    impl TestLog {
        fn new() -> Self {
            let (signer, pem) = keypair(SigningScheme::ECDSA_P256_SHA256_ASN1);
            let keys = RekorKeys::from_named_pems([("test-rekor", pem.as_bytes())]).unwrap();
            let log_id = keys.log_ids().next().unwrap().to_owned();
            TestLog {
                signer,
                keys,
                log_id,
            }
        }

        fn set(&self, body_b64: &str, integrated_time: i64, log_index: i64) -> String {
            let canonical = format!(
                "{{\"body\":{},\"integratedTime\":{integrated_time},\"logID\":\"{}\",\"logIndex\":{log_index}}}",
                serde_json::to_string(body_b64).unwrap(),
                self.log_id
            );
            b64(&self.signer.sign(canonical.as_bytes()).unwrap())
        }

        fn note_signature(&self, note: &str) -> String {
            let mut sig = unhex(&self.log_id)[..4].to_vec();
            sig.extend(self.signer.sign(note.as_bytes()).unwrap());
            b64(&sig)
        }

        fn checkpoint(&self, size: u64, root: &[u8; 32]) -> String {
            let note = format!("log.example - 7\n{size}\n{}\n", b64(root));
            format!(
                "{note}\n\u{2014} log.example {}\n",
                self.note_signature(&note)
            )
        }
    }

    /// Checkpoints: the log's signature over the note (found by key hint, next to other
    /// witnesses), for the proof's size and root; everything else is named.
    #[test]
    fn checkpoint_checks() {
        let log = TestLog::new();
        let key = log.keys.key(&log.log_id).unwrap();
        let id = unhex(&log.log_id);
        let root = [9u8; 32];
        let good = log.checkpoint(5, &root);
        assert_eq!(verify_checkpoint(&good, key, &id, 5, &root), Ok(()));
        let err = verify_checkpoint(&good, key, &id, 6, &root).unwrap_err();
        assert!(err.contains("for tree size 5"), "{err}");
        assert!(verify_checkpoint(&good, key, &id, 5, &[8; 32]).is_err());
        // A witness line first, then the log's.
        let note = format!("log.example - 7\n5\n{}\n", b64(&root));
        let witness = TestLog::new();
        let two = format!(
            "{note}\n\u{2014} witness {}\n\u{2014} log.example {}\n",
            witness.note_signature(&note),
            log.note_signature(&note)
        );
        assert_eq!(verify_checkpoint(&two, key, &id, 5, &root), Ok(()));
        // Only a stranger's signature.
        let stranger = format!(
            "{note}\n\u{2014} log.example {}\n",
            witness.note_signature(&note)
        );
        let err = verify_checkpoint(&stranger, key, &id, 5, &root).unwrap_err();
        assert!(err.contains("no signature by log"), "{err}");
        // The log's key hint, but a signature over another note.
        let other_note = format!("log.example - 7\n6\n{}\n", b64(&root));
        let forged = format!(
            "{note}\n\u{2014} log.example {}\n",
            log.note_signature(&other_note)
        );
        let err = verify_checkpoint(&forged, key, &id, 5, &root).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
        for bad in [
            String::new(),
            note.clone(),
            format!("{note}\nno dash here\n"),
            format!("{note}\n\u{2014} log.example !!!\n"),
            format!(
                "\n5\n{}\n\n\u{2014} log.example {}\n",
                b64(&root),
                log.note_signature(&note)
            ),
            format!("log.example\n+5\n{}\n\n\u{2014} x AAAAAAA=\n", b64(&root)),
            "log.example\n5\nAAAA\n\n\u{2014} x AAAAAAA=\n".to_owned(),
            "x".repeat(MAX_CHECKPOINT_BYTES + 1),
        ] {
            assert!(
                verify_checkpoint(&bad, key, &id, 5, &root).is_err(),
                "{bad:?}"
            );
        }
    }

    // --- Sigstore bundles ----------------------------------------------------------------

    /// A bundle v0.3 in cosign's layout around `envelope` (bundle form), whose single tlog
    /// entry holds `body` as leaf `index` of a tree of `size` leaves.
    fn bundle(log: &TestLog, envelope: &Value, body: &Value, index: usize, size: usize) -> Value {
        let body_bytes = body.to_string().into_bytes();
        let mut l = leaves(size);
        l[index] = leaf_hash(&body_bytes);
        let root = mth(&l);
        let proof: Vec<String> = audit_path(index, &l).iter().map(|h| b64(h)).collect();
        let body_b64 = b64(&body_bytes);
        json!({
            "mediaType": BUNDLE_V03_MEDIA_TYPE,
            "verificationMaterial": {
                "publicKey": {"hint": "ignored"},
                "tlogEntries": [{
                    "logIndex": "1000",
                    "logId": {"keyId": b64(&unhex(&log.log_id))},
                    "kindVersion": {"kind": body["kind"], "version": body["apiVersion"]},
                    "integratedTime": "1700000000",
                    "inclusionPromise": {"signedEntryTimestamp": log.set(&body_b64, 1_700_000_000, 1000)},
                    "inclusionProof": {
                        "logIndex": index.to_string(),
                        "rootHash": b64(&root),
                        "treeSize": size.to_string(),
                        "hashes": proof,
                        "checkpoint": {"envelope": log.checkpoint(size as u64, &root)},
                    },
                    "canonicalizedBody": body_b64,
                }],
            },
            "dsseEnvelope": envelope,
        })
    }

    /// The envelope as a bundle holds it (protobuf JSON: no keyid) and the Go serialization
    /// cosign uploaded, which the dsse entry's envelope hash covers.
    fn bundle_envelope(payload: &[u8], sig: &[u8]) -> (Value, String) {
        let bundle_form = json!({"payload": b64(payload), "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "signatures": [{"sig": b64(sig)}]});
        let uploaded = format!(
            r#"{{"payloadType":"{IN_TOTO_PAYLOAD_TYPE}","payload":"{}","signatures":[{{"keyid":"","sig":"{}"}}]}}"#,
            b64(payload),
            b64(sig)
        );
        (bundle_form, uploaded)
    }

    /// A complete key-signed bundle verifies: SET, inclusion proof, checkpoint, dsse body
    /// (envelope hash over cosign's serialization), signature, subject.
    #[test]
    fn bundle_verifies() {
        let log = TestLog::new();
        let a = Attestor::new("a");
        let payload = slsa();
        let sig = a.sign_pae(IN_TOTO_PAYLOAD_TYPE, &payload);
        let (envelope, uploaded) = bundle_envelope(&payload, &sig);
        for (index, size) in [(0, 1), (3, 7), (6, 7), (12, 13)] {
            let body = dsse_v001(uploaded.as_bytes(), &payload, &sig, &a.pem);
            let b = bundle(&log, &envelope, &body, index, size).to_string();
            let v = verify_bundle(b.as_bytes(), &a.authority(), &digest(), &log.keys).unwrap();
            assert!(v.tlog);
            assert_eq!(v.integrated_time, Some(1_700_000_000));
            assert_eq!(v.signer, "a");
            let entries = verify_bundle_tlog(b.as_bytes(), &log.keys).unwrap();
            assert_eq!(entries[0].tree_index, index as u64);
            assert_eq!(entries[0].tree_size, size as u64);
            assert_eq!(entries[0].log_index, 1000);
            assert_eq!(entries[0].log_id, log.log_id);
        }
        // An intoto 0.0.2 entry in a bundle binds by cosign's serialization too.
        let body = intoto_v002(uploaded.as_bytes(), &payload, &sig, &a.pem);
        let b = bundle(&log, &envelope, &body, 2, 5).to_string();
        assert!(verify_bundle(b.as_bytes(), &a.authority(), &digest(), &log.keys).is_ok());
    }

    /// A bundle whose inclusion proof, checkpoint or SET fails is refused, naming which;
    /// so are entries about another envelope and bundles of the wrong shape.
    #[test]
    fn bundle_failures_name_the_check() {
        let log = TestLog::new();
        let a = Attestor::new("a");
        let payload = slsa();
        let sig = a.sign_pae(IN_TOTO_PAYLOAD_TYPE, &payload);
        let (envelope, uploaded) = bundle_envelope(&payload, &sig);
        let body = dsse_v001(uploaded.as_bytes(), &payload, &sig, &a.pem);
        let good = bundle(&log, &envelope, &body, 3, 7);
        let run = |b: &Value| {
            verify_bundle(
                b.to_string().as_bytes(),
                &a.authority(),
                &digest(),
                &log.keys,
            )
            .unwrap_err()
        };
        let entry = "/verificationMaterial/tlogEntries/0";

        let mut b = good.clone();
        let h = b
            .pointer_mut(&format!("{entry}/inclusionProof/hashes/1"))
            .unwrap();
        *h = b64(&[0u8; 32]).into();
        let err = run(&b);
        assert!(
            err.to_string()
                .starts_with("Rekor inclusion proof for entry 1000 does not verify"),
            "{err}"
        );

        let mut b = good.clone();
        *b.pointer_mut(&format!("{entry}/inclusionProof/logIndex"))
            .unwrap() = "4".into();
        assert!(matches!(run(&b), AttestationFailure::InclusionProof { .. }));

        let mut b = good.clone();
        let other_log = TestLog::new();
        let root = b
            .pointer(&format!("{entry}/inclusionProof/rootHash"))
            .unwrap()
            .as_str()
            .unwrap();
        let root: [u8; 32] = decode_base64(root).unwrap().try_into().unwrap();
        *b.pointer_mut(&format!("{entry}/inclusionProof/checkpoint/envelope"))
            .unwrap() = other_log.checkpoint(7, &root).into();
        let err = run(&b);
        assert!(
            err.to_string()
                .starts_with("Rekor checkpoint for entry 1000 is not valid"),
            "{err}"
        );

        let mut b = good.clone();
        *b.pointer_mut(&format!("{entry}/inclusionProof/checkpoint/envelope"))
            .unwrap() = log.checkpoint(8, &root).into();
        assert!(matches!(run(&b), AttestationFailure::Checkpoint { .. }));

        // A moved integrated time no longer matches the SET.
        let mut b = good.clone();
        *b.pointer_mut(&format!("{entry}/integratedTime")).unwrap() = "1600000000".into();
        let err = run(&b);
        assert_eq!(
            err.to_string(),
            format!(
                "Rekor bundle's signed entry timestamp does not verify with the key of log {}",
                log.log_id
            )
        );

        for (field, what) in [
            (
                "inclusionPromise",
                "signed entry timestamp (inclusionPromise)",
            ),
            ("inclusionProof", "inclusion proof"),
        ] {
            let mut b = good.clone();
            b.pointer_mut(entry)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(field);
            assert_eq!(
                run(&b),
                AttestationFailure::TlogIncomplete {
                    log_index: 1000,
                    what
                }
            );
        }
        let mut b = good.clone();
        b.pointer_mut(&format!("{entry}/inclusionProof"))
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("checkpoint");
        assert_eq!(
            run(&b),
            AttestationFailure::TlogIncomplete {
                log_index: 1000,
                what: "checkpoint"
            }
        );

        let mut b = good.clone();
        *b.pointer_mut(&format!("{entry}/kindVersion/kind")).unwrap() = "intoto".into();
        assert!(matches!(
            run(&b),
            AttestationFailure::BundleMalformed { .. }
        ));

        // The entry of another envelope (genuinely logged).
        let other_payload = statement(STATEMENT_V01, &[OTHER_HEX], json!({}));
        let other_sig = a.sign_pae(IN_TOTO_PAYLOAD_TYPE, &other_payload);
        let (_, other_uploaded) = bundle_envelope(&other_payload, &other_sig);
        let other_body = dsse_v001(
            other_uploaded.as_bytes(),
            &other_payload,
            &other_sig,
            &a.pem,
        );
        let err = run(&bundle(&log, &envelope, &other_body, 3, 7));
        assert_eq!(
            err,
            AttestationFailure::Check(Failure::BundleMismatch {
                what: "envelope hash",
                log_index: 1000
            })
        );

        // Shapes.
        let mut b = good.clone();
        b["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1".into();
        assert!(matches!(
            run(&b),
            AttestationFailure::UnsupportedBundle { .. }
        ));
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove("dsseEnvelope");
        b["messageSignature"] = json!({"signature": "AAAA"});
        assert_eq!(run(&b), AttestationFailure::NotDsseBundle);
        let mut b = good.clone();
        b["verificationMaterial"]["tlogEntries"] = json!([]);
        assert_eq!(run(&b), AttestationFailure::NoTlogEntry);
        let mut b = good.clone();
        b["verificationMaterial"]["tlogEntries"] = json!(vec![
                good["verificationMaterial"]["tlogEntries"][0].clone();
                9
            ]);
        assert!(matches!(
            run(&b),
            AttestationFailure::BundleMalformed { .. }
        ));
        let mut b = good.clone();
        let hashes = b
            .pointer_mut(&format!("{entry}/inclusionProof/hashes"))
            .unwrap();
        *hashes = json!(vec![b64(&[0; 32]); 65]);
        assert!(run(&b).to_string().contains("at most 64"));
        let mut b = good.clone();
        *b.pointer_mut(&format!("{entry}/logIndex")).unwrap() = "ten".into();
        assert!(matches!(
            run(&b),
            AttestationFailure::BundleMalformed { .. }
        ));
        // A stranger's log.
        let err = verify_bundle(
            good.to_string().as_bytes(),
            &a.authority(),
            &digest(),
            &TestLog::new().keys,
        )
        .unwrap_err();
        assert!(
            matches!(err, AttestationFailure::Check(Failure::UntrustedLog { .. })),
            "{err}"
        );

        // Signature and subject come after the log checks.
        let mut b = good.clone();
        b["dsseEnvelope"]["payloadType"] = "application/json".into();
        assert!(matches!(run(&b), AttestationFailure::BadSignature { .. }));
        let err = verify_bundle(
            good.to_string().as_bytes(),
            &a.authority(),
            &format!("sha256:{OTHER_HEX}"),
            &log.keys,
        )
        .unwrap_err();
        assert!(
            matches!(err, AttestationFailure::SubjectMismatch { .. }),
            "{err}"
        );
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
            AttestationFailure::Checkpoint {
                log_index: 1,
                reason: "r".into(),
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
        let log = TestLog::new();
        let fake = FakeLog::new();
        let a = Attestor::new("a");
        let payload = slsa();
        let sig = a.sign_pae(IN_TOTO_PAYLOAD_TYPE, &payload);
        let (envelope, uploaded) = bundle_envelope(&payload, &sig);
        let body = dsse_v001(uploaded.as_bytes(), &payload, &sig, &a.pem);
        let b = bundle(&log, &envelope, &body, 3, 7).to_string();
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
            let _ = verify_bundle(&noisy(b.as_bytes()), &a.authority(), &digest(), &log.keys);
            let mut layer = att_layer(&noisy(&env));
            layer.annotations.insert(
                BUNDLE_ANNOTATION.into(),
                String::from_utf8_lossy(&noisy(legacy.as_bytes())).into_owned(),
            );
            let _ = verify_layer_key(&layer, &a, Some(&fake.keys()));
            let _ = verify_blob_envelope(&noisy(&env), &a.authority(), DIGEST_HEX);
            let text = String::from_utf8_lossy(&noisy(log.checkpoint(7, &[1; 32]).as_bytes()))
                .into_owned();
            let _ = verify_checkpoint(
                &text,
                log.keys.key(&log.log_id).unwrap(),
                &unhex(&log.log_id),
                7,
                &[1; 32],
            );
        }
    }
}
