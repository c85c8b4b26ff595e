//! What an attestor trusts besides its key or certificate authority, for Sigstore bundles:
//! Rekor logs (v1 and v2), RFC 3161 timestamp authorities, certificate-transparency logs and,
//! for keyless (Fulcio) attestors, the Fulcio CAs, each with its validity window; and how much
//! of that proof a bundle must carry ([`Transparency::require_tlog`],
//! [`Transparency::min_timestamps`]).
//!
//! The material is a sigstore trusted root (`trusted_root.json`, protobuf-specs `TrustedRoot`),
//! whether the operator gave one or the policy's PEM files were turned into one
//! ([`RootBuilder`]: `rekorKey`, keyless `roots`, `timestampAuthorities`). It is handed to the
//! Sigstore project's `sigstore-verify`, built once when the policy loads, so that every key and
//! certificate is checked then and not at each verification.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::keys::PublicKey;

/// The trust material and proof requirements of one attestor for Sigstore bundles.
#[derive(Clone, Default)]
pub struct Transparency {
    /// sigstore-verify over the material; `None` when the attestor has none.
    verifier: Option<Arc<sigstore_verify::Verifier>>,
    logs: usize,
    timestamp_authorities: usize,
    ct_logs: usize,
    certificate_authorities: usize,
    /// A bundle must carry a transparency-log entry whose inclusion (proof and checkpoint, or
    /// for v0.1 bundles the signed entry timestamp) verifies with a trusted log.
    pub require_tlog: bool,
    /// A bundle must carry at least this many RFC 3161 timestamps, each verifying with a
    /// trusted timestamp authority within its validity window.
    pub min_timestamps: usize,
}

impl fmt::Debug for Transparency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transparency")
            .field("logs", &self.logs)
            .field("timestamp_authorities", &self.timestamp_authorities)
            .field("ct_logs", &self.ct_logs)
            .field("certificate_authorities", &self.certificate_authorities)
            .field("require_tlog", &self.require_tlog)
            .field("min_timestamps", &self.min_timestamps)
            .finish()
    }
}

impl Transparency {
    /// Nothing trusted, nothing required: a bundle's signature alone decides (what cosign
    /// does with `--insecure-ignore-tlog` and no timestamp authority).
    pub fn none() -> Transparency {
        Transparency::default()
    }

    /// Trusts `root`. `name` prefixes messages (e.g. the attestor or file). Every key and
    /// certificate of the root must be usable (sigstore-verify refuses duplicates, malformed
    /// keys and windows that end before they start).
    pub fn new(
        name: &str,
        root: &sigstore_trust_root::TrustedRoot,
        require_tlog: bool,
        min_timestamps: usize,
    ) -> Result<Transparency, String> {
        let verifier = sigstore_verify::Verifier::new(root)
            .map_err(|e| format!("{name}: the trust material cannot be used: {e}"))?;
        Ok(Transparency {
            verifier: Some(Arc::new(verifier)),
            logs: root.tlogs.len(),
            timestamp_authorities: root.timestamp_authorities.len(),
            ct_logs: root.ctlogs.len(),
            certificate_authorities: root.certificate_authorities.len(),
            require_tlog,
            min_timestamps,
        })
    }

    /// sigstore-verify over this material, if there is any.
    pub(crate) fn verifier(&self) -> Option<&sigstore_verify::Verifier> {
        self.verifier.as_deref()
    }

    /// How many transparency logs (Rekor) are trusted.
    pub fn logs(&self) -> usize {
        self.logs
    }

    /// How many RFC 3161 timestamp authorities are trusted.
    pub fn timestamp_authorities(&self) -> usize {
        self.timestamp_authorities
    }

    /// How many certificate-transparency logs are trusted (SCTs of Fulcio certificates are
    /// verified when there is at least one).
    pub fn ct_logs(&self) -> usize {
        self.ct_logs
    }

    /// How many certificate authorities (Fulcio) the material holds.
    pub fn certificate_authorities(&self) -> usize {
        self.certificate_authorities
    }

    /// Whether a bundle's log entries or timestamps can be checked at all.
    pub fn can_check_evidence(&self) -> bool {
        self.verifier.is_some() && (self.logs > 0 || self.timestamp_authorities > 0)
    }
}

/// Media type of the trusted roots written here.
const TRUSTED_ROOT_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.trustedroot+json;version=0.1";

/// Builds a sigstore trusted root from an existing one and/or PEM material, as JSON that
/// sigstore's own parser then reads (its types cannot be built field by field).
#[derive(Debug, Clone)]
pub struct RootBuilder {
    doc: Value,
}

impl Default for RootBuilder {
    fn default() -> Self {
        RootBuilder {
            doc: json!({
                "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
                "tlogs": [],
                "certificateAuthorities": [],
                "ctlogs": [],
                "timestampAuthorities": [],
            }),
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl RootBuilder {
    /// Starts from a trusted root (its JSON as sigstore serializes it).
    pub fn from_root(root: &sigstore_trust_root::TrustedRoot) -> Result<RootBuilder, String> {
        let mut doc = serde_json::to_value(root)
            .map_err(|e| format!("cannot re-read the trusted root: {e}"))?;
        for list in [
            "tlogs",
            "certificateAuthorities",
            "ctlogs",
            "timestampAuthorities",
        ] {
            if doc.get(list).is_none_or(Value::is_null) {
                doc[list] = json!([]);
            }
        }
        Ok(RootBuilder { doc })
    }

    fn push(&mut self, list: &str, entry: Value) {
        if let Some(items) = self.doc.get_mut(list).and_then(Value::as_array_mut) {
            items.push(entry);
        }
    }

    /// Adds a Rekor (v1) log by its key: the log ID is the SHA-256 of the key's DER
    /// SubjectPublicKeyInfo, as Rekor v1 names its logs. (A Rekor v2 log names itself
    /// differently in checkpoints: give its `trusted_root.json` instead.)
    pub fn rekor_key(&mut self, name: &str, key: &PublicKey) {
        let spki = key.spki_der();
        self.push(
            "tlogs",
            json!({
                "baseUrl": format!("rekor-key:{name}"),
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": b64(spki), "keyDetails": key_details(key)},
                "logId": {"keyId": b64(&Sha256::digest(spki))},
            }),
        );
    }

    /// Adds a certificate authority (a chain, leaf-most first, ending with its root).
    pub fn certificate_authority(&mut self, name: &str, chain: &[Vec<u8>]) {
        self.push(
            "certificateAuthorities",
            json!({
                "uri": format!("ca:{name}"),
                "certChain": {"certificates": chain.iter().map(|c| json!({"rawBytes": b64(c)})).collect::<Vec<_>>()},
            }),
        );
    }

    /// Adds an RFC 3161 timestamp authority: its certificate chain, the TSA's signing
    /// certificate first, ending with the root (as cosign's `--timestamp-certificate-chain`).
    pub fn timestamp_authority(&mut self, name: &str, chain: &[Vec<u8>]) {
        self.push(
            "timestampAuthorities",
            json!({
                "uri": format!("tsa:{name}"),
                "certChain": {"certificates": chain.iter().map(|c| json!({"rawBytes": b64(c)})).collect::<Vec<_>>()},
            }),
        );
    }

    /// Drops the certificate authorities (for attestors whose certificates are checked
    /// against their own PKI, not against Fulcio's).
    pub fn without_certificate_authorities(mut self) -> RootBuilder {
        self.doc["certificateAuthorities"] = json!([]);
        self
    }

    /// The trusted root.
    pub fn build(&self) -> Result<sigstore_trust_root::TrustedRoot, String> {
        sigstore_trust_root::TrustedRoot::from_json(&self.doc.to_string())
            .map_err(|e| format!("cannot build a trusted root: {e}"))
    }
}

/// protobuf-specs `PublicKeyDetails` of a key (sigstore reads the key's own algorithm from
/// its SubjectPublicKeyInfo; this name is informative).
fn key_details(key: &PublicKey) -> &'static str {
    let a = key.algorithm();
    if a.starts_with("ECDSA P-256") {
        "PKIX_ECDSA_P256_SHA_256"
    } else if a.starts_with("ECDSA P-384") {
        "PKIX_ECDSA_P384_SHA_384"
    } else if a.starts_with("ECDSA P-521") {
        "PKIX_ECDSA_P521_SHA_512"
    } else if a.starts_with("Ed25519") {
        "PKIX_ED25519"
    } else {
        "PKIX_RSA_PKCS1V15_2048_SHA256"
    }
}
