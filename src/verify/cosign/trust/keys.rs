//! Trusted public keys: parsing an operator's PEM file into a key we can verify with, and
//! naming exactly what is wrong when we can't (a private key, a certificate, DSA, secp256k1, ...).
//!
//! The signature math is sigstore's [`CosignVerificationKey`] (aws-lc-rs underneath). What it
//! lacks, and what this module adds, is a look at the SubjectPublicKeyInfo before handing it
//! over: sigstore's errors say "Key with algorithm OID 1.2.840.10040.4.1 is not supported",
//! ours say "DSA"; and a too-small RSA modulus or a point of the wrong size is refused at load
//! time instead of silently failing every verification later.
//!
//! Schemes, matching what cosign does for `cosign verify --key`:
//! - ECDSA P-256 with SHA-256, ASN.1 DER signatures (cosign's default key type);
//! - ECDSA P-384 with SHA-384 and P-521 with SHA-512 (the per-curve default of Go
//!   sigstore/sigstore, which current cosign signs with). P-384 signatures made with SHA-256
//!   (older cosign, and `cosign verify`'s default `--signature-digest-algorithm sha256`) are
//!   accepted too; sigstore 0.15 has no such scheme, so they are checked with the `p384` crate
//!   (see docs/upstream.md);
//! - RSA 2048..8192 bits, PKCS#1 v1.5 with SHA-256 (cosign's `LoadVerifier` for RSA keys);
//! - Ed25519, pure (RFC 8032), and Ed25519ph (RFC 8032 prehash, SHA-512, empty context), which
//!   current cosign signs with by default; sigstore 0.15 has no Ed25519ph, so it is checked with
//!   `ed25519-dalek`.

use std::fmt;

use sigstore::crypto::{CosignVerificationKey, Signature};

/// Why a PEM public key could not be loaded. Every message names the key and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not PEM at all (or hold no PEM block).
    #[error(
        "key {name}: not a PEM-encoded public key ({reason}); expected a \"-----BEGIN PUBLIC KEY-----\" block such as cosign.pub"
    )]
    NotPem {
        /// The operator's name for the key.
        name: String,
        /// What the PEM parser said.
        reason: String,
    },
    /// A private key was configured where a public key belongs.
    #[error(
        "key {name}: this is a private key (PEM \"{label}\"), not a public key; configure the public key (e.g. cosign.pub, or `cosign public-key --key <private key>`) and keep the private key off the nodes"
    )]
    PrivateKey {
        /// The operator's name for the key.
        name: String,
        /// The PEM label, e.g. `ENCRYPTED SIGSTORE PRIVATE KEY`.
        label: String,
    },
    /// A certificate was configured where a bare public key belongs.
    #[error(
        "key {name}: this is a certificate, not a public key; for key-based verification extract its key with `openssl x509 -pubkey -noout -in <cert>`"
    )]
    Certificate {
        /// The operator's name for the key.
        name: String,
    },
    /// A PKCS#1 `RSA PUBLIC KEY` block, which cosign does not read either.
    #[error(
        "key {name}: PKCS#1 \"RSA PUBLIC KEY\" is not supported; convert it with `openssl rsa -RSAPublicKey_in -pubout -in <file>`"
    )]
    Pkcs1Rsa {
        /// The operator's name for the key.
        name: String,
    },
    /// Some other PEM block.
    #[error("key {name}: PEM block \"{label}\" is not a public key; expected \"PUBLIC KEY\"")]
    WrongLabel {
        /// The operator's name for the key.
        name: String,
        /// The PEM label found.
        label: String,
    },
    /// More than one PEM block where exactly one key was expected.
    #[error("key {name}: {count} PEM blocks found; give exactly one public key per key entry")]
    MultipleKeys {
        /// The operator's name for the key.
        name: String,
        /// How many blocks there were.
        count: usize,
    },
    /// A well-formed key of an algorithm cosign verification does not use.
    #[error(
        "key {name}: unsupported key algorithm {algorithm}; supported are ECDSA P-256/P-384/P-521, RSA 2048-8192 bits and Ed25519"
    )]
    Unsupported {
        /// The operator's name for the key.
        name: String,
        /// The algorithm, named (e.g. `DSA`, `ECDSA secp256k1`, `Ed448`) or as an OID.
        algorithm: String,
    },
    /// The PEM block is labelled as a public key but its contents are broken.
    #[error("key {name}: malformed public key: {reason}")]
    Malformed {
        /// The operator's name for the key.
        name: String,
        /// What is broken.
        reason: String,
    },
}

/// The signature scheme a [`PublicKey`] verifies with, decided by its algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa { bits: usize },
    Ed25519,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Algorithm::EcdsaP256 => f.write_str("ECDSA P-256/SHA-256"),
            Algorithm::EcdsaP384 => f.write_str("ECDSA P-384/SHA-384 or SHA-256"),
            Algorithm::EcdsaP521 => f.write_str("ECDSA P-521/SHA-512"),
            Algorithm::Rsa { bits } => write!(f, "RSA-{bits} PKCS#1 v1.5/SHA-256"),
            Algorithm::Ed25519 => f.write_str("Ed25519 or Ed25519ph"),
        }
    }
}

/// A second scheme a key also verifies with, for what cosign signs but sigstore 0.15 cannot
/// check: ECDSA P-384 over a SHA-256 digest, and Ed25519ph.
#[derive(Clone)]
enum Alternative {
    None,
    /// ECDSA P-384, SHA-256 digest, ASN.1 DER signature.
    P384Sha256(p384::ecdsa::VerifyingKey),
    /// Ed25519ph: RFC 8032 prehash variant (SHA-512), empty context.
    Ed25519ph(ed25519_dalek::VerifyingKey),
}

impl Alternative {
    /// Whether `sig` is a signature over `msg` under this scheme. Never panics.
    fn verifies(&self, sig: &[u8], msg: &[u8]) -> bool {
        match self {
            Alternative::None => false,
            Alternative::P384Sha256(key) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
                use sha2::Digest as _;
                let Ok(sig) = p384::ecdsa::Signature::from_der(sig) else {
                    return false;
                };
                let digest = sha2::Sha256::digest(msg);
                key.verify_prehash(&digest, &sig).is_ok()
            }
            Alternative::Ed25519ph(key) => {
                use sha2::Digest as _;
                let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
                    return false;
                };
                let prehash = sha2::Sha512::new().chain_update(msg);
                key.verify_prehashed(prehash, None, &sig).is_ok()
            }
        }
    }
}

/// A trusted public key of an attestor: ECDSA P-256 / P-384 / P-521, RSA (PKCS#1 v1.5 with
/// SHA-256, as cosign verifies RSA keys; also what the BYO-PKI vector uses), or Ed25519.
#[derive(Clone)]
pub struct PublicKey {
    name: String,
    algorithm: Algorithm,
    spki_der: Vec<u8>,
    key: CosignVerificationKey,
    alternative: Alternative,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm.to_string())
            .finish()
    }
}

impl PublicKey {
    /// Loads one PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block. `name` is the operator's name
    /// for the key; it is used in every message about it. Text around the block is ignored.
    pub fn from_pem(name: &str, pem: &[u8]) -> Result<PublicKey, KeyError> {
        let mut keys = parse_pem_keys(name, pem)?;
        if keys.len() != 1 {
            return Err(KeyError::MultipleKeys {
                name: name.to_owned(),
                count: keys.len(),
            });
        }
        Ok(keys.remove(0))
    }

    /// Loads a DER SubjectPublicKeyInfo, e.g. the key of a certificate.
    pub fn from_spki_der(name: &str, der: &[u8]) -> Result<PublicKey, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let spki =
            der::parse_spki(der).ok_or_else(|| malformed("not a DER SubjectPublicKeyInfo"))?;
        let algorithm = classify(&spki).map_err(|e| match e {
            Classified::Unsupported(algorithm) => KeyError::Unsupported {
                name: name.to_owned(),
                algorithm,
            },
            Classified::Malformed(reason) => malformed(&reason),
        })?;
        let key =
            CosignVerificationKey::try_from_der(der).map_err(|e| malformed(&e.to_string()))?;
        // The scheme must be the one we classified: sigstore picks it from the same OIDs, but
        // a mismatch here would mean verifying with a scheme we did not vet.
        let consistent = matches!(
            (&key, algorithm),
            (
                CosignVerificationKey::ECDSA_P256_SHA256_ASN1(_),
                Algorithm::EcdsaP256
            ) | (
                CosignVerificationKey::ECDSA_P384_SHA384_ASN1(_),
                Algorithm::EcdsaP384
            ) | (
                CosignVerificationKey::ECDSA_P521_SHA512_ASN1(_),
                Algorithm::EcdsaP521
            ) | (
                CosignVerificationKey::RSA_PKCS1_SHA256(_),
                Algorithm::Rsa { .. }
            ) | (CosignVerificationKey::ED25519(_), Algorithm::Ed25519)
        );
        if !consistent {
            return Err(malformed("key type is ambiguous"));
        }
        let alternative = match algorithm {
            Algorithm::EcdsaP384 => Alternative::P384Sha256(
                p384::ecdsa::VerifyingKey::from_sec1_bytes(spki.key)
                    .map_err(|_| malformed("EC public key is not a point on P-384"))?,
            ),
            Algorithm::Ed25519 => {
                let bytes: &[u8; 32] = spki
                    .key
                    .try_into()
                    .map_err(|_| malformed("Ed25519 public key is not 32 bytes"))?;
                Alternative::Ed25519ph(
                    ed25519_dalek::VerifyingKey::from_bytes(bytes)
                        .map_err(|_| malformed("Ed25519 public key is not a curve point"))?,
                )
            }
            _ => Alternative::None,
        };
        Ok(PublicKey {
            name: name.to_owned(),
            algorithm,
            spki_der: der.to_vec(),
            key,
            alternative,
        })
    }

    /// The operator's name for this key (used in verification results and messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signature scheme, e.g. `ECDSA P-256/SHA-256` or `RSA-4096 PKCS#1 v1.5/SHA-256`.
    pub fn algorithm(&self) -> String {
        self.algorithm.to_string()
    }

    /// The DER SubjectPublicKeyInfo.
    pub(crate) fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Whether `sig` (raw bytes, ASN.1 DER for ECDSA) is this key's signature over `msg`: with
    /// the key's own scheme, or for P-384 also over a SHA-256 digest, for Ed25519 also as
    /// Ed25519ph (what cosign signs with for these keys).
    pub(crate) fn verifies(&self, sig: &[u8], msg: &[u8]) -> bool {
        self.key.verify_signature(Signature::Raw(sig), msg).is_ok()
            || self.alternative.verifies(sig, msg)
    }
}

/// Parses every PEM block of `pem` as a public key; any private key, certificate or other
/// block is an error (a private key among public ones must never go unnoticed).
pub(crate) fn parse_pem_keys(name: &str, pem: &[u8]) -> Result<Vec<PublicKey>, KeyError> {
    let blocks = pem_blocks(pem).map_err(|reason| KeyError::NotPem {
        name: name.to_owned(),
        reason,
    })?;
    if blocks.is_empty() {
        return Err(KeyError::NotPem {
            name: name.to_owned(),
            reason: "no PEM block found".to_owned(),
        });
    }
    // Refuse private keys before anything else, whatever else the file holds.
    if let Some(block) = blocks.iter().find(|b| b.label.contains("PRIVATE KEY")) {
        return Err(KeyError::PrivateKey {
            name: name.to_owned(),
            label: block.label.to_owned(),
        });
    }
    let many = blocks.len() > 1;
    let mut keys = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let key_name = if many {
            format!("{name}[{i}]")
        } else {
            name.to_owned()
        };
        match block.label {
            "PUBLIC KEY" => {
                let der = block.decode().ok_or_else(|| KeyError::Malformed {
                    name: key_name.clone(),
                    reason: "PEM body is not valid base64".to_owned(),
                })?;
                keys.push(PublicKey::from_spki_der(&key_name, &der)?);
            }
            "CERTIFICATE" | "TRUSTED CERTIFICATE" | "X509 CERTIFICATE" => {
                return Err(KeyError::Certificate { name: key_name });
            }
            "RSA PUBLIC KEY" => return Err(KeyError::Pkcs1Rsa { name: key_name }),
            other => {
                return Err(KeyError::WrongLabel {
                    name: key_name,
                    label: other.to_owned(),
                });
            }
        }
    }
    Ok(keys)
}

/// One PEM block: its label and its (not yet decoded) base64 body.
pub(crate) struct PemBlock<'a> {
    /// The label between `-----BEGIN ` and `-----`.
    pub(crate) label: &'a str,
    body: String,
}

impl PemBlock<'_> {
    /// The DER contents, or `None` if the body is not base64.
    pub(crate) fn decode(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.body.as_bytes())
            .ok()
    }
}

/// Splits RFC 7468 text into blocks. Text outside blocks is ignored, as are RFC 1421 header
/// lines (`Proc-Type: ...`) inside them; a BEGIN without its matching END is an error.
pub(crate) fn pem_blocks(input: &[u8]) -> Result<Vec<PemBlock<'_>>, String> {
    let text = std::str::from_utf8(input).map_err(|_| {
        "not text; if it is a DER key, convert it with `openssl pkey -pubin -inform DER`".to_owned()
    })?;
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            let line = line.trim();
            if let Some(end) = line
                .strip_prefix("-----END ")
                .and_then(|l| l.strip_suffix("-----"))
            {
                if end != label {
                    return Err(format!("\"BEGIN {label}\" is closed by \"END {end}\""));
                }
                ended = true;
                break;
            }
            if !line.contains(':') {
                body.push_str(line);
            }
        }
        if !ended {
            return Err(format!("\"BEGIN {label}\" has no matching END line"));
        }
        blocks.push(PemBlock { label, body });
    }
    Ok(blocks)
}

enum Classified {
    Unsupported(String),
    Malformed(String),
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

/// Decides the scheme from the SPKI's algorithm and checks the key material's shape.
fn classify(spki: &der::Spki<'_>) -> Result<Algorithm, Classified> {
    let malformed = |s: &str| Classified::Malformed(s.to_owned());
    match spki.algorithm.as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve = spki
                .curve
                .as_deref()
                .ok_or_else(|| malformed("EC key without a named curve"))?;
            let (algorithm, point_len) = match curve {
                "1.2.840.10045.3.1.7" => (Algorithm::EcdsaP256, 65),
                "1.3.132.0.34" => (Algorithm::EcdsaP384, 97),
                "1.3.132.0.35" => (Algorithm::EcdsaP521, 133),
                other => {
                    return Err(Classified::Unsupported(format!(
                        "ECDSA {}",
                        curve_name(other)
                    )));
                }
            };
            // Uncompressed point only, as Go's crypto/x509 (and so cosign) requires.
            if spki.key.len() != point_len || spki.key.first() != Some(&0x04) {
                return Err(malformed(
                    "EC public key is not an uncompressed point of its curve",
                ));
            }
            Ok(algorithm)
        }
        OID_RSA => {
            let bits = der::rsa_modulus_bits(spki.key)
                .ok_or_else(|| malformed("RSA key is not a DER RSAPublicKey"))?;
            if !(2048..=8192).contains(&bits) {
                return Err(Classified::Unsupported(format!(
                    "RSA-{bits} (RSA keys must have 2048 to 8192 bits)"
                )));
            }
            Ok(Algorithm::Rsa { bits })
        }
        OID_ED25519 => {
            if spki.key.len() != 32 {
                return Err(malformed("Ed25519 public key is not 32 bytes"));
            }
            Ok(Algorithm::Ed25519)
        }
        other => Err(Classified::Unsupported(algorithm_name(other))),
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.10" => "secp256k1".to_owned(),
        "1.2.840.10045.3.1.1" => "P-192".to_owned(),
        "1.3.132.0.33" => "P-224".to_owned(),
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1".to_owned(),
        "1.3.36.3.3.2.8.1.1.11" => "brainpoolP384r1".to_owned(),
        "1.3.36.3.3.2.8.1.1.13" => "brainpoolP512r1".to_owned(),
        "1.2.156.10197.1.301" => "SM2".to_owned(),
        other => format!("curve OID {other}"),
    }
}

fn algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10040.4.1" => "DSA".to_owned(),
        "1.3.101.113" => "Ed448".to_owned(),
        "1.3.101.110" => "X25519 (a key-agreement key)".to_owned(),
        "1.3.101.111" => "X448 (a key-agreement key)".to_owned(),
        "1.2.840.113549.1.1.10" => "RSASSA-PSS-restricted RSA".to_owned(),
        "1.2.840.113549.1.3.1" | "1.2.840.10046.2.1" => "Diffie-Hellman".to_owned(),
        "1.2.643.7.1.1.1.1" | "1.2.643.7.1.1.1.2" => "GOST R 34.10-2012".to_owned(),
        other => format!("with OID {other}"),
    }
}

/// Just enough DER to read a SubjectPublicKeyInfo; every access is bounds-checked.
mod der {
    /// The parts of a SubjectPublicKeyInfo we look at.
    pub(super) struct Spki<'a> {
        /// Algorithm OID, dotted.
        pub algorithm: String,
        /// Named-curve OID for EC keys, dotted.
        pub curve: Option<String>,
        /// The subjectPublicKey BIT STRING contents (without the unused-bits byte).
        pub key: &'a [u8],
    }

    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const BIT_STRING: u8 = 0x03;
    const INTEGER: u8 = 0x02;

    /// Splits one TLV off `buf`: (tag, contents, rest).
    pub(super) fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *buf.first()?;
        let first = *buf.get(1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2usize)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = len
                    .checked_mul(256)?
                    .checked_add(usize::from(*buf.get(2 + i)?))?;
            }
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        Some((tag, buf.get(header..end)?, buf.get(end..)?))
    }

    fn expect(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, contents, rest) = tlv(buf)?;
        (t == tag).then_some((contents, rest))
    }

    /// Dotted form of an OID's contents octets.
    pub(super) fn oid_string(bytes: &[u8]) -> Option<String> {
        let mut arcs: Vec<u64> = Vec::new();
        let mut value: u64 = 0;
        let mut pending = false;
        for &b in bytes {
            if value > (u64::MAX >> 7) {
                return None;
            }
            value = (value << 7) | u64::from(b & 0x7f);
            pending = true;
            if b & 0x80 == 0 {
                if arcs.is_empty() {
                    let first = if value < 40 {
                        0
                    } else if value < 80 {
                        1
                    } else {
                        2
                    };
                    arcs.push(first);
                    arcs.push(value - first * 40);
                } else {
                    arcs.push(value);
                }
                value = 0;
                pending = false;
            }
        }
        if pending || arcs.is_empty() {
            return None;
        }
        Some(
            arcs.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("."),
        )
    }

    /// Reads a whole DER SubjectPublicKeyInfo (no trailing bytes).
    pub(super) fn parse_spki(der: &[u8]) -> Option<Spki<'_>> {
        let (spki, rest) = expect(der, SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        let (alg, rest) = expect(spki, SEQUENCE)?;
        let (oid, params) = expect(alg, OID)?;
        let algorithm = oid_string(oid)?;
        let curve = match tlv(params) {
            Some((OID, curve, _)) => Some(oid_string(curve)?),
            _ => None,
        };
        let (bits, rest) = expect(rest, BIT_STRING)?;
        if !rest.is_empty() {
            return None;
        }
        let (&unused, key) = bits.split_first()?;
        if unused != 0 {
            return None;
        }
        Some(Spki {
            algorithm,
            curve,
            key,
        })
    }

    /// Bit length of the modulus of a DER RSAPublicKey `SEQUENCE { n INTEGER, e INTEGER }`.
    pub(super) fn rsa_modulus_bits(key: &[u8]) -> Option<usize> {
        let (seq, _) = expect(key, SEQUENCE)?;
        let (n, rest) = expect(seq, INTEGER)?;
        expect(rest, INTEGER)?;
        let first_nonzero = n.iter().position(|&b| b != 0)?;
        let n = n.get(first_nonzero..)?;
        let top = *n.first()?;
        let top_bits = 8 - top.leading_zeros() as usize;
        (n.len() - 1).checked_mul(8)?.checked_add(top_bits)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sigstore::crypto::SigningScheme;

    /// A fresh signer and its public key PEM, for tests.
    pub(crate) fn signer(scheme: SigningScheme) -> (sigstore::crypto::SigStoreSigner, String) {
        let signer = scheme.create_signer().expect("generate key");
        let pem = signer
            .to_sigstore_keypair()
            .expect("keypair")
            .public_key_to_pem()
            .expect("public pem");
        (signer, pem)
    }

    /// DER TLV with a short-form length (test inputs stay under 128 bytes).
    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        assert!(contents.len() < 128);
        let mut v = vec![tag, contents.len() as u8];
        v.extend_from_slice(contents);
        v
    }

    /// A PEM `PUBLIC KEY` with the given algorithm OID / params and key bytes.
    fn spki_pem(alg_oid: &[u8], params: Option<&[u8]>, key: &[u8]) -> String {
        let mut alg = tlv(0x06, alg_oid);
        if let Some(p) = params {
            alg.extend(tlv(0x06, p));
        }
        let mut bits = vec![0u8];
        bits.extend_from_slice(key);
        let mut body = tlv(0x30, &alg);
        body.extend(tlv(0x03, &bits));
        pem_encode("PUBLIC KEY", &tlv(0x30, &body))
    }

    /// PEM text for `der` under `label`.
    pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    const EC_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519_OID: &[u8] = &[0x2b, 0x65, 0x70];

    /// A P-384 key (from a fixed scalar byte) that signs the way older cosign and
    /// `--signature-digest-algorithm sha256` do: ECDSA over SHA-256, DER. Returns the key's PEM.
    pub(crate) fn p384_sha256_signer(seed: u8) -> (p384::ecdsa::SigningKey, String) {
        let key = p384::ecdsa::SigningKey::from_slice(&[seed; 48]).expect("P-384 scalar");
        let point = key.verifying_key().to_encoded_point(false);
        (key, spki_pem(EC_OID, Some(P384_OID), point.as_bytes()))
    }

    /// ECDSA P-384 signature over the SHA-256 digest of `msg`, ASN.1 DER.
    pub(crate) fn p384_sha256_sign(key: &p384::ecdsa::SigningKey, msg: &[u8]) -> Vec<u8> {
        use p384::ecdsa::signature::hazmat::PrehashSigner as _;
        use sha2::Digest as _;
        let sig: p384::ecdsa::Signature = key
            .sign_prehash(&sha2::Sha256::digest(msg))
            .expect("sign prehash");
        sig.to_der().as_bytes().to_vec()
    }

    /// An Ed25519 key (from a fixed seed byte) and its PEM.
    pub(crate) fn ed25519_signer(seed: u8) -> (ed25519_dalek::SigningKey, String) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let pem = spki_pem(ED25519_OID, None, key.verifying_key().as_bytes());
        (key, pem)
    }

    /// Ed25519ph signature over `msg` with an empty context, as cosign (Go's
    /// `ed25519.Options{Hash: crypto.SHA512}`) makes by default for Ed25519 keys.
    pub(crate) fn ed25519ph_sign(key: &ed25519_dalek::SigningKey, msg: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        key.sign_prehashed(sha2::Sha512::new().chain_update(msg), None)
            .expect("sign prehashed")
            .to_bytes()
            .to_vec()
    }

    /// Keys made by sigstore's own generator load, for every supported algorithm.
    #[test]
    fn loads_generated_keys() {
        for (scheme, algo) in [
            (SigningScheme::ECDSA_P256_SHA256_ASN1, "ECDSA P-256/SHA-256"),
            (
                SigningScheme::ECDSA_P384_SHA384_ASN1,
                "ECDSA P-384/SHA-384 or SHA-256",
            ),
            (SigningScheme::ECDSA_P521_SHA512_ASN1, "ECDSA P-521/SHA-512"),
            (SigningScheme::ED25519, "Ed25519 or Ed25519ph"),
        ] {
            let (_, pem) = signer(scheme);
            let key = PublicKey::from_pem("k", pem.as_bytes()).expect("load");
            assert_eq!(key.algorithm(), algo);
            assert_eq!(key.name(), "k");
        }
    }

    /// A private key PEM is refused with a message that says it is a private key.
    #[test]
    fn private_key_is_named_as_such() {
        let (signer, _) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let private = signer
            .to_sigstore_keypair()
            .unwrap()
            .private_key_to_pem()
            .unwrap();
        let err = PublicKey::from_pem("release", private.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::PrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("private key"), "{err}");
        // cosign's own encrypted format too, even next to a valid public key.
        let (_, public) = self::signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let mixed = format!(
            "{public}-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
        );
        let err = PublicKey::from_pem("release", mixed.as_bytes()).unwrap_err();
        assert!(
            matches!(err, KeyError::PrivateKey { ref label, .. } if label == "ENCRYPTED SIGSTORE PRIVATE KEY"),
            "{err}"
        );
    }

    /// Garbage, empty input and broken DER give NotPem / Malformed, never a panic.
    #[test]
    fn garbage_is_rejected() {
        for input in [
            &b""[..],
            b"hello",
            b"\xff\xfe\x00",
            b"-----BEGIN PUBLIC KEY-----\n",
        ] {
            let err = PublicKey::from_pem("g", input).unwrap_err();
            assert!(matches!(err, KeyError::NotPem { .. }), "{input:?}: {err}");
        }
        let mismatched = "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END CERTIFICATE-----\n";
        let err = PublicKey::from_pem("g", mismatched.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::NotPem { .. }), "{err}");
        let not_base64 = "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n";
        let err = PublicKey::from_pem("g", not_base64.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        let broken = pem_encode("PUBLIC KEY", &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
        let err = PublicKey::from_pem("g", broken.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        // EC point of the wrong length.
        let p256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let short = spki_pem(EC_OID, Some(&p256), &[4u8; 10]);
        let err = PublicKey::from_pem("g", short.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
    }

    /// Unsupported algorithms are named: secp256k1, DSA, Ed448, and unknown OIDs.
    #[test]
    fn unsupported_algorithms_are_named() {
        let secp256k1 = spki_pem(EC_OID, Some(&[0x2b, 0x81, 0x04, 0x00, 0x0a]), &[4u8; 65]);
        let dsa = spki_pem(
            &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01],
            None,
            &[0x02, 0x01, 0x05],
        );
        let ed448 = spki_pem(&[0x2b, 0x65, 0x71], None, &[7u8; 57]);
        let unknown = spki_pem(&[0x2a, 0x03, 0x04], None, &[1, 2, 3]);
        for (pem, want) in [
            (secp256k1, "ECDSA secp256k1"),
            (dsa, "DSA"),
            (ed448, "Ed448"),
            (unknown, "OID 1.2.3.4"),
        ] {
            let err = PublicKey::from_pem("odd", pem.as_bytes()).unwrap_err();
            assert!(matches!(err, KeyError::Unsupported { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err} lacks {want}");
        }
    }

    /// Certificates, PKCS#1 RSA keys and several keys in one entry get their own messages.
    #[test]
    fn other_pem_blocks() {
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            PublicKey::from_pem("c", cert.as_bytes()),
            Err(KeyError::Certificate { .. })
        ));
        let pkcs1 = "-----BEGIN RSA PUBLIC KEY-----\nMAA=\n-----END RSA PUBLIC KEY-----\n";
        assert!(matches!(
            PublicKey::from_pem("c", pkcs1.as_bytes()),
            Err(KeyError::Pkcs1Rsa { .. })
        ));
        let (_, a) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let (_, b) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let two = format!("{a}{b}");
        assert!(matches!(
            PublicKey::from_pem("c", two.as_bytes()),
            Err(KeyError::MultipleKeys { count: 2, .. })
        ));
        assert_eq!(parse_pem_keys("c", two.as_bytes()).unwrap().len(), 2);
    }

    /// RSA keys below 2048 bits are refused at load time, naming their size.
    #[test]
    fn small_rsa_is_refused() {
        // RSAPublicKey { n: 1024-bit, e: 65537 } wrapped in an SPKI with a NULL parameter.
        let mut n = vec![0x00, 0xc0];
        n.extend(std::iter::repeat_n(0x11, 127));
        let mut rsa = vec![0x02, 0x81, n.len() as u8];
        rsa.extend(&n);
        rsa.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        let mut rsa_seq = vec![0x30, 0x81, rsa.len() as u8];
        rsa_seq.extend(&rsa);
        let mut bits = vec![0x03, 0x81, (rsa_seq.len() + 1) as u8, 0x00];
        bits.extend(&rsa_seq);
        let alg = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let mut body = alg.to_vec();
        body.extend(&bits);
        let mut der = vec![0x30, 0x81, body.len() as u8];
        der.extend(&body);
        let err = PublicKey::from_spki_der("small", &der).unwrap_err();
        assert!(err.to_string().contains("RSA-1024"), "{err}");
    }

    /// The OID decoder handles multi-byte arcs and rejects truncated input.
    #[test]
    fn oid_decoding() {
        assert_eq!(
            der::oid_string(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]).as_deref(),
            Some("1.2.840.10045.2.1")
        );
        assert_eq!(der::oid_string(&[0x2a, 0x86]), None);
        assert_eq!(der::oid_string(&[0xff; 20]), None);
    }

    /// P-384 keys also verify ECDSA over SHA-256 (cosign's `verify --key` default), and still
    /// refuse a wrong message, a wrong key and malformed signatures.
    #[test]
    fn p384_sha256_signatures() {
        let (signer, pem) = p384_sha256_signer(7);
        let key = PublicKey::from_pem("p384", pem.as_bytes()).expect("load");
        assert_eq!(key.algorithm(), "ECDSA P-384/SHA-384 or SHA-256");
        let msg = b"cosign payload";
        let sig = p384_sha256_sign(&signer, msg);
        assert!(key.verifies(&sig, msg));
        assert!(!key.verifies(&sig, b"cosign payloaD"));
        let (other, other_pem) = p384_sha256_signer(9);
        let other_key = PublicKey::from_pem("other", other_pem.as_bytes()).unwrap();
        assert!(!other_key.verifies(&sig, msg));
        assert!(!key.verifies(&p384_sha256_sign(&other, msg), msg));
        // A SHA-384 prehash is the sigstore path; a SHA-512 one is neither scheme.
        use p384::ecdsa::signature::hazmat::PrehashSigner as _;
        use sha2::Digest as _;
        let sha384: p384::ecdsa::Signature =
            signer.sign_prehash(&sha2::Sha384::digest(msg)).unwrap();
        assert!(key.verifies(sha384.to_der().as_bytes(), msg));
        let sha512: p384::ecdsa::Signature =
            signer.sign_prehash(&sha2::Sha512::digest(msg)).unwrap();
        assert!(!key.verifies(sha512.to_der().as_bytes(), msg));
        // Raw r||s, truncated, empty and trailing-garbage signatures: refused, no panic.
        let fixed: p384::ecdsa::Signature = p384::ecdsa::Signature::from_der(&sig).unwrap();
        assert!(!key.verifies(&fixed.to_bytes(), msg));
        assert!(!key.verifies(&sig[..sig.len() - 1], msg));
        assert!(!key.verifies(&[], msg));
        let mut trailing = sig.clone();
        trailing.push(0);
        assert!(!key.verifies(&trailing, msg));
        // An Ed25519ph-shaped signature is not accepted by an ECDSA key.
        let (ed, _) = ed25519_signer(1);
        assert!(!key.verifies(&ed25519ph_sign(&ed, msg), msg));
    }

    /// Ed25519 keys also verify Ed25519ph (SHA-512, empty context), cosign's default for
    /// them; pure Ed25519 still verifies; wrong message, key or context do not.
    #[test]
    fn ed25519ph_signatures() {
        use ed25519_dalek::Signer as _;
        use sha2::Digest as _;
        let (signer, pem) = ed25519_signer(3);
        let key = PublicKey::from_pem("ed", pem.as_bytes()).expect("load");
        assert_eq!(key.algorithm(), "Ed25519 or Ed25519ph");
        let msg = b"cosign payload";
        let sig = ed25519ph_sign(&signer, msg);
        assert!(key.verifies(&sig, msg));
        assert!(key.verifies(&signer.sign(msg).to_bytes(), msg));
        assert!(!key.verifies(&sig, b"cosign payloaD"));
        let (other, other_pem) = ed25519_signer(4);
        let other_key = PublicKey::from_pem("other", other_pem.as_bytes()).unwrap();
        assert!(!other_key.verifies(&sig, msg));
        assert!(!key.verifies(&ed25519ph_sign(&other, msg), msg));
        let with_context = signer
            .sign_prehashed(sha2::Sha512::new().chain_update(msg), Some(b"ctx"))
            .unwrap();
        assert!(!key.verifies(&with_context.to_bytes(), msg));
        assert!(!key.verifies(&sig[..63], msg));
        assert!(!key.verifies(&[], msg));
        assert!(!key.verifies(&[0xff; 64], msg));
    }

    /// Keys whose bytes are not a point of their curve are refused at load time.
    #[test]
    fn off_curve_points_are_malformed() {
        let mut point = vec![0x04];
        point.extend([0u8; 96]);
        let p384 = spki_pem(EC_OID, Some(P384_OID), &point);
        let err = PublicKey::from_pem("p", p384.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
        let bad = (0u8..=255)
            .map(|b| [b; 32])
            .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
            .expect("some byte pattern is not an Ed25519 point");
        let ed = spki_pem(ED25519_OID, None, &bad);
        let err = PublicKey::from_pem("e", ed.as_bytes()).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }), "{err}");
    }
}
