//! DSSE envelopes and in-toto statements: the content of every attestation, whether it comes
//! in a tag-based `.att` layer ([`super::tag::attestation`]) or in a Sigstore bundle
//! ([`super::bundle`]), and why one is not valid ([`AttestationFailure`]).
//!
//! - **DSSE envelope**
//!   `{"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64}]}`.
//!   The signature is over the pre-authentication encoding [`pae`]
//!   `"DSSEv1" SP len(type) SP type SP len(payload) SP payload` of the *decoded* payload, never
//!   over the payload itself, so a signature cannot be replayed as one over another type
//!   (vector NEG-attestation-not-PAE).
//! - **in-toto Statement** v0.1 or v1 (`_type`), with `predicateType`, `subject[].digest` and
//!   `predicate`; the payload when `payloadType` is [`IN_TOTO_PAYLOAD_TYPE`].
//!
//! A statement is parsed with serde_json and never re-serialized. An envelope's Go
//! serialization ([`Envelope`]'s `go_json`) is rebuilt only to recompute the hash a Rekor entry
//! holds of it (see `tag::rekor_bundle`).
//!
//! Bounds: envelopes of at most [`MAX_ENVELOPE_BYTES`], at most [`MAX_SIGNATURES`]
//! signatures; serde_json's recursion limit bounds nesting. Not checked: the `keyid`s.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::verify::cosign::{DSSE_MEDIA_TYPE, Failure, PublicKey, shown};

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
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// DSSE v1 pre-authentication encoding: the bytes a DSSE signature is over
/// (`"DSSEv1" SP len(type) SP type SP len(payload) SP payload`); sigstore-types' own, so the
/// `.att` path and the bundle path sign over the same bytes.
pub use sigstore_types::dsse::pae;

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
    pub(crate) fn go_json(&self, keyid_always: bool) -> String {
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
pub(crate) fn dsse_base64(s: &str) -> Option<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Go's JSON string escaping, which the envelope hash depends on.
    #[test]
    fn go_json_escaping() {
        let mut s = String::new();
        go_json_string(&mut s, "a\"b\\<&>\u{2028}\n\u{1}\u{8}\u{c}é");
        assert_eq!(s, r#""a\"b\\\u003c\u0026\u003e\u2028\n\u0001\b\fé""#);
    }
}
