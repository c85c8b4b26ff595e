//! Tag-based cosign attachments: what cosign 2.x (and cosign 3 with
//! `--new-bundle-format=false`) stores next to an image `repo@sha256:H` under the tags
//! `sha256-H.sig` (signatures) and `sha256-H.att` (attestations), in the same repository or a
//! configured signatures repository. Each is an OCI manifest whose layers are checked one by
//! one ([`SigLayer`]): a layer that is not what its tag holds is one failed layer, never a
//! failed fetch (sigstore 0.15's Client fails the whole fetch and hides valid signatures next
//! to it).
//!
//! Annotations shared by both: the signature ([`SIGNATURE_ANNOTATION`]), for certificate
//! signers the certificate and untrusted chain ([`CERTIFICATE_ANNOTATION`],
//! [`CHAIN_ANNOTATION`], read by `layer_certificates`), and the legacy Rekor bundle
//! ([`BUNDLE_ANNOTATION`], `rekor_bundle.rs`).

pub mod attestation;
pub mod docker_reference;
pub mod rekor_bundle;
pub mod signature;

use std::collections::BTreeMap;

pub use signature::Failure;

use crate::verify::cosign::{pem_certificates, shown};

/// Media type of a cosign simple-signing signature layer; other layers never count.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature over the layer blob.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Layer annotation holding the legacy Rekor bundle (SET + entry).
pub const BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";
/// Layer annotation holding the signing certificate (PEM) of a keyless or PKI signature.
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// Layer annotation holding the certificate chain (PEM, intermediates then root) that came
/// with the signing certificate; untrusted, it may only complete a path.
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// Media type of a cosign attestation layer: the blob is a DSSE envelope.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// One layer of a cosign `.sig` manifest as fetched from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigLayer {
    /// The layer descriptor's `mediaType`.
    pub media_type: String,
    /// The exact blob bytes (the signed payload); never re-serialize them.
    pub payload: Vec<u8>,
    /// The layer descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The leaf certificate and the untrusted chain (DER) of a certificate-signed layer (a
/// signature or an attestation), from its certificate and chain annotations; `attestor` is
/// named when the certificate is missing.
pub(crate) fn layer_certificates(
    layer: &SigLayer,
    attestor: &str,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), Failure> {
    let fail = |reason: String| Failure::Certificate { reason };
    let pem = layer
        .annotations
        .get(CERTIFICATE_ANNOTATION)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| {
            fail(format!(
                "layer has no {CERTIFICATE_ANNOTATION} annotation, but attestor {attestor} accepts only certificate-signed signatures"
            ))
        })?;
    let mut certs =
        pem_certificates(CERTIFICATE_ANNOTATION, pem.as_bytes()).map_err(|e| fail(shown(&e)))?;
    if certs.len() != 1 {
        return Err(fail(format!(
            "the {CERTIFICATE_ANNOTATION} annotation holds {} certificates; exactly one expected",
            certs.len()
        )));
    }
    let chain = match layer.annotations.get(CHAIN_ANNOTATION) {
        Some(c) if !c.trim().is_empty() => {
            pem_certificates(CHAIN_ANNOTATION, c.as_bytes()).map_err(|e| fail(shown(&e)))?
        }
        _ => Vec::new(),
    };
    Ok((certs.remove(0), chain))
}
