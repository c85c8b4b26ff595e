//! A sigstore `trusted_root.json` (media type
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`), read offline: the file is
//! what the operator trusts, no TUF update or signature check happens here (fetch and verify
//! it with TUF elsewhere, e.g. `cosign trusted-root create` or sigstore's TUF client).
//!
//! The file is parsed once, by sigstore's own parser (`sigstore-trust-root`, the one the
//! Sigstore bundle verifier uses: one reader of the format), and then read two ways:
//! - for tag-based signatures and attestations (`.sig`, `.att`):
//!   `certificateAuthorities[].certChain` certificates, self-signed ones (the root each chain
//!   ends with) as anchors, the others intermediates, all merged into one [`CertAuthority`]; a
//!   CA's `validFor` restricts when its root may vouch for a signature (checked against the
//!   signing time, as sigstore-go does); `tlogs[].publicKey` (DER SubjectPublicKeyInfo) as
//!   [`RekorKeys`], indexed by the SHA-256 of the key, which is how Rekor v1 (and so a legacy
//!   Rekor bundle) names its log (a Rekor v2 log's `logId` is its checkpoint key ID instead);
//! - for Sigstore bundles: the whole file ([`TrustedRoot::sigstore`]): also the tlogs'
//!   `validFor`, the CT logs (SCTs of Fulcio certificates) and the RFC 3161 timestamp
//!   authorities.
//!
//! `hashAlgorithm`/`keyDetails` are informative (the key's own algorithm decides);
//! `baseUrl`/`uri` name things in messages.

use super::certificates::{CertAuthority, CertIdentity, split_anchors};
use super::keys::PublicKey;
use super::rekor_keys::RekorKeys;

/// Media types of the trusted root format this reads (protobuf-specs `TrustedRoot`).
const MEDIA_TYPES: &[&str] = &[
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
    "application/vnd.dev.sigstore.trustedroot.v0.2+json",
];

/// One certificate authority of the file.
#[derive(Debug, Clone)]
struct Authority {
    /// Self-signed certificates (DER).
    roots: Vec<Vec<u8>>,
    /// The others (DER).
    intermediates: Vec<Vec<u8>>,
    /// `validFor` (Unix seconds; `None` end = open); `None` = always.
    valid_for: Option<(i64, Option<i64>)>,
}

/// The trust material of a sigstore `trusted_root.json`: certificate authorities (Fulcio),
/// Rekor log keys, and the whole file as sigstore reads it (for Sigstore bundles: also its
/// CT logs and timestamp authorities).
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    authorities: Vec<Authority>,
    rekor: RekorKeys,
    sigstore: sigstore_trust_root::TrustedRoot,
}

impl TrustedRoot {
    /// Parses a trusted root with sigstore's parser (`sigstore-trust-root`, the one the
    /// bundle verifier uses), then checks what cri-guard relies on. `name` (e.g. the file
    /// name) prefixes every message. Every certificate must parse and each CA must include a
    /// self-signed root; every tlog key must load.
    pub fn from_json(name: &str, json: &[u8]) -> Result<TrustedRoot, String> {
        let text = std::str::from_utf8(json)
            .map_err(|_| format!("{name}: not a sigstore trusted root: not UTF-8"))?;
        let media_type = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("mediaType").map(|m| m.as_str().map(str::to_owned)));
        match media_type {
            Some(Some(t)) if MEDIA_TYPES.contains(&t.as_str()) => {}
            Some(Some(t)) => {
                return Err(format!(
                    "{name}: mediaType {t:?} is not a sigstore trusted root ({} expected)",
                    MEDIA_TYPES[0]
                ));
            }
            Some(None) | None if serde_json::from_str::<serde_json::Value>(text).is_ok() => {
                return Err(format!(
                    "{name}: no mediaType; not a sigstore trusted root ({} expected)",
                    MEDIA_TYPES[0]
                ));
            }
            _ => {}
        }
        let doc = sigstore_trust_root::TrustedRoot::from_json(text)
            .map_err(|e| format!("{name}: not a sigstore trusted root: {e}"))?;

        let mut authorities = Vec::new();
        for (i, ca) in doc.certificate_authorities.iter().enumerate() {
            let at = format!(
                "{name}: certificateAuthorities[{i}]{}",
                if ca.uri.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", ca.uri)
                }
            );
            if ca.cert_chain.certificates.is_empty() {
                return Err(format!("{at}: no certChain.certificates"));
            }
            let ders = ca
                .cert_chain
                .certificates
                .iter()
                .map(|c| c.raw_bytes.as_bytes().to_vec())
                .collect();
            let (roots, intermediates) = split_anchors(&format!("{at}: certChain"), ders)?;
            let valid_for = ca
                .valid_for
                .map(|w| (w.start.as_second(), w.end.map(|e| e.as_second())));
            authorities.push(Authority {
                roots,
                intermediates,
                valid_for,
            });
        }

        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, tlog) in doc.tlogs.iter().enumerate() {
            let label = format!(
                "tlogs[{i}]{}",
                if tlog.base_url.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", tlog.base_url)
                }
            );
            let der = tlog.public_key.raw_bytes.as_bytes().to_vec();
            // Not checked: that `logId.keyId` is the SHA-256 of the key. It is for Rekor v1
            // logs (and legacy Rekor bundles name their log that way: `RekorKeys` indexes keys
            // by that hash), but a Rekor v2 log's ID is its checkpoint key ID (C2SP signed
            // note), e.g. log2025-1.rekor.sigstore.dev in the public-good root.
            PublicKey::from_spki_der(&label, &der).map_err(|e| format!("{name}: {e}"))?;
            keys.push((label, der));
        }
        let rekor = RekorKeys::from_spki_ders(keys.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(TrustedRoot {
            authorities,
            rekor,
            sigstore: doc,
        })
    }

    /// The file as sigstore reads it (for the Sigstore bundle verifier).
    pub fn sigstore(&self) -> &sigstore_trust_root::TrustedRoot {
        &self.sigstore
    }

    /// How many RFC 3161 timestamp authorities the file lists.
    pub fn timestamp_authorities(&self) -> usize {
        self.sigstore.timestamp_authorities.len()
    }

    /// The Rekor keys of the `tlogs`, for [`crate::verify::cosign::verify_layer`]'s `rekor`.
    pub fn rekor_keys(&self) -> &RekorKeys {
        &self.rekor
    }

    /// How many certificate authorities the file lists.
    pub fn certificate_authorities(&self) -> usize {
        self.authorities.len()
    }

    /// One [`CertAuthority`] trusting every certificate authority of the file, each root
    /// restricted to its CA's `validFor`, for signers with `identity`. Fails when the file has
    /// no certificate authority.
    pub fn cert_authority(
        &self,
        name: &str,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        if self.authorities.is_empty() {
            return Err(format!(
                "attestor {name}: the trusted root lists no certificate authority"
            ));
        }
        let mut roots = Vec::new();
        let mut windows = Vec::new();
        let mut intermediates: Vec<Vec<u8>> = Vec::new();
        for a in &self.authorities {
            for r in &a.roots {
                roots.push(r.clone());
                windows.push(a.valid_for);
            }
            for i in &a.intermediates {
                if !intermediates.contains(i) {
                    intermediates.push(i.clone());
                }
            }
        }
        let mut ca = CertAuthority::from_der(name, roots, intermediates, identity)?;
        for (index, window) in windows.into_iter().enumerate() {
            if let Some(w) = window {
                ca.restrict_root(index, vec![w]);
            }
        }
        Ok(ca)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosign::tag::rekor_bundle::tests::FakeLog;
    use crate::verify::cosign::trust::certificates::tests::{Made, Spec, T, make, pki};
    use crate::verify::cosign::trust::keys::pem_blocks;
    use base64::Engine as _;
    use serde_json::json;
    use sha2::{Digest as _, Sha256};

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn spki(log: &FakeLog) -> Vec<u8> {
        pem_blocks(log.pem.as_bytes()).unwrap()[0].decode().unwrap()
    }

    /// A trusted root with one CA (intermediate + root) and one log.
    fn doc(root: &Made, inter: &Made, log: &FakeLog) -> serde_json::Value {
        let key = spki(log);
        json!({
            "mediaType": MEDIA_TYPES[0],
            "tlogs": [{
                "baseUrl": "https://rekor.example.com",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": b64(&key), "keyDetails": "PKIX_ECDSA_P256_SHA_256"},
                "logId": {"keyId": b64(&Sha256::digest(&key))}
            }],
            "certificateAuthorities": [{
                "uri": "https://fulcio.example.com",
                "certChain": {"certificates": [{"rawBytes": b64(&inter.der)}, {"rawBytes": b64(&root.der)}]},
                "validFor": {"start": "2023-01-01T00:00:00.000Z"}
            }],
            "ctlogs": []
        })
    }

    fn load(v: &serde_json::Value) -> Result<TrustedRoot, String> {
        TrustedRoot::from_json("tr.json", v.to_string().as_bytes())
    }

    /// A well-formed file gives a CA that verifies its leaves and the log's key.
    #[test]
    fn loads_cas_and_logs() {
        let (root, inter) = pki();
        let log = FakeLog::new();
        let tr = load(&doc(&root, &inter, &log)).unwrap();
        assert_eq!(tr.certificate_authorities(), 1);
        assert_eq!(
            tr.rekor_keys().log_ids().collect::<Vec<_>>(),
            [log.log_id()]
        );
        let ca = tr.cert_authority("sigstore", Default::default()).unwrap();
        assert_eq!(ca.roots(), std::slice::from_ref(&root.der));
        assert_eq!(ca.intermediates(), std::slice::from_ref(&inter.der));
        let leaf = make(&Spec::leaf(T), Some(&inter));
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
    }

    /// A CA's validFor limits when its root vouches for a signature.
    #[test]
    fn ca_valid_for() {
        let (root, inter) = pki();
        let log = FakeLog::new();
        let mut v = doc(&root, &inter, &log);
        v["certificateAuthorities"][0]["validFor"] =
            json!({"start": "2020-01-01T00:00:00Z", "end": "2023-11-14T22:13:19.999Z"});
        let ca = load(&v)
            .unwrap()
            .cert_authority("s", Default::default())
            .unwrap();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        assert!(ca.verify_leaf(&leaf.der, &[], T - 1).is_ok());
        let err = ca.verify_leaf(&leaf.der, &[], T).unwrap_err().to_string();
        assert!(
            err.contains("is trusted only for signatures made from 2020-01-01T00:00:00Z to 2023-11-14T22:13:19Z"),
            "{err}"
        );
        // sigstore's parser names the problem and where it is (line and column).
        v["certificateAuthorities"][0]["validFor"] = json!({"start": "yesterday"});
        let err = load(&v).unwrap_err();
        assert!(
            err.starts_with("tr.json: not a sigstore trusted root: ")
                && err.contains(" at line 1 column "),
            "{err}"
        );
    }

    /// Malformed files are refused with the field at fault named (by cri-guard's checks) or
    /// the problem and its position (by sigstore's parser).
    #[test]
    fn malformed_files() {
        let (root, inter) = pki();
        let log = FakeLog::new();
        let good = doc(&root, &inter, &log);
        assert!(
            TrustedRoot::from_json("tr.json", b"{")
                .unwrap_err()
                .starts_with("tr.json: not a sigstore trusted root: ")
        );
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "/mediaType",
                json!("application/json"),
                "mediaType \"application/json\" is not a sigstore trusted root",
            ),
            ("/tlogs/0/logId/keyId", json!("%%%"), "invalid base64"),
            (
                "/tlogs/0/publicKey/rawBytes",
                json!(b64(b"not a key")),
                "malformed public key",
            ),
            (
                "/certificateAuthorities/0/certChain/certificates",
                json!([{"rawBytes": b64(&inter.der)}]),
                "no self-signed root certificate",
            ),
            (
                "/certificateAuthorities/0/certChain/certificates",
                json!([]),
                "no certChain.certificates",
            ),
            (
                "/certificateAuthorities/0/certChain/certificates/1/rawBytes",
                json!("***"),
                "invalid base64",
            ),
            (
                "/certificateAuthorities/0/certChain/certificates/1/rawBytes",
                json!(b64(b"junk")),
                "certificate #2 is not a valid DER X.509 certificate",
            ),
            (
                "/tlogs/0/publicKey",
                json!({"keyDetails": "PKIX_ECDSA_P256_SHA_256"}),
                "missing field `rawBytes`",
            ),
        ];
        for (pointer, value, expected) in cases {
            let mut v = good.clone();
            *v.pointer_mut(pointer).unwrap() = value;
            let err = load(&v).unwrap_err();
            assert!(err.starts_with("tr.json: "), "{err}");
            assert!(err.contains(expected), "{pointer}: {err}");
        }
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("mediaType");
        assert!(load(&v).unwrap_err().contains("no mediaType"));
        // No CA: loads (Rekor keys only), but gives no certificate authority.
        let mut v = good;
        v["certificateAuthorities"] = json!([]);
        let tr = load(&v).unwrap();
        assert!(
            tr.cert_authority("s", Default::default())
                .unwrap_err()
                .contains("lists no certificate authority")
        );
    }
}
