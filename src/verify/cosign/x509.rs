//! Certificate-based signers: keyless (Fulcio) and bring-your-own PKI.
//!
//! SKELETON: the types and signatures below are the agreed interface; the checks are being
//! written (chain to a configured root at a given time, identity match, key usage).

use super::{Failure, PublicKey};

/// How one certificate field must match: exactly, or by regular expression (unanchored, as
/// cosign's `--certificate-identity-regexp` and Kyverno's `subjectRegExp`).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal text.
    Exact(String),
    /// `regex::Regex::is_match`.
    Regex(regex::Regex),
}

/// The identity a signing certificate must carry.
#[derive(Debug, Clone, Default)]
pub struct CertIdentity {
    /// Matched against each subject alternative name (email, URI, DNS, Fulcio's otherName).
    pub subject: Option<Matcher>,
    /// Matched against the Fulcio OIDC issuer extension; a certificate without one fails.
    pub issuer: Option<Matcher>,
}

/// A certificate authority signers chain to (Fulcio, or your own PKI), with the identity a
/// signing certificate must carry.
#[derive(Debug, Clone)]
pub struct CertAuthority {
    /// The operator's name for this attestor.
    pub name: String,
    /// Trust anchors (DER).
    roots: Vec<Vec<u8>>,
    /// Intermediates that may complete a chain (DER); never anchors.
    intermediates: Vec<Vec<u8>>,
    /// What the leaf must say.
    pub identity: CertIdentity,
}

/// What a verified leaf certificate says, for messages and `cri-guard verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSummary {
    /// The subject alternative names.
    pub subjects: Vec<String>,
    /// The Fulcio OIDC issuer, if any.
    pub issuer: Option<String>,
}

impl CertAuthority {
    /// From DER certificates: `roots` are the anchors, `intermediates` may complete chains.
    pub fn from_der(
        name: &str,
        roots: Vec<Vec<u8>>,
        intermediates: Vec<Vec<u8>>,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        Ok(CertAuthority {
            name: name.to_owned(),
            roots,
            intermediates,
            identity,
        })
    }

    /// From PEM texts (placeholder: every certificate of `roots` is an anchor).
    pub fn from_pem(
        name: &str,
        roots: &[u8],
        intermediates: Option<&[u8]>,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        let roots = pem_certificates(name, roots)?;
        let intermediates = match intermediates {
            Some(p) => pem_certificates(name, p)?,
            None => Vec::new(),
        };
        CertAuthority::from_der(name, roots, intermediates, identity)
    }

    /// Checks a leaf certificate (DER) with the untrusted `chain` (DER, e.g. the chain
    /// annotation) at Unix time `at`: it chains to a root, every certificate on the path is
    /// valid at `at`, key usage allows signing, and it matches the identity. Returns the
    /// leaf's public key, to verify the signature with.
    pub fn verify_leaf(
        &self,
        _leaf: &[u8],
        _chain: &[Vec<u8>],
        _at: i64,
    ) -> Result<(PublicKey, LeafSummary), Failure> {
        let _ = (&self.roots, &self.intermediates);
        Err(Failure::Certificate {
            reason: "certificate verification is not built yet".into(),
        })
    }
}

/// Every `CERTIFICATE` block of a PEM text, as DER.
pub fn pem_certificates(name: &str, pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = super::keys::pem_blocks(pem).map_err(|e| format!("{name}: {e}"))?;
    let mut out = Vec::new();
    for b in blocks {
        if b.label != "CERTIFICATE" {
            return Err(format!(
                "{name}: a {} block where a CERTIFICATE was expected",
                b.label
            ));
        }
        out.push(
            b.decode()
                .ok_or_else(|| format!("{name}: a CERTIFICATE block is not base64"))?,
        );
    }
    Ok(out)
}
