//! Rekor public keys ([`RekorKeys`]), indexed the way Rekor v1 names its logs: logID =
//! hex(SHA-256(DER SubjectPublicKeyInfo)). Tag-based signatures' legacy Rekor bundles are
//! checked against them (`tag::rekor_bundle`); for Sigstore bundles they become the tlogs of
//! an attestor's trust material (`trust::transparency`).

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::keys::{KeyError, PublicKey, parse_pem_keys};
use crate::verify::cosign::hex;

/// Rekor public keys for checking legacy `dev.sigstore.cosign/bundle` annotations offline,
/// indexed by logID = hex(sha256(DER SubjectPublicKeyInfo)).
#[derive(Debug, Clone, Default)]
pub struct RekorKeys {
    by_log_id: BTreeMap<String, PublicKey>,
}

impl RekorKeys {
    /// Loads Rekor keys from PEM texts; a PEM may hold several `PUBLIC KEY` blocks (e.g. the
    /// keys of several log shards). Messages call them `Rekor key`, `Rekor key #2`, ...; use
    /// [`RekorKeys::from_named_pems`] to name them. An empty set is allowed: every bundle then
    /// fails as "not a trusted log", which is fail-closed.
    pub fn from_pems<P: AsRef<[u8]>>(
        pems: impl IntoIterator<Item = P>,
    ) -> Result<RekorKeys, KeyError> {
        let mut keys = RekorKeys::default();
        for (i, pem) in pems.into_iter().enumerate() {
            let name = match i {
                0 => "Rekor key".to_owned(),
                _ => format!("Rekor key #{}", i + 1),
            };
            keys.add(&name, pem.as_ref())?;
        }
        Ok(keys)
    }

    /// Like [`RekorKeys::from_pems`], with the operator's name for each PEM.
    pub fn from_named_pems<'a>(
        pems: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<RekorKeys, KeyError> {
        let mut keys = RekorKeys::default();
        for (name, pem) in pems {
            keys.add(name, pem)?;
        }
        Ok(keys)
    }

    /// From DER SubjectPublicKeyInfos with the operator's name for each (e.g. the `tlogs` of a
    /// sigstore trusted root).
    pub fn from_spki_ders<'a>(
        ders: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<RekorKeys, KeyError> {
        let mut keys = RekorKeys::default();
        for (name, der) in ders {
            let key = PublicKey::from_spki_der(name, der)?;
            keys.by_log_id
                .insert(hex(&Sha256::digest(key.spki_der())), key);
        }
        Ok(keys)
    }

    fn add(&mut self, name: &str, pem: &[u8]) -> Result<(), KeyError> {
        for key in parse_pem_keys(name, pem)? {
            self.by_log_id
                .insert(hex(&Sha256::digest(key.spki_der())), key);
        }
        Ok(())
    }

    /// The logIDs (lowercase hex) of the loaded keys.
    pub fn log_ids(&self) -> impl Iterator<Item = &str> {
        self.by_log_id.keys().map(String::as_str)
    }

    /// The key of the log with this logID (lowercase hex).
    pub(crate) fn by_log_id(&self, log_id: &str) -> Option<&PublicKey> {
        self.by_log_id.get(log_id)
    }

    /// The loaded keys (e.g. to hand them to a Sigstore bundle verifier).
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.by_log_id.values()
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.by_log_id.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.by_log_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::cosign::tag::rekor_bundle::tests::FakeLog;

    /// logIDs are hex sha256 of the key's DER, and several keys per PEM are all loaded.
    #[test]
    fn log_ids() {
        let a = FakeLog::new();
        let b = FakeLog::new();
        let both = format!("{}{}", a.pem, b.pem);
        let keys = RekorKeys::from_named_pems([("shards", both.as_bytes())]).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.log_ids().any(|id| id == a.log_id()));
        assert!(keys.log_ids().all(|id| id.len() == 64));
        assert!(RekorKeys::from_pems::<&[u8]>([]).unwrap().is_empty());
        // The unnamed form, as a config loader calls it.
        let one = RekorKeys::from_pems([a.pem.as_bytes()]).unwrap();
        assert_eq!(one.log_ids().collect::<Vec<_>>(), [a.log_id().as_str()]);
        let err = RekorKeys::from_pems([&b"junk"[..]]).unwrap_err();
        assert!(
            err.to_string().starts_with("key Rekor key: not a PEM"),
            "{err}"
        );
    }
}
