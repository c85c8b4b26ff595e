//! Trust material and identity checks that tag-based attachments and Sigstore bundles share:
//! public keys, certificate authorities (chains at a time, key usage, identity), sigstore
//! trusted roots, Rekor log keys, and an attestor's transparency material for bundles.

pub mod certificates;
pub mod keys;
pub mod rekor_keys;
pub mod transparency;
pub mod trusted_root;
