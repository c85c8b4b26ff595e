//! Offline verification of what cosign attaches to an image, by what it reads. No network: the
//! registry side is `verify/mod.rs` and `registry.rs`.
//!
//! ```text
//! tag/                    tag-based attachments: cosign 2.x, and `--new-bundle-format=false`
//!   mod.rs                  the layers of `sha256-<hex>.sig` / `.att` manifests, annotations
//!   signature.rs            `.sig`: simple-signing payload, signature, docker-reference, Rekor
//!   docker_reference.rs     how the signed docker-reference must relate to the image
//!   attestation.rs          `.att`: a DSSE envelope per layer, and bare blob envelopes
//!   rekor_bundle.rs         the `dev.sigstore.cosign/bundle` annotation: SET + entry binding
//! bundle.rs               Sigstore bundles (cosign 3's default): sigstore-verify + our gaps
//! intoto.rs               DSSE envelopes, PAE, in-toto statements (both formats' content)
//! conditions.rs           what a policy requires of a predicate; cosign's --type names
//! trust/                  trust material and identity checks both formats share
//!   keys.rs                 public keys (ECDSA, RSA, Ed25519) from PEM
//!   certificates.rs         certificate chains at a time, key usage, identity (SAN, issuer)
//!   trusted_root.rs         sigstore trusted_root.json -> CAs + Rekor keys (+ the whole root)
//!   rekor_keys.rs           Rekor v1 log keys by log ID
//!   transparency.rs         an attestor's logs, TSAs, CT logs, CAs for bundles; requirements
//! ```
//!
//! An [`Authority`] (a key, or a CA with the identity its certificates must carry) is what every
//! check takes; [`Transparency`] is what a bundle is additionally checked with.

pub mod bundle;
pub mod conditions;
pub mod intoto;
pub mod tag;
pub mod trust;

use base64::Engine as _;

pub use tag::docker_reference::IdentityMatch;
pub use tag::signature::{COSIGN_SIGNATURE_TYPE, Expected, Failure, Verified, verify_layer};
pub use tag::{
    BUNDLE_ANNOTATION, CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, DSSE_MEDIA_TYPE,
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE, SigLayer,
};
pub use trust::certificates::{
    CertAuthority, CertIdentity, LeafSummary, MAX_CHAIN_CERTIFICATES, Matcher,
    OID_FULCIO_ISSUER_V1, OID_FULCIO_ISSUER_V2, OID_FULCIO_USERNAME, pem_certificates,
    split_anchors,
};
pub use trust::keys::{KeyError, PublicKey};
pub use trust::rekor_keys::RekorKeys;
pub use trust::transparency::{RootBuilder, Transparency};
pub use trust::trusted_root::TrustedRoot;

/// Who may have signed: a public key, or certificates issued by a CA (keyless/Fulcio or your
/// own PKI) to a given identity.
#[derive(Debug, Clone)]
pub enum Authority {
    /// A public key (`cosign sign --key`).
    Key(PublicKey),
    /// A certificate chaining to this authority, for this identity.
    Certificates(CertAuthority),
}

impl Authority {
    /// The operator's name for this signer.
    pub fn name(&self) -> &str {
        match self {
            Authority::Key(k) => k.name(),
            Authority::Certificates(c) => &c.name,
        }
    }
}

/// The current time, Unix seconds (0 if the clock is before 1970: every certificate check
/// then fails, closed).
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Standard base64 as Go's decoder reads it: `\n` and `\r` are skipped (containers/image
/// wraps signatures at 76 columns), anything else must be strict, padded base64.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let engine = base64::engine::general_purpose::STANDARD;
    match engine.decode(s.as_bytes()) {
        Ok(v) => Some(v),
        Err(_) => {
            let cleaned: Vec<u8> = s.bytes().filter(|b| *b != b'\n' && *b != b'\r').collect();
            engine.decode(cleaned).ok()
        }
    }
}

/// Text from a layer, made safe for a log line or a kubelet event: at most 128 characters,
/// anything but printable ASCII escaped.
pub(crate) fn shown(s: &str) -> String {
    shown_max(s, 128)
}

/// [`shown`] with at most `max` characters.
pub(crate) fn shown_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}
