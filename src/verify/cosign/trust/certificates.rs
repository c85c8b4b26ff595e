//! Certificate-based signers: keyless (Fulcio) and bring-your-own PKI.
//!
//! A [`CertAuthority`] is an operator-configured set of trust anchors (roots) and intermediates
//! plus the identity a signing certificate must carry. [`CertAuthority::verify_leaf`] decides
//! whether a signing certificate (the layer's `dev.sigstore.cosign/certificate`) may vouch for
//! a signature made at a given time, and returns its public key:
//!
//! 1. the leaf itself: valid at that time, not a CA, key usage (if present) includes
//!    digitalSignature, extended key usage (if present) includes codeSigning or any usage;
//! 2. a path leaf -> intermediates -> configured root, built by `rustls-webpki` (signatures,
//!    validity of every certificate at that time, basicConstraints cA on every issuer, path
//!    length and name constraints, the same EKU rule on every certificate, unknown critical
//!    extensions refused). Intermediates come from the configuration and from the signature's
//!    untrusted `dev.sigstore.cosign/chain` annotation; the latter are never anchors. The root
//!    must be valid at that time too (webpki does not look at an anchor's validity; Go does);
//! 3. the identity: the subject matcher against every subject alternative name (email, URI,
//!    DNS, IP, Fulcio's `1.3.6.1.4.1.57264.1.7` username otherName; any match passes), the
//!    issuer matcher against the Fulcio OIDC issuer extension (`1.3.6.1.4.1.57264.1.8`, a DER
//!    UTF8String, preferred; else the older `1.3.6.1.4.1.57264.1.1`, raw bytes).
//!
//! The time is the caller's: the Rekor integration time when a bundle was verified, else the
//! current time. sigstore 0.15's certificate verifiers check chains at "now" (a 10-minute
//! Fulcio certificate never verifies), make every configured certificate an anchor, ignore the
//! chain annotation, reject BYO-PKI leaves without an EKU and never fire their key-usage check
//! (design.md section 5): none of it is used here. Parsing of extensions is `x509-cert`'s.
//!
//! A missing EKU means any usage, as in Go's crypto/x509 (which cosign uses): the BYO-PKI
//! vector `pki-valid` has none. Messages name the certificate by its subject and say what to
//! configure; text from certificates goes through `shown()`.

use std::fmt;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, TrustAnchor, UnixTime};
use webpki::{ExtendedKeyUsageValidator, KeyPurposeId, KeyPurposeIdIter};
use x509_cert::Certificate;
use x509_cert::der::asn1::{ObjectIdentifier, Utf8StringRef};
use x509_cert::der::{DateTime, Decode as _, Encode as _};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::name::Name;

use super::keys::PublicKey;
use crate::verify::cosign::{Failure, shown};

/// Fulcio's OIDC issuer extension, v1: the extension value is the issuer URL's bytes.
pub const OID_FULCIO_ISSUER_V1: &str = "1.3.6.1.4.1.57264.1.1";
/// Fulcio's OIDC issuer extension, v2: the extension value is a DER UTF8String.
pub const OID_FULCIO_ISSUER_V2: &str = "1.3.6.1.4.1.57264.1.8";
/// Fulcio's otherName SAN for a username identity (a DER UTF8String).
pub const OID_FULCIO_USERNAME: &str = "1.3.6.1.4.1.57264.1.7";

const ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap(OID_FULCIO_ISSUER_V1);
const ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap(OID_FULCIO_ISSUER_V2);
const USERNAME: ObjectIdentifier = ObjectIdentifier::new_unwrap(OID_FULCIO_USERNAME);
const EKU_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
const EKU_ANY: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37.0");
/// DER contents of the codeSigning and anyExtendedKeyUsage OIDs, for webpki.
const CODE_SIGNING_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const ANY_EKU_DER: &[u8] = &[0x55, 0x1d, 0x25, 0x00];

/// At most this many certificates are taken from a signature's chain annotation: enough for
/// any real PKI, and a bound on path-building work for an attacker-supplied list.
pub const MAX_CHAIN_CERTIFICATES: usize = 8;

/// Certificate signature algorithms accepted on a chain: what Go's crypto/x509 accepts (and
/// so cosign), except SHA-1 and DSA. The signing certificate's own key is checked by
/// [`PublicKey`], not by this list.
static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P256_SHA512,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA512,
    webpki::aws_lc_rs::ECDSA_P521_SHA256,
    webpki::aws_lc_rs::ECDSA_P521_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA512,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::aws_lc_rs::ED25519,
];

/// How one certificate field must match: exactly, or by regular expression (unanchored, as
/// cosign's `--certificate-identity-regexp` and Kyverno's `subjectRegExp`).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal text.
    Exact(String),
    /// `regex::Regex::is_match`.
    Regex(regex::Regex),
}

impl Matcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == value,
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

impl fmt::Display for Matcher {
    /// `"text"` or `regex "pattern"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "\"{}\"", shown(s)),
            Matcher::Regex(r) => write!(f, "regex \"{}\"", shown(r.as_str())),
        }
    }
}

/// The identity a signing certificate must carry.
#[derive(Debug, Clone, Default)]
pub struct CertIdentity {
    /// Matched against each subject alternative name (email, URI, DNS, IP, Fulcio's
    /// username otherName); one match is enough. `None`: any subject.
    pub subject: Option<Matcher>,
    /// Matched against the Fulcio OIDC issuer extension; a certificate without one fails.
    /// `None`: any issuer, or none.
    pub issuer: Option<Matcher>,
}

/// A configured root: the webpki anchor and what messages and the validity check need.
#[derive(Clone)]
struct Anchor {
    trust: TrustAnchor<'static>,
    subject: Name,
    not_before: i64,
    not_after: i64,
    /// Windows (Unix seconds, inclusive; `None` end = open) in which this root may vouch for
    /// a signature, from a trusted root's `validFor`; empty means always.
    windows: Vec<(i64, Option<i64>)>,
}

/// A certificate authority signers chain to (Fulcio, or your own PKI), with the identity a
/// signing certificate must carry.
#[derive(Clone)]
pub struct CertAuthority {
    /// The operator's name for this attestor.
    pub name: String,
    /// Trust anchors (DER).
    roots: Vec<Vec<u8>>,
    /// Intermediates that may complete a chain (DER); never anchors.
    intermediates: Vec<Vec<u8>>,
    /// What the leaf must say.
    pub identity: CertIdentity,
    /// `roots`, parsed, in the same order.
    anchors: Vec<Anchor>,
    /// The anchors as webpki takes them.
    trust: Vec<TrustAnchor<'static>>,
    /// `intermediates`, parsed (subject, for messages).
    intermediate_certs: Vec<Certificate>,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority")
            .field("name", &self.name)
            .field(
                "roots",
                &self
                    .anchors
                    .iter()
                    .map(|a| a.subject.to_string())
                    .collect::<Vec<_>>(),
            )
            .field(
                "intermediates",
                &self
                    .intermediate_certs
                    .iter()
                    .map(|c| c.tbs_certificate().subject().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("identity", &self.identity)
            .finish()
    }
}

/// What a verified leaf certificate says, for messages and `cri-guard verify`. Text is
/// escaped for display (`shown()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSummary {
    /// The subject alternative names.
    pub subjects: Vec<String>,
    /// The Fulcio OIDC issuer, if any.
    pub issuer: Option<String>,
}

impl fmt::Display for LeafSummary {
    /// `mitr@redhat.com (issuer https://github.com/login/oauth)`; several SANs are joined by
    /// `, `; a certificate without SAN shows `(no subject alternative name)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subjects.is_empty() {
            f.write_str("(no subject alternative name)")?;
        } else {
            f.write_str(&bounded_list(&self.subjects))?;
        }
        if let Some(issuer) = &self.issuer {
            write!(f, " (issuer {issuer})")?;
        }
        Ok(())
    }
}

impl CertAuthority {
    /// From DER certificates: `roots` are the anchors (whether self-signed or not: an
    /// operator may anchor trust at an intermediate), `intermediates` may complete chains.
    /// Every certificate must parse and be a CA (basicConstraints cA); at least one root is
    /// required. Errors name the attestor and the certificate (`root certificate #2`).
    pub fn from_der(
        name: &str,
        roots: Vec<Vec<u8>>,
        intermediates: Vec<Vec<u8>>,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        let label = |kind: &str, i: usize| format!("{kind} certificate #{}", i + 1);
        Self::build(
            name,
            roots
                .into_iter()
                .enumerate()
                .map(|(i, d)| (label("root", i), d))
                .collect(),
            intermediates
                .into_iter()
                .enumerate()
                .map(|(i, d)| (label("intermediate", i), d))
                .collect(),
            identity,
        )
    }

    /// From PEM texts: every certificate of `roots_pem` is an anchor (as cosign's
    /// `--ca-roots`), every one of `intermediates_pem` an intermediate (`--ca-intermediates`).
    /// For a bundle that mixes both (Fulcio's `fulcio-chain.pem`: intermediate + root) use
    /// [`CertAuthority::from_bundle_pem`]. Errors say `roots` or `intermediates`; use
    /// [`CertAuthority::from_named_pems`] to have them name the files.
    pub fn from_pem(
        name: &str,
        roots_pem: &[u8],
        intermediates_pem: Option<&[u8]>,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        Self::from_named_pems(
            name,
            ("roots", roots_pem),
            intermediates_pem.map(|p| ("intermediates", p)),
            identity,
        )
    }

    /// [`CertAuthority::from_pem`] with a label (e.g. the file name) for each PEM text, used
    /// in every message: `attestor fulcio: /etc/cri-guard/roots.pem: certificate #2 is not a
    /// CA certificate ...`. A PEM text without any certificate is an error.
    pub fn from_named_pems(
        name: &str,
        roots: (&str, &[u8]),
        intermediates: Option<(&str, &[u8])>,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        let read = |(label, pem): (&str, &[u8])| -> Result<Vec<(String, Vec<u8>)>, String> {
            let certs = pem_certificates(&format!("attestor {name}: {label}"), pem)?;
            if certs.is_empty() {
                return Err(format!(
                    "attestor {name}: {label}: no CERTIFICATE block found"
                ));
            }
            Ok(certs
                .into_iter()
                .enumerate()
                .map(|(i, d)| (format!("{label}: certificate #{}", i + 1), d))
                .collect())
        };
        let roots = read(roots)?;
        let intermediates = match intermediates {
            None => Vec::new(),
            Some(source) => read(source)?,
        };
        Self::build(name, roots, intermediates, identity)
    }

    /// From one PEM bundle of CA certificates (e.g. Fulcio's chain file, intermediate +
    /// root): self-signed ones are anchors, the others intermediates ([`split_anchors`]).
    /// `label` (e.g. the file name) is used in messages.
    pub fn from_bundle_pem(
        name: &str,
        label: &str,
        bundle_pem: &[u8],
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        let at = format!("attestor {name}: {label}");
        let certs = pem_certificates(&at, bundle_pem)?;
        let mut roots = Vec::new();
        let mut intermediates = Vec::new();
        for (i, der) in certs.into_iter().enumerate() {
            let cert_label = format!("{label}: certificate #{}", i + 1);
            if self_issued(&der).map_err(|e| format!("attestor {name}: {cert_label} {e}"))? {
                roots.push((cert_label, der));
            } else {
                intermediates.push((cert_label, der));
            }
        }
        if roots.is_empty() {
            return Err(format!("{at}: {NO_ROOT_IN_BUNDLE}"));
        }
        Self::build(name, roots, intermediates, identity)
    }

    /// Validates and indexes labelled certificates.
    fn build(
        name: &str,
        roots: Vec<(String, Vec<u8>)>,
        intermediates: Vec<(String, Vec<u8>)>,
        identity: CertIdentity,
    ) -> Result<CertAuthority, String> {
        if roots.is_empty() {
            return Err(format!("attestor {name}: no root certificate configured"));
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (label, der) in &roots {
            let what = format!("attestor {name}: {label}");
            let cert = parse_ca(der, &what)?;
            let trust = webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                .map_err(|e| {
                    format!(
                        "{what} cannot be used as a trust anchor: {}",
                        webpki_text(&e)
                    )
                })?
                .to_owned();
            let validity = cert.tbs_certificate().validity();
            anchors.push(Anchor {
                trust,
                subject: cert.tbs_certificate().subject().clone(),
                not_before: unix(&validity.not_before),
                not_after: unix(&validity.not_after),
                windows: Vec::new(),
            });
        }
        let mut intermediate_certs = Vec::with_capacity(intermediates.len());
        for (label, der) in &intermediates {
            let what = format!("attestor {name}: {label}");
            let cert = parse_ca(der, &what)?;
            // webpki parses path certificates strictly (e.g. unknown critical extensions):
            // find out now rather than at every verification.
            let der_ref = CertificateDer::from(der.as_slice());
            webpki::EndEntityCert::try_from(&der_ref).map_err(|e| {
                format!(
                    "{what} ({}) cannot be used in a chain: {}",
                    dn(cert.tbs_certificate().subject()),
                    webpki_text(&e)
                )
            })?;
            intermediate_certs.push(cert);
        }
        let trust = anchors.iter().map(|a| a.trust.clone()).collect();
        Ok(CertAuthority {
            name: name.to_owned(),
            roots: roots.into_iter().map(|(_, d)| d).collect(),
            intermediates: intermediates.into_iter().map(|(_, d)| d).collect(),
            identity,
            anchors,
            trust,
            intermediate_certs,
        })
    }

    /// Restricts root `index` (in the order given to [`CertAuthority::from_der`]) to vouch
    /// only for signatures made within one of `windows` (Unix seconds, inclusive; `None` end
    /// = open-ended), as a sigstore trusted root's `validFor`. Roots without windows are
    /// unrestricted.
    pub(crate) fn restrict_root(&mut self, index: usize, windows: Vec<(i64, Option<i64>)>) {
        if let Some(anchor) = self.anchors.get_mut(index) {
            anchor.windows = windows;
        }
    }

    /// The configured roots (DER).
    pub fn roots(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// The configured intermediates (DER).
    pub fn intermediates(&self) -> &[Vec<u8>] {
        &self.intermediates
    }

    /// Checks a leaf certificate (DER) with the untrusted `chain` (DER, e.g. the chain
    /// annotation) at Unix time `at`: it chains to a root, every certificate on the path is
    /// valid at `at`, key usage allows signing, and it matches the identity. Returns the
    /// leaf's public key, to verify the signature with.
    pub fn verify_leaf(
        &self,
        leaf: &[u8],
        chain: &[Vec<u8>],
        at: i64,
    ) -> Result<(PublicKey, LeafSummary), Failure> {
        self.verify_leaf_at(leaf, chain, at, "verification time")
    }

    /// [`CertAuthority::verify_leaf`], with `time_source` naming where `at` came from in
    /// messages, e.g. `Rekor integration time` gives "expired at X (checked at Rekor
    /// integration time Y)".
    pub fn verify_leaf_at(
        &self,
        leaf: &[u8],
        chain: &[Vec<u8>],
        at: i64,
        time_source: &str,
    ) -> Result<(PublicKey, LeafSummary), Failure> {
        let at = At {
            unix: at,
            source: time_source,
        };
        self.check(leaf, chain, &at)
            .map_err(|reason| Failure::Certificate { reason })
    }

    /// Checks only the identity of a leaf certificate (DER): its SANs and issuer extension
    /// against [`CertAuthority::identity`], for certificates whose chain was verified
    /// elsewhere (a Sigstore bundle's Fulcio certificate, by sigstore-verify).
    pub fn check_identity(&self, leaf_der: &[u8]) -> Result<LeafSummary, Failure> {
        let leaf = Certificate::from_der(leaf_der).map_err(|e| Failure::Certificate {
            reason: format!(
                "the signing certificate is not a valid DER X.509 certificate ({})",
                shown(&e.to_string())
            ),
        })?;
        self.identity_of(&leaf)
            .map_err(|reason| Failure::Certificate { reason })
    }

    fn check(
        &self,
        leaf_der: &[u8],
        chain: &[Vec<u8>],
        at: &At<'_>,
    ) -> Result<(PublicKey, LeafSummary), String> {
        let leaf = Certificate::from_der(leaf_der).map_err(|e| {
            format!(
                "the signing certificate is not a valid DER X.509 certificate ({})",
                shown(&e.to_string())
            )
        })?;
        check_validity(&leaf, "", at)?;
        check_leaf_usage(&leaf)?;

        if chain.len() > MAX_CHAIN_CERTIFICATES {
            return Err(format!(
                "the signature's certificate chain has {} certificates (at most {MAX_CHAIN_CERTIFICATES} are read)",
                chain.len()
            ));
        }
        let mut pool: Vec<Certificate> = Vec::with_capacity(chain.len());
        for (i, der) in chain.iter().enumerate() {
            pool.push(Certificate::from_der(der).map_err(|e| {
                format!(
                    "certificate #{} of the signature's chain is not a valid DER X.509 certificate ({})",
                    i + 1,
                    shown(&e.to_string())
                )
            })?);
        }
        pool.extend(self.intermediate_certs.iter().cloned());

        self.build_path(leaf_der, chain, at)
            .map_err(|e| self.diagnose(&leaf, &pool, at, &e))?;

        let summary = self.identity_of(&leaf)?;
        let key = leaf_public_key(&self.name, &leaf)?;
        Ok((key, summary))
    }

    /// Path building, signatures and validity by webpki. Chain certificates go in the
    /// intermediates only; the anchor's own validity (and `validFor` window) is checked by
    /// the path callback, so that path building moves on to another root if one is out.
    fn build_path(&self, leaf: &[u8], chain: &[Vec<u8>], at: &At<'_>) -> Result<(), webpki::Error> {
        let secs = u64::try_from(at.unix).map_err(|_| webpki::Error::BadDerTime)?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let leaf = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        let pool: Vec<CertificateDer<'_>> = chain
            .iter()
            .chain(&self.intermediates)
            .map(|d| CertificateDer::from(d.as_slice()))
            .collect();
        // The same root may be configured twice (e.g. in two `validFor` windows): the path
        // is good if one of its entries is valid at `at`.
        let anchor_ok = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let used = path.anchor();
            let mut problem = None;
            for a in &self.anchors {
                if a.trust.subject != used.subject
                    || a.trust.subject_public_key_info != used.subject_public_key_info
                {
                    continue;
                }
                match root_time_problem(a, at.unix) {
                    None => return Ok(()),
                    Some(_) => {
                        problem = Some(webpki::Error::CertExpired {
                            time,
                            not_after: UnixTime::since_unix_epoch(Duration::from_secs(
                                u64::try_from(a.not_after).unwrap_or(0),
                            )),
                        })
                    }
                }
            }
            problem.map_or(Ok(()), Err)
        };
        ee.verify_for_usage(
            ALGORITHMS,
            &self.trust,
            &pool,
            time,
            CodeSigning,
            None,
            Some(&anchor_ok),
        )
        .map(|_| ())
    }

    /// Turns a path-building failure into a message naming the certificate and what to do:
    /// walks up by issuer name from the leaf through `pool` (signature chain + configured
    /// intermediates) to the first certificate at fault; falls back to webpki's reason.
    fn diagnose(
        &self,
        leaf: &Certificate,
        pool: &[Certificate],
        at: &At<'_>,
        err: &webpki::Error,
    ) -> String {
        let name = &self.name;
        let mut current = leaf;
        let mut used: Vec<usize> = Vec::new();
        for _ in 0..=pool.len() {
            let issuer = current.tbs_certificate().issuer();
            let roots: Vec<&Anchor> = self
                .anchors
                .iter()
                .filter(|a| &a.subject == issuer)
                .collect();
            if !roots.is_empty() {
                let problems: Vec<String> = roots
                    .iter()
                    .filter_map(|a| root_time_problem(a, at.unix))
                    .collect();
                if problems.len() == roots.len() {
                    return format!(
                        "root {} of attestor {name} {} ({at})",
                        dn(issuer),
                        problems.join("; another root of that name ")
                    );
                }
                return format!(
                    "chain to root {} of attestor {name} does not verify: {}",
                    dn(issuer),
                    webpki_text(err)
                );
            }
            let next = pool
                .iter()
                .enumerate()
                .find(|(i, c)| c.tbs_certificate().subject() == issuer && !used.contains(i));
            let Some((i, next)) = next else {
                return format!(
                    "chain does not lead to a trusted root of attestor {name} (issuer {} is not configured; {})",
                    dn(issuer),
                    hint(issuer)
                );
            };
            used.push(i);
            let subject = dn(next.tbs_certificate().subject());
            if let Err(e) = check_validity(next, &format!("chain certificate {subject} "), at) {
                return e;
            }
            match next.tbs_certificate().get_extension::<BasicConstraints>() {
                Ok(Some((_, bc))) if bc.ca => {}
                _ => {
                    return format!(
                        "chain certificate {subject} is not a CA certificate (no basicConstraints cA)"
                    );
                }
            }
            if let Ok(Some((_, eku))) = next.tbs_certificate().get_extension::<ExtendedKeyUsage>() {
                if !eku_allows_code_signing(&eku) {
                    return format!(
                        "chain certificate {subject} does not allow code signing (extended key usage {})",
                        eku_names(&eku)
                    );
                }
            }
            current = next;
        }
        format!(
            "chain to a trusted root of attestor {name} does not verify: {}",
            webpki_text(err)
        )
    }

    /// The subject and issuer matchers; returns what the leaf says.
    fn identity_of(&self, leaf: &Certificate) -> Result<LeafSummary, String> {
        let raw_subjects = subject_alt_names(leaf)?;
        let raw_issuer = fulcio_issuer(leaf)?;
        let summary = LeafSummary {
            subjects: raw_subjects.iter().map(|s| shown(s)).collect(),
            issuer: raw_issuer.as_deref().map(shown),
        };
        if let Some(m) = &self.identity.subject {
            if raw_subjects.is_empty() {
                return Err(format!(
                    "has no subject alternative name, but attestor {} requires subject {m}",
                    self.name
                ));
            }
            if !raw_subjects.iter().any(|s| m.matches(s)) {
                let (noun, verb) = if raw_subjects.len() == 1 {
                    ("identity", "does")
                } else {
                    ("identities", "do")
                };
                return Err(format!(
                    "{noun} {} {verb} not match subject {m}",
                    bounded_list(&summary.subjects)
                ));
            }
        }
        if let Some(m) = &self.identity.issuer {
            let Some(issuer) = &raw_issuer else {
                return Err(format!(
                    "has no OIDC issuer extension ({OID_FULCIO_ISSUER_V2} or {OID_FULCIO_ISSUER_V1}), but attestor {} requires issuer {}",
                    self.name,
                    issuer_matcher_text(m)
                ));
            };
            if !m.matches(issuer) {
                return Err(format!(
                    "OIDC issuer {} does not match {}",
                    shown(issuer),
                    issuer_matcher_text(m)
                ));
            }
        }
        Ok(summary)
    }
}

/// At most the first five items, joined by `, `, then how many more: a certificate may carry
/// any number of SANs, a message should stay short.
fn bounded_list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// An issuer matcher as messages show it: the URL as is, or `regex "..."`.
fn issuer_matcher_text(m: &Matcher) -> String {
    match m {
        Matcher::Exact(s) => shown(s),
        Matcher::Regex(_) => m.to_string(),
    }
}

/// The public key of a signing certificate (DER), named after the attestor.
pub(crate) fn leaf_public_key_der(attestor: &str, leaf: &[u8]) -> Result<PublicKey, Failure> {
    let cert = Certificate::from_der(leaf).map_err(|e| Failure::Certificate {
        reason: format!(
            "the signing certificate is not a valid DER X.509 certificate ({})",
            shown(&e.to_string())
        ),
    })?;
    leaf_public_key(attestor, &cert).map_err(|reason| Failure::Certificate { reason })
}

fn leaf_public_key(attestor: &str, leaf: &Certificate) -> Result<PublicKey, String> {
    let spki = leaf
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("key cannot be read: {}", shown(&e.to_string())))?;
    PublicKey::from_spki_der(&format!("{attestor} (signing certificate)"), &spki)
        .map_err(|e| format!("has an unusable public key: {e}"))
}

/// The time a chain is checked at, and where it came from, for messages.
struct At<'a> {
    unix: i64,
    source: &'a str,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checked at {} {}", self.source, rfc3339(self.unix))
    }
}

/// RFC 3339 (UTC) form of a Unix time, for messages; out of range values as a number.
pub(crate) fn rfc3339(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|s| DateTime::from_unix_duration(Duration::from_secs(s)).ok())
        .map(|d| d.to_string())
        .unwrap_or_else(|| format!("Unix time {unix}"))
}

fn unix(t: &x509_cert::time::Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// Why a root may not vouch for a signature made at `at`, if it may not: "expired at ...",
/// "is not valid before ...", "is trusted only for signatures made from ... to ...".
fn root_time_problem(a: &Anchor, at: i64) -> Option<String> {
    if at < a.not_before {
        Some(format!("is not valid before {}", rfc3339(a.not_before)))
    } else if at > a.not_after {
        Some(format!("expired at {}", rfc3339(a.not_after)))
    } else if !in_windows(&a.windows, at) {
        Some(format!(
            "is trusted only for signatures made {}",
            windows_text(&a.windows)
        ))
    } else {
        None
    }
}

fn in_windows(windows: &[(i64, Option<i64>)], at: i64) -> bool {
    windows.is_empty()
        || windows
            .iter()
            .any(|(start, end)| at >= *start && end.is_none_or(|end| at <= end))
}

fn windows_text(windows: &[(i64, Option<i64>)]) -> String {
    windows
        .iter()
        .map(|(start, end)| match (*start == i64::MIN, end) {
            (false, Some(end)) => format!("from {} to {}", rfc3339(*start), rfc3339(*end)),
            (true, Some(end)) => format!("until {}", rfc3339(*end)),
            (false, None) => format!("from {}", rfc3339(*start)),
            (true, None) => "at any time".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `what` is "" for the signing certificate (the message then reads "certificate: expired
/// at ..."), or e.g. "chain certificate CN=x ".
fn check_validity(cert: &Certificate, what: &str, at: &At<'_>) -> Result<(), String> {
    let v = cert.tbs_certificate().validity();
    if at.unix < unix(&v.not_before) {
        return Err(format!("{what}not valid before {} ({at})", v.not_before));
    }
    if at.unix > unix(&v.not_after) {
        return Err(format!("{what}expired at {} ({at})", v.not_after));
    }
    Ok(())
}

/// A signing certificate must not be a CA, and must allow signatures and code signing where
/// it restricts usage. Go's crypto/x509 ignores keyUsage; cosign's Fulcio and BYO-PKI leaves
/// all set digitalSignature, and sigstore intends this check (its version never fires).
fn check_leaf_usage(leaf: &Certificate) -> Result<(), String> {
    let tbs = leaf.tbs_certificate();
    let malformed = |ext: &str, e: x509_cert::der::Error| {
        format!(
            "has a malformed {ext} extension ({})",
            shown(&e.to_string())
        )
    };
    if let Some((_, bc)) = tbs
        .get_extension::<BasicConstraints>()
        .map_err(|e| malformed("basicConstraints", e))?
    {
        if bc.ca {
            return Err(
                "the signing certificate is a CA certificate (basicConstraints cA), not a signing certificate"
                    .to_owned(),
            );
        }
    }
    if let Some((_, ku)) = tbs
        .get_extension::<KeyUsage>()
        .map_err(|e| malformed("keyUsage", e))?
    {
        if !ku.digital_signature() {
            return Err(format!(
                "key usage ({}) does not allow digital signatures",
                key_usage_names(&ku)
            ));
        }
    }
    if let Some((_, eku)) = tbs
        .get_extension::<ExtendedKeyUsage>()
        .map_err(|e| malformed("extendedKeyUsage", e))?
    {
        if !eku_allows_code_signing(&eku) {
            return Err(format!(
                "extended key usage ({}) does not allow code signing",
                eku_names(&eku)
            ));
        }
    }
    Ok(())
}

fn eku_allows_code_signing(eku: &ExtendedKeyUsage) -> bool {
    eku.0
        .iter()
        .any(|o| *o == EKU_CODE_SIGNING || *o == EKU_ANY)
}

fn eku_names(eku: &ExtendedKeyUsage) -> String {
    if eku.0.is_empty() {
        return "empty".to_owned();
    }
    eku.0
        .iter()
        .map(|o| match o.to_string().as_str() {
            "1.3.6.1.5.5.7.3.1" => "serverAuth".to_owned(),
            "1.3.6.1.5.5.7.3.2" => "clientAuth".to_owned(),
            "1.3.6.1.5.5.7.3.3" => "codeSigning".to_owned(),
            "1.3.6.1.5.5.7.3.4" => "emailProtection".to_owned(),
            "1.3.6.1.5.5.7.3.8" => "timeStamping".to_owned(),
            "1.3.6.1.5.5.7.3.9" => "OCSPSigning".to_owned(),
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_usage_names(ku: &KeyUsage) -> String {
    let names: Vec<&str> = [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
        (ku.encipher_only(), "encipherOnly"),
        (ku.decipher_only(), "decipherOnly"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// The EKU rule for every certificate on the path, as Go's crypto/x509 applies
/// `KeyUsages: [CodeSigning]` (what cosign asks for): no EKU extension means any usage;
/// otherwise codeSigning or anyExtendedKeyUsage must be listed. (webpki's own `KeyUsage`
/// does not know anyExtendedKeyUsage.)
struct CodeSigning;

impl ExtendedKeyUsageValidator for CodeSigning {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if id == KeyPurposeId::new(CODE_SIGNING_DER) || id == KeyPurposeId::new(ANY_EKU_DER) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            Ok(())
        } else {
            Err(webpki::Error::RequiredEkuNotFoundContext(
                webpki::RequiredEkuNotFoundContext {
                    required: webpki::KeyUsage::required(CODE_SIGNING_DER),
                    present,
                },
            ))
        }
    }
}

/// Every subject alternative name as text: email, URI, DNS, IP, and Fulcio's username
/// otherName. Other kinds (directory names, other otherNames) are not identities cosign
/// matches and are skipped.
fn subject_alt_names(leaf: &Certificate) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for ext in leaf.tbs_certificate().filter_extensions::<SubjectAltName>() {
        let (_, san) = ext.map_err(|e| {
            format!(
                "has a malformed subject alternative name extension ({})",
                shown(&e.to_string())
            )
        })?;
        for name in san.0 {
            match name {
                GeneralName::Rfc822Name(s)
                | GeneralName::DnsName(s)
                | GeneralName::UniformResourceIdentifier(s) => out.push(s.as_str().to_owned()),
                GeneralName::IpAddress(ip) => {
                    let b = ip.as_bytes();
                    if let Ok(v4) = <[u8; 4]>::try_from(b) {
                        out.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
                        out.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                GeneralName::OtherName(other) if other.type_id == USERNAME => {
                    let s = other.value.decode_as::<Utf8StringRef<'_>>().map_err(|e| {
                        format!(
                            "has a malformed Fulcio username SAN ({})",
                            shown(&e.to_string())
                        )
                    })?;
                    out.push(s.as_str().to_owned());
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The Fulcio OIDC issuer: the v2 extension (DER UTF8String) if present, else the v1
/// extension (raw UTF-8 bytes). Each may appear once.
fn fulcio_issuer(leaf: &Certificate) -> Result<Option<String>, String> {
    let exts = leaf
        .tbs_certificate()
        .extensions()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let find = |oid: ObjectIdentifier| -> Result<Option<&[u8]>, String> {
        let mut found = exts.iter().filter(|e| e.extn_id == oid);
        let first = found.next();
        if found.next().is_some() {
            return Err(format!(
                "has the OIDC issuer extension {oid} more than once"
            ));
        }
        Ok(first.map(|e| e.extn_value.as_bytes()))
    };
    if let Some(v2) = find(ISSUER_V2)? {
        let s = Utf8StringRef::from_der(v2).map_err(|e| {
            format!(
                "OIDC issuer extension {OID_FULCIO_ISSUER_V2} is not a DER UTF8String ({})",
                shown(&e.to_string())
            )
        })?;
        return Ok(Some(s.as_str().to_owned()));
    }
    if let Some(v1) = find(ISSUER_V1)? {
        let s = std::str::from_utf8(v1).map_err(|_| {
            format!("OIDC issuer extension {OID_FULCIO_ISSUER_V1} is not UTF-8 text")
        })?;
        return Ok(Some(s.to_owned()));
    }
    Ok(None)
}

/// Parses a configured CA certificate and checks it is one.
fn parse_ca(der: &[u8], what: &str) -> Result<Certificate, String> {
    let cert = Certificate::from_der(der)
        .map_err(|e| format!("{what} is not a valid DER X.509 certificate ({e})"))?;
    let subject = dn(cert.tbs_certificate().subject());
    match cert.tbs_certificate().get_extension::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => Ok(cert),
        Ok(_) => Err(format!(
            "{what} ({subject}) is not a CA certificate (basicConstraints cA is not set); configure the CA certificates that issue the signing certificates, not a signing certificate"
        )),
        Err(e) => Err(format!(
            "{what} ({subject}) has a malformed basicConstraints extension ({e})"
        )),
    }
}

/// A distinguished name as messages show it (RFC 4514), escaped.
fn dn(name: &Name) -> String {
    let s = name.to_string();
    if s.is_empty() {
        "(empty name)".to_owned()
    } else {
        shown(&s)
    }
}

/// What to configure for an issuer that is neither configured nor in the signature's chain.
fn hint(issuer: &Name) -> &'static str {
    if issuer.to_string().contains("sigstore") {
        "add the Fulcio intermediate, e.g. with the Fulcio chain file (intermediate + root) or a sigstore trusted_root.json"
    } else {
        "add that CA certificate to the attestor's intermediates or roots"
    }
}

/// webpki's reason, for an operator.
fn webpki_text(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => "no path to a configured root".to_owned(),
        E::InvalidSignatureForPublicKey => {
            "a certificate's signature does not verify with its issuer's key".to_owned()
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a certificate is signed with an unsupported algorithm (supported: ECDSA with SHA-256/384/512, RSA PKCS#1 v1.5 or PSS with SHA-256/384/512 and 2048-8192-bit keys, Ed25519)".to_owned()
        }
        E::CertExpired { .. } | E::CertNotValidYet { .. } => {
            "a certificate is not valid at the verification time".to_owned()
        }
        E::PathLenConstraintViolated => "a CA's path length constraint is exceeded".to_owned(),
        E::NameConstraintViolation => {
            "a CA's name constraints do not allow the signing certificate".to_owned()
        }
        E::EndEntityUsedAsCa => {
            "a certificate that is not a CA (no basicConstraints cA) issued another".to_owned()
        }
        E::CaUsedAsEndEntity => "the signing certificate is a CA certificate".to_owned(),
        E::RequiredEkuNotFoundContext(_) => {
            "a certificate's extended key usage does not allow code signing".to_owned()
        }
        E::EmptyEkuExtension => "a certificate has an empty extended key usage".to_owned(),
        E::UnsupportedCriticalExtension => {
            "a certificate has a critical extension that is not understood".to_owned()
        }
        E::UnsupportedCertVersion => "a certificate is not X.509 version 3".to_owned(),
        E::MaximumSignatureChecksExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumPathDepthExceeded => {
            "the chain is too long or offers too many candidate issuers".to_owned()
        }
        E::CertDistrusted => "a certificate's key is distrusted".to_owned(),
        E::BadDerTime => "the verification time is out of range".to_owned(),
        other => shown(&format!("{other:?}")),
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

const NO_ROOT_IN_BUNDLE: &str =
    "no self-signed root certificate; a CA bundle must include its root";

/// Whether a certificate is self-issued (subject equals issuer), as the root a bundle ends
/// with; `Err` says why it does not parse.
fn self_issued(der: &[u8]) -> Result<bool, String> {
    let cert = Certificate::from_der(der)
        .map_err(|e| format!("is not a valid DER X.509 certificate ({e})"))?;
    let tbs = cert.tbs_certificate();
    Ok(tbs.subject() == tbs.issuer())
}

/// Splits CA certificates (DER) into anchors (self-issued: subject equals issuer, as the
/// root a bundle ends with) and intermediates, keeping their order. Fails if one does not
/// parse or none is self-issued. `name` labels messages (e.g. a file name).
#[allow(clippy::type_complexity)] // (anchors, intermediates), each a list of DER certificates
pub fn split_anchors(
    name: &str,
    certs: Vec<Vec<u8>>,
) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), String> {
    let mut anchors = Vec::new();
    let mut intermediates = Vec::new();
    for (i, der) in certs.into_iter().enumerate() {
        if self_issued(&der).map_err(|e| format!("{name}: certificate #{} {e}", i + 1))? {
            anchors.push(der);
        } else {
            intermediates.push(der);
        }
    }
    if anchors.is_empty() {
        return Err(format!("{name}: {NO_ROOT_IN_BUNDLE}"));
    }
    Ok((anchors, intermediates))
}

#[cfg(test)]
pub(crate) mod tests {
    //! Certificates are built here by hand (a few lines of DER), signed with sigstore's test
    //! signers (ECDSA P-256, SHA-256), so every rule can be shown with a certificate that
    //! breaks just that rule.

    use super::*;
    use crate::verify::cosign::trust::keys::pem_blocks;
    use crate::verify::cosign::trust::keys::tests::signer;
    use sigstore::crypto::{SigStoreSigner, SigningScheme};

    /// The verification time most tests use (2023-11-14T22:13:20Z).
    pub(crate) const T: i64 = 1_700_000_000;

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let n = body.len();
        let mut out = vec![tag];
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(body);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn oid(dotted: &str) -> Vec<u8> {
        tlv(0x06, ObjectIdentifier::new(dotted).unwrap().as_bytes())
    }

    fn utf8(s: &str) -> Vec<u8> {
        tlv(0x0c, s.as_bytes())
    }

    fn name(cn: &str) -> Vec<u8> {
        seq(&[tlv(0x31, &seq(&[oid("2.5.4.3"), utf8(cn)]))])
    }

    /// UTCTime (years 1950..2049, as RFC 5280 wants).
    fn time(unix: i64) -> Vec<u8> {
        let d = DateTime::from_unix_duration(Duration::from_secs(unix as u64)).unwrap();
        let text = format!(
            "{:02}{:02}{:02}{:02}{:02}{:02}Z",
            d.year() % 100,
            d.month(),
            d.day(),
            d.hour(),
            d.minutes(),
            d.seconds()
        );
        tlv(0x17, text.as_bytes())
    }

    fn ext(id: &str, critical: bool, value: Vec<u8>) -> Vec<u8> {
        let mut parts = vec![oid(id)];
        if critical {
            parts.push(tlv(0x01, &[0xff]));
        }
        parts.push(tlv(0x04, &value));
        seq(&parts)
    }

    /// A SAN GeneralName.
    pub(crate) enum San<'a> {
        Email(&'a str),
        Uri(&'a str),
        Dns(&'a str),
        Ip([u8; 4]),
        Username(&'a str),
        OtherName(&'a str, &'a str),
    }

    fn general_name(san: &San<'_>) -> Vec<u8> {
        match san {
            San::Email(s) => tlv(0x81, s.as_bytes()),
            San::Dns(s) => tlv(0x82, s.as_bytes()),
            San::Uri(s) => tlv(0x86, s.as_bytes()),
            San::Ip(ip) => tlv(0x87, ip),
            San::Username(s) => tlv(
                0xa0,
                &[oid(OID_FULCIO_USERNAME), tlv(0xa0, &utf8(s))].concat(),
            ),
            San::OtherName(id, s) => tlv(0xa0, &[oid(id), tlv(0xa0, &utf8(s))].concat()),
        }
    }

    /// What goes into a test certificate.
    pub(crate) struct Spec<'a> {
        pub subject: &'a str,
        pub not_before: i64,
        pub not_after: i64,
        /// basicConstraints (critical): `Some(true)` CA, `Some(false)` not, `None` absent.
        pub ca: Option<bool>,
        /// keyUsage bits of the first octet (0x80 digitalSignature, 0x04 keyCertSign).
        pub key_usage: Option<u8>,
        pub eku: Option<Vec<&'a str>>,
        pub sans: Vec<San<'a>>,
        pub issuer_v1: Option<&'a str>,
        /// The v2 issuer extension's raw value (DER).
        pub issuer_v2: Option<Vec<u8>>,
        pub extra: Vec<Vec<u8>>,
    }

    impl Spec<'_> {
        /// A CA certificate valid from a year before [`T`] to ten years after.
        pub(crate) fn ca(subject: &str) -> Spec<'_> {
            Spec {
                subject,
                not_before: T - 365 * 86400,
                not_after: T + 3650 * 86400,
                ca: Some(true),
                key_usage: Some(0x06),
                eku: None,
                sans: Vec::new(),
                issuer_v1: None,
                issuer_v2: None,
                extra: Vec::new(),
            }
        }

        /// A Fulcio-like leaf valid for ten minutes around `at`: digitalSignature,
        /// codeSigning, an email SAN and the v1 + v2 issuer extensions.
        pub(crate) fn leaf(at: i64) -> Spec<'static> {
            Spec {
                subject: "",
                not_before: at - 60,
                not_after: at + 540,
                ca: None,
                key_usage: Some(0x80),
                eku: Some(vec!["1.3.6.1.5.5.7.3.3"]),
                sans: vec![San::Email("dev@example.com")],
                issuer_v1: Some("https://issuer.example.com"),
                issuer_v2: Some(utf8("https://issuer.example.com")),
                extra: Vec::new(),
            }
        }
    }

    /// A key pair and the certificate made for it.
    pub(crate) struct Made {
        pub signer: SigStoreSigner,
        pub subject: String,
        pub der: Vec<u8>,
    }

    impl Made {
        pub(crate) fn pem(&self) -> String {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        }
    }

    /// Makes a certificate for a fresh P-256 key, signed by `issuer` (self-signed if `None`).
    pub(crate) fn make(spec: &Spec<'_>, issuer: Option<&Made>) -> Made {
        let (signer, pem) = signer(SigningScheme::ECDSA_P256_SHA256_ASN1);
        let spki = pem_blocks(pem.as_bytes()).unwrap()[0].decode().unwrap();
        let mut exts = Vec::new();
        if let Some(ca) = spec.ca {
            let body = if ca {
                seq(&[tlv(0x01, &[0xff])])
            } else {
                seq(&[])
            };
            exts.push(ext("2.5.29.19", true, body));
        }
        if let Some(bits) = spec.key_usage {
            let unused = bits.trailing_zeros().min(7) as u8;
            exts.push(ext("2.5.29.15", true, tlv(0x03, &[unused, bits])));
        }
        if let Some(eku) = &spec.eku {
            let ids: Vec<Vec<u8>> = eku.iter().map(|o| oid(o)).collect();
            exts.push(ext("2.5.29.37", false, seq(&ids)));
        }
        if !spec.sans.is_empty() {
            let names: Vec<Vec<u8>> = spec.sans.iter().map(general_name).collect();
            exts.push(ext("2.5.29.17", spec.subject.is_empty(), seq(&names)));
        }
        if let Some(v1) = spec.issuer_v1 {
            exts.push(ext(OID_FULCIO_ISSUER_V1, false, v1.as_bytes().to_vec()));
        }
        if let Some(v2) = &spec.issuer_v2 {
            exts.push(ext(OID_FULCIO_ISSUER_V2, false, v2.clone()));
        }
        exts.extend(spec.extra.iter().cloned());
        let subject = if spec.subject.is_empty() {
            seq(&[])
        } else {
            name(spec.subject)
        };
        let issuer_name = match issuer {
            Some(i) => name(&i.subject),
            None => subject.clone(),
        };
        let alg = seq(&[oid("1.2.840.10045.4.3.2")]);
        let mut tbs_parts = vec![
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[0x01, 0x23, 0x45]),
            alg.clone(),
            issuer_name,
            seq(&[time(spec.not_before), time(spec.not_after)]),
            subject,
            spki.clone(),
        ];
        if !exts.is_empty() {
            tbs_parts.push(tlv(0xa3, &seq(&exts)));
        }
        let tbs = seq(&tbs_parts);
        let sig = match issuer {
            Some(i) => i.signer.sign(&tbs).unwrap(),
            None => signer.sign(&tbs).unwrap(),
        };
        let mut bits = vec![0];
        bits.extend(sig);
        Made {
            signer,
            subject: spec.subject.to_owned(),
            der: seq(&[tbs, alg, tlv(0x03, &bits)]),
        }
    }

    /// The `PUBLIC KEY` PEM of a made certificate's key.
    pub(crate) fn public_key_pem(m: &Made) -> String {
        m.signer
            .to_sigstore_keypair()
            .unwrap()
            .public_key_to_pem()
            .unwrap()
    }

    /// A root and an intermediate under it.
    pub(crate) fn pki() -> (Made, Made) {
        let root = make(&Spec::ca("test-root"), None);
        let inter = make(&Spec::ca("test-intermediate"), Some(&root));
        (root, inter)
    }

    pub(crate) fn identity(subject: &str, issuer: &str) -> CertIdentity {
        CertIdentity {
            subject: Some(Matcher::Exact(subject.to_owned())),
            issuer: Some(Matcher::Exact(issuer.to_owned())),
        }
    }

    fn authority(root: &Made, intermediates: &[&Made], id: CertIdentity) -> CertAuthority {
        CertAuthority::from_der(
            "test-ca",
            vec![root.der.clone()],
            intermediates.iter().map(|m| m.der.clone()).collect(),
            id,
        )
        .unwrap()
    }

    fn reason(r: Result<(PublicKey, LeafSummary), Failure>) -> String {
        match r {
            Err(Failure::Certificate { reason }) => reason,
            Err(other) => panic!("not a certificate failure: {other}"),
            Ok((_, s)) => panic!("verified: {s}"),
        }
    }

    /// A Fulcio-like leaf chains through the signature's intermediate to the configured
    /// root; the returned key verifies its signatures and the summary names the identity.
    #[test]
    fn leaf_verifies_through_chain() {
        let (root, inter) = pki();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = authority(
            &root,
            &[],
            identity("dev@example.com", "https://issuer.example.com"),
        );
        let chain = vec![inter.der.clone(), root.der.clone()];
        let (key, summary) = ca.verify_leaf(&leaf.der, &chain, T).unwrap();
        assert_eq!(
            summary.to_string(),
            "dev@example.com (issuer https://issuer.example.com)"
        );
        let sig = leaf.signer.sign(b"payload").unwrap();
        assert!(key.verifies(&sig, b"payload"));
        assert!(!key.verifies(&sig, b"other"));
        // The configured intermediate does as well as the chain annotation.
        let ca = authority(&root, &[&inter], CertIdentity::default());
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
    }

    /// The chain is checked at the given time: before and after the leaf's window fail with
    /// both times and the time's source in the message.
    #[test]
    fn validity_at_given_time() {
        let (root, inter) = pki();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = authority(&root, &[&inter], CertIdentity::default());
        assert!(ca.verify_leaf(&leaf.der, &[], T + 540).is_ok());
        let msg = reason(ca.verify_leaf_at(&leaf.der, &[], T + 541, "Rekor integration time"));
        assert_eq!(
            msg,
            "expired at 2023-11-14T22:22:20Z (checked at Rekor integration time 2023-11-14T22:22:21Z)"
        );
        let msg = reason(ca.verify_leaf(&leaf.der, &[], T - 61));
        assert!(
            msg.starts_with("not valid before 2023-11-14T22:12:20Z (checked at verification time"),
            "{msg}"
        );
        // An intermediate that expired before the signing time.
        let mut spec = Spec::ca("old-intermediate");
        spec.not_after = T - 10;
        let old = make(&spec, Some(&root));
        let leaf = make(&Spec::leaf(T), Some(&old));
        let msg = reason(ca.verify_leaf(&leaf.der, std::slice::from_ref(&old.der), T));
        assert!(
            msg.starts_with("chain certificate CN=old-intermediate expired at "),
            "{msg}"
        );
        assert!(
            ca.verify_leaf(&leaf.der, std::slice::from_ref(&old.der), T - 20)
                .is_ok()
        );
        // Negative times are refused, not wrapped.
        assert!(ca.verify_leaf(&leaf.der, &[], -1).is_err());
    }

    /// The root must be valid at the signing time too (webpki never looks at an anchor's
    /// validity; Go does).
    #[test]
    fn root_validity_is_checked() {
        let mut spec = Spec::ca("short-root");
        spec.not_after = T - 1;
        let root = make(&spec, None);
        let mut spec = Spec::ca("inter");
        spec.not_before = T - 100;
        let inter = make(&spec, Some(&root));
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = authority(&root, &[&inter], CertIdentity::default());
        let msg = reason(ca.verify_leaf(&leaf.der, &[], T));
        assert_eq!(
            msg,
            "root CN=short-root of attestor test-ca expired at 2023-11-14T22:13:19Z (checked at verification time 2023-11-14T22:13:20Z)"
        );
    }

    /// A root restricted to `validFor` windows vouches only for signatures made inside one;
    /// the same root listed twice is good if either window holds.
    #[test]
    fn root_windows() {
        let (root, inter) = pki();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let mut ca = authority(&root, &[&inter], CertIdentity::default());
        ca.restrict_root(0, vec![(T - 1000, Some(T - 1))]);
        let msg = reason(ca.verify_leaf(&leaf.der, &[], T));
        assert!(
            msg.starts_with(
                "root CN=test-root of attestor test-ca is trusted only for signatures made from "
            ),
            "{msg}"
        );
        ca.restrict_root(0, vec![(T - 1000, Some(T - 1)), (T, None)]);
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
        let mut twice = CertAuthority::from_der(
            "twice",
            vec![root.der.clone(), root.der.clone()],
            vec![inter.der.clone()],
            CertIdentity::default(),
        )
        .unwrap();
        twice.restrict_root(0, vec![(T - 1000, Some(T - 1))]);
        twice.restrict_root(1, vec![(T - 1000, None)]);
        assert!(twice.verify_leaf(&leaf.der, &[], T).is_ok());
    }

    /// Certificates from the signature's chain are intermediates only: a chain ending in the
    /// signer's own self-signed root, or a self-signed leaf, does not verify, and the message
    /// names the issuer that is missing from the configuration.
    #[test]
    fn signature_chain_is_never_an_anchor() {
        let (root, _) = pki();
        let ca = authority(&root, &[], CertIdentity::default());
        let (evil_root, evil_inter) = {
            let r = make(&Spec::ca("test-root"), None); // same name, other key
            let i = make(&Spec::ca("evil-intermediate"), Some(&r));
            (r, i)
        };
        let leaf = make(&Spec::leaf(T), Some(&evil_inter));
        let chain = vec![evil_inter.der.clone(), evil_root.der.clone()];
        let msg = reason(ca.verify_leaf(&leaf.der, &chain, T));
        assert!(
            msg.starts_with("chain to root CN=test-root of attestor test-ca does not verify: a certificate's signature does not verify with its issuer's key"),
            "{msg}"
        );
        let other_root = make(&Spec::ca("other-root"), None);
        let other_inter = make(&Spec::ca("other-intermediate"), Some(&other_root));
        let leaf = make(&Spec::leaf(T), Some(&other_inter));
        let chain = vec![other_inter.der.clone(), other_root.der.clone()];
        let msg = reason(ca.verify_leaf(&leaf.der, &chain, T));
        assert_eq!(
            msg,
            "chain does not lead to a trusted root of attestor test-ca (issuer CN=other-root is not configured; add that CA certificate to the attestor's intermediates or roots)"
        );
        let mut spec = Spec::leaf(T);
        spec.subject = "self";
        let selfsigned = make(&spec, None);
        assert!(
            ca.verify_leaf(&selfsigned.der, std::slice::from_ref(&selfsigned.der), T)
                .is_err()
        );
    }

    /// Without the intermediate (configured or in the chain) there is no path; the message
    /// names it, with the Fulcio hint for a sigstore issuer.
    #[test]
    fn missing_intermediate_is_named() {
        let root = make(&Spec::ca("sigstore"), None);
        let inter = make(&Spec::ca("sigstore-intermediate"), Some(&root));
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = CertAuthority::from_der(
            "fulcio",
            vec![root.der.clone()],
            vec![],
            CertIdentity::default(),
        )
        .unwrap();
        let msg = reason(ca.verify_leaf(&leaf.der, &[], T));
        assert_eq!(
            msg,
            "chain does not lead to a trusted root of attestor fulcio (issuer CN=sigstore-intermediate is not configured; add the Fulcio intermediate, e.g. with the Fulcio chain file (intermediate + root) or a sigstore trusted_root.json)"
        );
    }

    /// Issuers must be CAs: an intermediate without basicConstraints cA does not issue.
    #[test]
    fn issuer_must_be_ca() {
        let root = make(&Spec::ca("test-root"), None);
        let mut spec = Spec::ca("not-a-ca");
        spec.ca = None;
        let inter = make(&spec, Some(&root));
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = authority(&root, &[], CertIdentity::default());
        let msg = reason(ca.verify_leaf(&leaf.der, std::slice::from_ref(&inter.der), T));
        assert_eq!(
            msg,
            "chain certificate CN=not-a-ca is not a CA certificate (no basicConstraints cA)"
        );
        // And as configuration it is refused outright.
        let err = CertAuthority::from_der(
            "a",
            vec![root.der.clone()],
            vec![inter.der.clone()],
            CertIdentity::default(),
        )
        .unwrap_err();
        assert!(
            err.contains("intermediate certificate #1 (CN=not-a-ca) is not a CA certificate"),
            "{err}"
        );
    }

    /// EKU: absent means any usage (Go), codeSigning or anyExtendedKeyUsage pass, anything
    /// else fails, on the leaf and on an intermediate alike.
    #[test]
    fn extended_key_usage() {
        let (root, inter) = pki();
        let ca = authority(&root, &[&inter], CertIdentity::default());
        for (eku, ok) in [
            (None, true),
            (Some(vec!["1.3.6.1.5.5.7.3.3"]), true),
            (Some(vec!["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.3"]), true),
            (Some(vec!["2.5.29.37.0"]), true),
            (Some(vec!["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]), false),
        ] {
            let mut spec = Spec::leaf(T);
            spec.eku = eku.clone();
            let leaf = make(&spec, Some(&inter));
            let got = ca.verify_leaf(&leaf.der, &[], T);
            assert_eq!(got.is_ok(), ok, "{eku:?}: {got:?}");
            if !ok {
                assert_eq!(
                    reason(got),
                    "extended key usage (serverAuth, clientAuth) does not allow code signing"
                );
            }
        }
        let mut spec = Spec::ca("tls-intermediate");
        spec.eku = Some(vec!["1.3.6.1.5.5.7.3.1"]);
        let tls = make(&spec, Some(&root));
        let leaf = make(&Spec::leaf(T), Some(&tls));
        let msg = reason(ca.verify_leaf(&leaf.der, std::slice::from_ref(&tls.der), T));
        assert_eq!(
            msg,
            "chain certificate CN=tls-intermediate does not allow code signing (extended key usage serverAuth)"
        );
    }

    /// keyUsage, when present, must include digitalSignature; a CA leaf is refused.
    #[test]
    fn key_usage_and_leaf_ca() {
        let (root, inter) = pki();
        let ca = authority(&root, &[&inter], CertIdentity::default());
        for (ku, ok) in [
            (None, true),
            (Some(0x80), true),
            (Some(0xc0), true),
            (Some(0x04), false),
            (Some(0x20), false),
        ] {
            let mut spec = Spec::leaf(T);
            spec.key_usage = ku;
            let leaf = make(&spec, Some(&inter));
            let got = ca.verify_leaf(&leaf.der, &[], T);
            assert_eq!(got.is_ok(), ok, "{ku:?}: {got:?}");
        }
        let mut spec = Spec::leaf(T);
        spec.key_usage = Some(0x04);
        let leaf = make(&spec, Some(&inter));
        assert_eq!(
            reason(ca.verify_leaf(&leaf.der, &[], T)),
            "key usage (keyCertSign) does not allow digital signatures"
        );
        let mut spec = Spec::leaf(T);
        spec.ca = Some(true);
        let leaf = make(&spec, Some(&inter));
        assert!(reason(ca.verify_leaf(&leaf.der, &[], T)).contains("is a CA certificate"));
        // basicConstraints cA false is an ordinary leaf.
        let mut spec = Spec::leaf(T);
        spec.ca = Some(false);
        let leaf = make(&spec, Some(&inter));
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
    }

    /// An unknown critical extension makes the leaf unusable (Go refuses it too); an unknown
    /// non-critical one is ignored.
    #[test]
    fn unknown_critical_extension() {
        let (root, inter) = pki();
        let ca = authority(&root, &[&inter], CertIdentity::default());
        let mut spec = Spec::leaf(T);
        spec.extra = vec![ext("1.2.3.4.5", false, utf8("x"))];
        assert!(
            ca.verify_leaf(&make(&spec, Some(&inter)).der, &[], T)
                .is_ok()
        );
        spec.extra = vec![ext("1.2.3.4.5", true, utf8("x"))];
        let msg = reason(ca.verify_leaf(&make(&spec, Some(&inter)).der, &[], T));
        assert!(
            msg.contains("critical extension that is not understood"),
            "{msg}"
        );
    }

    /// The subject matcher is tried against every SAN kind (email, URI, DNS, IP, Fulcio
    /// username); exact means equal, regex is unanchored; one match is enough.
    #[test]
    fn subject_matching() {
        let (root, inter) = pki();
        let mut spec = Spec::leaf(T);
        spec.sans = vec![
            San::Email("dev@example.com"),
            San::Uri("https://github.com/org/repo/.github/workflows/release.yml@refs/tags/v1"),
            San::Dns("build.example.com"),
            San::Ip([10, 0, 0, 1]),
            San::Username("alice"),
            San::OtherName("1.2.3.4", "not-an-identity"),
        ];
        let leaf = make(&spec, Some(&inter));
        let check = |m: Matcher| {
            let ca = authority(
                &root,
                &[&inter],
                CertIdentity {
                    subject: Some(m),
                    issuer: None,
                },
            );
            ca.verify_leaf(&leaf.der, &[], T)
        };
        let exact = |s: &str| Matcher::Exact(s.to_owned());
        let re = |s: &str| Matcher::Regex(regex::Regex::new(s).unwrap());
        for ok in [
            exact("dev@example.com"),
            exact("build.example.com"),
            exact("10.0.0.1"),
            exact("alice"),
            exact("https://github.com/org/repo/.github/workflows/release.yml@refs/tags/v1"),
            re("^https://github\\.com/org/"),
            re("@example\\.com$"),
            re("workflows/release"),
        ] {
            assert!(check(ok.clone()).is_ok(), "{ok}");
        }
        for bad in [
            exact("DEV@example.com"),
            exact("dev@example"),
            exact("not-an-identity"),
            re("^workflows/"),
            re("^https://github\\.com/other/"),
        ] {
            let msg = reason(check(bad.clone()));
            assert!(
                msg.starts_with("identities dev@example.com, https://github.com/org/repo/"),
                "{bad}: {msg}"
            );
            assert!(
                msg.ends_with(&format!("do not match subject {bad}")),
                "{msg}"
            );
        }
        let (_, summary) = check(exact("alice")).unwrap();
        assert_eq!(summary.subjects.len(), 5);
        assert_eq!(
            summary.to_string(),
            "dev@example.com, https://github.com/org/repo/.github/workflows/release.yml@refs/tags/v1, build.example.com, 10.0.0.1, alice (issuer https://issuer.example.com)"
        );
        // Many SANs: the message names the first five and counts the rest.
        let names: Vec<String> = (0..40).map(|i| format!("u{i}@example.com")).collect();
        let mut spec = Spec::leaf(T);
        spec.sans = names.iter().map(|n| San::Email(n)).collect();
        let many = make(&spec, Some(&inter));
        let ca = authority(
            &root,
            &[&inter],
            identity("x@y", "https://issuer.example.com"),
        );
        assert_eq!(
            reason(ca.verify_leaf(&many.der, &[], T)),
            "identities u0@example.com, u1@example.com, u2@example.com, u3@example.com, u4@example.com and 35 more do not match subject \"x@y\""
        );
        // No SAN at all, with a subject required.
        let mut spec = Spec::leaf(T);
        spec.subject = "no-san";
        spec.sans.clear();
        let leaf = make(&spec, Some(&inter));
        let ca = authority(
            &root,
            &[&inter],
            identity("x@y", "https://issuer.example.com"),
        );
        assert_eq!(
            reason(ca.verify_leaf(&leaf.der, &[], T)),
            "has no subject alternative name, but attestor test-ca requires subject \"x@y\""
        );
    }

    /// The OIDC issuer: v2 (DER UTF8String) is preferred over v1 (raw bytes); either alone
    /// works; a required issuer on a certificate without either fails; a malformed v2 fails.
    #[test]
    fn issuer_extensions() {
        let (root, inter) = pki();
        let ca = |issuer: Matcher| {
            authority(
                &root,
                &[&inter],
                CertIdentity {
                    subject: None,
                    issuer: Some(issuer),
                },
            )
        };
        let exact = |s: &str| Matcher::Exact(s.to_owned());
        let mut spec = Spec::leaf(T);
        spec.issuer_v1 = Some("https://v1.example.com");
        spec.issuer_v2 = Some(utf8("https://v2.example.com"));
        let both = make(&spec, Some(&inter));
        assert!(
            ca(exact("https://v2.example.com"))
                .verify_leaf(&both.der, &[], T)
                .is_ok()
        );
        assert_eq!(
            reason(ca(exact("https://v1.example.com")).verify_leaf(&both.der, &[], T)),
            "OIDC issuer https://v2.example.com does not match https://v1.example.com"
        );
        spec.issuer_v2 = None;
        let v1 = make(&spec, Some(&inter));
        assert!(
            ca(exact("https://v1.example.com"))
                .verify_leaf(&v1.der, &[], T)
                .is_ok()
        );
        spec.issuer_v1 = None;
        spec.issuer_v2 = Some(utf8("https://v2.example.com"));
        let v2 = make(&spec, Some(&inter));
        let re = Matcher::Regex(regex::Regex::new("^https://v2\\.").unwrap());
        assert!(ca(re).verify_leaf(&v2.der, &[], T).is_ok());

        spec.issuer_v2 = None;
        let none = make(&spec, Some(&inter));
        assert_eq!(
            reason(ca(exact("https://v1.example.com")).verify_leaf(&none.der, &[], T)),
            "has no OIDC issuer extension (1.3.6.1.4.1.57264.1.8 or 1.3.6.1.4.1.57264.1.1), but attestor test-ca requires issuer https://v1.example.com"
        );
        // No issuer required: fine, and the summary says none.
        let any = authority(&root, &[&inter], CertIdentity::default());
        assert_eq!(any.verify_leaf(&none.der, &[], T).unwrap().1.issuer, None);

        spec.issuer_v2 = Some(b"https://raw-bytes-not-der".to_vec());
        let bad = make(&spec, Some(&inter));
        let msg = reason(any.verify_leaf(&bad.der, &[], T));
        assert!(
            msg.starts_with(
                "OIDC issuer extension 1.3.6.1.4.1.57264.1.8 is not a DER UTF8String (unexpected ASN.1 DER tag"
            ),
            "{msg}"
        );
    }

    /// Loading: every certificate must parse and be a CA, at least one root is required; PEM
    /// errors name the part; bundles split into anchors and intermediates.
    #[test]
    fn loading_and_splitting() {
        let (root, inter) = pki();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let id = CertIdentity::default;
        let err = CertAuthority::from_der("a", vec![], vec![], id()).unwrap_err();
        assert_eq!(err, "attestor a: no root certificate configured");
        let err = CertAuthority::from_der("a", vec![b"junk".to_vec()], vec![], id()).unwrap_err();
        assert!(
            err.starts_with("attestor a: root certificate #1 is not a valid DER X.509 certificate"),
            "{err}"
        );
        let err = CertAuthority::from_der("a", vec![leaf.der.clone()], vec![], id()).unwrap_err();
        assert!(
            err.contains("root certificate #1 ((empty name)) is not a CA certificate"),
            "{err}"
        );
        let mut trailing = root.der.clone();
        trailing.push(0);
        assert!(CertAuthority::from_der("a", vec![trailing], vec![], id()).is_err());

        let bundle = format!("{}{}", inter.pem(), root.pem());
        let ca =
            CertAuthority::from_bundle_pem("fulcio", "chain.pem", bundle.as_bytes(), id()).unwrap();
        assert_eq!(ca.roots(), std::slice::from_ref(&root.der));
        assert_eq!(ca.intermediates(), std::slice::from_ref(&inter.der));
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
        let err =
            CertAuthority::from_bundle_pem("fulcio", "chain.pem", inter.pem().as_bytes(), id())
                .unwrap_err();
        assert!(err.contains("no self-signed root certificate"), "{err}");

        // from_pem: all of roots_pem are anchors (here the intermediate: trust anchored there).
        let ca = CertAuthority::from_pem("p", inter.pem().as_bytes(), None, id()).unwrap();
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
        let ca = CertAuthority::from_pem(
            "p",
            root.pem().as_bytes(),
            Some(inter.pem().as_bytes()),
            id(),
        )
        .unwrap();
        assert!(ca.verify_leaf(&leaf.der, &[], T).is_ok());
        let err = CertAuthority::from_named_pems(
            "p",
            ("/etc/roots.pem", root.pem().as_bytes()),
            Some(("/etc/inter.pem", leaf.pem().as_bytes())),
            id(),
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "attestor p: /etc/inter.pem: certificate #1 ((empty name)) is not a CA certificate"
            ),
            "{err}"
        );
        let err = CertAuthority::from_pem("p", b"", None, id()).unwrap_err();
        assert_eq!(err, "attestor p: roots: no CERTIFICATE block found");
        let err = CertAuthority::from_pem("p", root.pem().as_bytes(), Some(b"nothing"), id())
            .unwrap_err();
        assert_eq!(err, "attestor p: intermediates: no CERTIFICATE block found");
        let key = "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        let err = CertAuthority::from_pem("p", key.as_bytes(), None, id()).unwrap_err();
        assert!(
            err.contains("a PUBLIC KEY block where a CERTIFICATE was expected"),
            "{err}"
        );
        assert!(format!("{ca:?}").contains("CN=test-root"));
    }

    /// A signature's chain longer than the limit is refused before any path building.
    #[test]
    fn long_chains_are_refused() {
        let (root, inter) = pki();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = authority(&root, &[], CertIdentity::default());
        let chain = vec![inter.der.clone(); MAX_CHAIN_CERTIFICATES + 1];
        assert!(reason(ca.verify_leaf(&leaf.der, &chain, T)).contains("at most 8 are read"));
        let chain = vec![inter.der.clone(); MAX_CHAIN_CERTIFICATES];
        assert!(ca.verify_leaf(&leaf.der, &chain, T).is_ok());
    }

    /// Certificate text in messages is escaped and bounded.
    #[test]
    fn certificate_text_is_shown_safely() {
        let (root, inter) = pki();
        let mut spec = Spec::leaf(T);
        let evil = format!("evil\u{1b}[31m\n{}", "x".repeat(300));
        spec.sans = vec![San::Uri(&evil)];
        spec.issuer_v2 = Some(utf8(&evil));
        let leaf = make(&spec, Some(&inter));
        let ca = authority(&root, &[&inter], identity("a", "b"));
        let msg = reason(ca.verify_leaf(&leaf.der, &[], T));
        assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg}");
        assert!(msg.len() < 300, "{msg}");
    }

    /// Random corruption of the leaf and chain never panics.
    #[test]
    fn no_panic_on_noise() {
        let (root, inter) = pki();
        let leaf = make(&Spec::leaf(T), Some(&inter));
        let ca = authority(
            &root,
            &[],
            identity("dev@example.com", "https://issuer.example.com"),
        );
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..500 {
            let mut noisy = |s: &[u8]| {
                let mut v = s.to_vec();
                for _ in 0..(next() % 4) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                if next() % 6 == 0 {
                    v.truncate((next() as usize) % (v.len() + 1));
                }
                v
            };
            let l = noisy(&leaf.der);
            let c = vec![noisy(&inter.der)];
            let _ = ca.verify_leaf(&l, &c, T);
            let _ =
                CertAuthority::from_der("n", vec![noisy(&root.der)], c, CertIdentity::default());
        }
    }

    /// Unix times print as RFC 3339; out-of-range ones as numbers.
    #[test]
    fn time_text() {
        assert_eq!(rfc3339(1_674_247_893), "2023-01-20T20:51:33Z");
        assert_eq!(rfc3339(-5), "Unix time -5");
    }
}
