//! PLACEHOLDER: sigstore trusted_root.json loading is being written on branch `x509`.
#![allow(dead_code, unused_variables)]

use super::{CertAuthority, CertIdentity, RekorKeys};

#[derive(Debug, Clone)]
pub struct TrustedRoot {
    roots: Vec<Vec<u8>>,
    intermediates: Vec<Vec<u8>>,
    rekor: RekorKeys,
}

impl TrustedRoot {
    pub fn from_json(name: &str, bytes: &[u8]) -> Result<TrustedRoot, String> {
        Err(format!("{name}: trusted_root.json is not supported yet"))
    }
    pub fn authority(&self, name: &str, identity: CertIdentity) -> CertAuthority {
        CertAuthority::from_der(
            name,
            self.roots.clone(),
            self.intermediates.clone(),
            identity,
        )
        .unwrap_or_else(|_| unreachable!())
    }
    pub fn rekor_keys(&self) -> RekorKeys {
        self.rekor.clone()
    }
}
