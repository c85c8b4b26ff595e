//! A sigstore `trusted_root.json` (media type
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`), read offline: the file is
//! what the operator trusts, no TUF update or signature check happens here (fetch and verify
//! it with TUF elsewhere, e.g. `cosign trusted-root create` or sigstore's TUF client).
//!
//! Used:
//! - `certificateAuthorities[].certChain.certificates[].rawBytes` (base64 DER): self-signed
//!   ones (the root each chain ends with) become anchors, the others intermediates, all merged
//!   into one [`CertAuthority`]; a CA's `validFor` restricts when its root may vouch for a
//!   signature (checked against the signing time, as sigstore-go does);
//! - `tlogs[].publicKey.rawBytes` (DER SubjectPublicKeyInfo) become [`RekorKeys`]; each
//!   `logId.keyId` must be the SHA-256 of that key, which is how bundles name their log.
//!
//! Ignored: `ctlogs` (SCTs embedded in Fulcio certificates are not checked),
//! `timestampAuthorities` (RFC 3161 timestamps are not read), the tlogs' `validFor` windows and
//! `hashAlgorithm`/`keyDetails` (the key's own algorithm decides), `baseUrl`/`uri` (names for
//! messages only).

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::keys::PublicKey;
use super::rekor::{RekorKeys, hex};
use super::x509::{CertAuthority, CertIdentity, split_anchors};

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

/// The trust material of a sigstore `trusted_root.json`: certificate authorities (Fulcio) and
/// Rekor log keys.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    authorities: Vec<Authority>,
    rekor: RekorKeys,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    media_type: Option<String>,
    #[serde(default)]
    tlogs: Vec<Tlog>,
    #[serde(default)]
    certificate_authorities: Vec<Ca>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tlog {
    base_url: Option<String>,
    public_key: Option<Key>,
    log_id: Option<LogId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Key {
    raw_bytes: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ca {
    uri: Option<String>,
    cert_chain: Option<CertChain>,
    valid_for: Option<ValidFor>,
}

#[derive(Deserialize)]
struct CertChain {
    #[serde(default)]
    certificates: Vec<RawBytes>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBytes {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct ValidFor {
    start: Option<String>,
    end: Option<String>,
}

impl TrustedRoot {
    /// Parses a trusted root. `name` (e.g. the file name) prefixes every message. Every
    /// certificate must parse and each CA must include a self-signed root; every tlog key
    /// must load and match its `logId.keyId`.
    pub fn from_json(name: &str, json: &[u8]) -> Result<TrustedRoot, String> {
        let doc: Json = serde_json::from_slice(json)
            .map_err(|e| format!("{name}: not a sigstore trusted root: {e}"))?;
        match doc.media_type.as_deref() {
            Some(t) if MEDIA_TYPES.contains(&t) => {}
            Some(t) => {
                return Err(format!(
                    "{name}: mediaType {t:?} is not a sigstore trusted root ({} expected)",
                    MEDIA_TYPES[0]
                ));
            }
            None => {
                return Err(format!(
                    "{name}: no mediaType; not a sigstore trusted root ({} expected)",
                    MEDIA_TYPES[0]
                ));
            }
        }

        let mut authorities = Vec::new();
        for (i, ca) in doc.certificate_authorities.iter().enumerate() {
            let at = format!(
                "{name}: certificateAuthorities[{i}]{}",
                ca.uri
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default()
            );
            let chain = ca
                .cert_chain
                .as_ref()
                .filter(|c| !c.certificates.is_empty())
                .ok_or_else(|| format!("{at}: no certChain.certificates"))?;
            let mut ders = Vec::new();
            for (j, c) in chain.certificates.iter().enumerate() {
                ders.push(decode(&c.raw_bytes).ok_or_else(|| {
                    format!("{at}: certChain.certificates[{j}].rawBytes is not base64")
                })?);
            }
            let (roots, intermediates) = split_anchors(&format!("{at}: certChain"), ders)?;
            let valid_for = match &ca.valid_for {
                None => None,
                Some(v) => Some(window(v).map_err(|e| format!("{at}: validFor: {e}"))?),
            };
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
                tlog.base_url
                    .as_deref()
                    .map(|u| format!(" ({u})"))
                    .unwrap_or_default()
            );
            let at = format!("{name}: {label}");
            let raw = tlog
                .public_key
                .as_ref()
                .and_then(|k| k.raw_bytes.as_deref())
                .ok_or_else(|| format!("{at}: no publicKey.rawBytes"))?;
            let der =
                decode(raw).ok_or_else(|| format!("{at}: publicKey.rawBytes is not base64"))?;
            // The key first, so that a broken key is reported as such rather than as a
            // logId mismatch.
            PublicKey::from_spki_der(&label, &der).map_err(|e| format!("{name}: {e}"))?;
            let key_id = tlog
                .log_id
                .as_ref()
                .ok_or_else(|| format!("{at}: no logId.keyId"))?;
            let key_id =
                decode(&key_id.key_id).ok_or_else(|| format!("{at}: logId.keyId is not base64"))?;
            let digest = Sha256::digest(&der);
            if key_id.as_slice() != digest.as_slice() {
                return Err(format!(
                    "{at}: logId.keyId {} is not the SHA-256 of its public key ({})",
                    hex(&key_id),
                    hex(&digest)
                ));
            }
            keys.push((label, der));
        }
        let rekor = RekorKeys::from_spki_ders(keys.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
            .map_err(|e| format!("{name}: {e}"))?;
        Ok(TrustedRoot { authorities, rekor })
    }

    /// The Rekor keys of the `tlogs`, for [`super::verify_layer`]'s `rekor`.
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

/// Protobuf JSON `bytes`: standard or URL-safe base64, padded or not.
fn decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s.as_bytes()).ok())
}

fn window(v: &ValidFor) -> Result<(i64, Option<i64>), String> {
    let start = match &v.start {
        Some(s) => {
            rfc3339_to_unix(s).ok_or_else(|| format!("start {s:?} is not an RFC 3339 time"))?
        }
        None => i64::MIN,
    };
    let end = match &v.end {
        Some(s) => {
            Some(rfc3339_to_unix(s).ok_or_else(|| format!("end {s:?} is not an RFC 3339 time"))?)
        }
        None => None,
    };
    Ok((start, end))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as Unix seconds (the fraction is dropped), as
/// protobuf JSON writes a Timestamp.
fn rfc3339_to_unix(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u16> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 20
        || b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let date = x509_cert::der::DateTime::new(
        num(0..4)?,
        u8::try_from(num(5..7)?).ok()?,
        u8::try_from(num(8..10)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
    )
    .ok()?;
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = frac.get(digits..)?;
    }
    let offset: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes().get(3) != Some(&b':') {
                return None;
            }
            let h = i64::from(rest.get(1..3)?.parse::<u8>().ok()?);
            let m = i64::from(rest.get(4..6)?.parse::<u8>().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = i64::try_from(date.unix_duration().as_secs()).ok()?;
    Some(secs - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosign::keys::pem_blocks;
    use crate::verify::cosign::rekor::tests::FakeLog;
    use crate::verify::cosign::x509::tests::{Made, Spec, T, make, pki};
    use serde_json::json;

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
            "ctlogs": [{"whatever": true}]
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
        v["certificateAuthorities"][0]["validFor"] = json!({"start": "yesterday"});
        let err = load(&v).unwrap_err();
        assert_eq!(
            err,
            "tr.json: certificateAuthorities[0] (https://fulcio.example.com): validFor: start \"yesterday\" is not an RFC 3339 time"
        );
    }

    /// Malformed files are refused with the field at fault named.
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
            (
                "/tlogs/0/logId/keyId",
                json!(b64(&[0u8; 32])),
                "logId.keyId 0000",
            ),
            (
                "/tlogs/0/logId/keyId",
                json!("%%%"),
                "tlogs[0] (https://rekor.example.com): logId.keyId is not base64",
            ),
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
                "certChain.certificates[1].rawBytes is not base64",
            ),
            (
                "/certificateAuthorities/0/certChain/certificates/1/rawBytes",
                json!(b64(b"junk")),
                "certificate #2 is not a valid DER X.509 certificate",
            ),
            ("/tlogs/0/publicKey", json!(null), "no publicKey.rawBytes"),
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

    /// Protobuf JSON timestamps: Z or offsets, optional fractions; anything else is refused.
    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_to_unix("2023-01-20T20:51:33Z"), Some(1_674_247_893));
        assert_eq!(
            rfc3339_to_unix("2023-01-20T20:51:33.999999Z"),
            Some(1_674_247_893)
        );
        assert_eq!(
            rfc3339_to_unix("2023-01-20T21:51:33+01:00"),
            Some(1_674_247_893)
        );
        assert_eq!(
            rfc3339_to_unix("2023-01-20T19:51:33-01:00"),
            Some(1_674_247_893)
        );
        for bad in [
            "",
            "2023-01-20",
            "2023-01-20T20:51:33",
            "2023-13-20T20:51:33Z",
            "2023-01-20T20:51:33.Z",
            "2023-01-20T20:51:33+0100",
            "+023-01-20T20:51:33Z",
            "2023-01-20T20:51:3éZ",
        ] {
            assert_eq!(rfc3339_to_unix(bad), None, "{bad}");
        }
    }
}
