//! Shared setup of the verification tests: a bed, a signing key, a policy, and the proxy with
//! the verifier in front of the bed's containerd; plus pull/lookup helpers and the denial check.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cri_guard::cri;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;

use crate::fakes::TestProxy;
use crate::support;
use crate::support::TestBed;
use crate::support::sign::{self, TestKey};

/// A bed, a key, a policy and a proxy with the verifier in front of the bed's containerd.
pub struct Guarded {
    pub bed: TestBed,
    pub key: TestKey,
    pub proxy: TestProxy,
    pub verifier: Verifier,
    pub policy_path: PathBuf,
}

/// The policy text for `bed`: `rules` (TOML) after a header that reads containerd's certs.d.
pub fn policy_text(bed: &TestBed, rules: &str) -> String {
    format!(
        "default = \"enforce\"\nhostsDir = \"{}\"\n{rules}",
        bed.containerd.certs_dir().display()
    )
}

/// A rule for every image of the bed's registry, enforced with `key_path`.
pub fn enforce_rule(bed: &TestBed, key_path: &Path) -> String {
    format!(
        "[[rules]]\nname = \"bed\"\nimageReferences = [\"{}/*\"]\n[[rules.attestors]]\nname = \"test-key\"\nkey = \"{}\"\n",
        bed.registry.addr(),
        key_path.display()
    )
}

pub fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Guarded {
    pub async fn start(rules: impl FnOnce(&TestBed, &Path) -> String) -> Guarded {
        Guarded::start_with(support::BedOptions::default(), rules).await
    }

    /// `start` on a bed with `options` (e.g. containerd 2.1, the referrers registry).
    pub async fn start_with(
        options: support::BedOptions,
        rules: impl FnOnce(&TestBed, &Path) -> String,
    ) -> Guarded {
        let bed = TestBed::start_with(options).await;
        let key = TestKey::p256();
        let key_path = key.write_public(bed.dir.path(), "test-key");
        let text = policy_text(&bed, &rules(&bed, &key_path));
        let policy_path = write_policy(bed.dir.path(), &text);
        let policy = Policy::load(&policy_path).expect("valid policy");
        let verifier = Verifier::new(policy, Some(bed.containerd_socket())).unwrap();
        let proxy = TestProxy::start(
            &bed.dir.path().join("guard.sock"),
            &bed.containerd_socket(),
            Arc::new(verifier.clone()),
        );
        Guarded {
            bed,
            key,
            proxy,
            verifier,
            policy_path,
        }
    }

    /// Pushes `name:tag` and signs it with the policy's key; returns (reference, digest).
    pub fn push_signed(&self, name: &str, tag: &str) -> (String, String) {
        let (r, d) = self.bed.registry.push(name, tag, None);
        sign::sign_image(self.bed.registry.addr(), None, name, &d, &self.key);
        (r, d)
    }

    pub async fn pull(&self, image: &str, namespace: &str) -> Result<String, tonic::Status> {
        pull_via(&self.proxy.path, image, namespace, None).await
    }

    /// Whether containerd has `image` (asked directly, not through the proxy).
    pub async fn in_store(&self, image: &str) -> bool {
        in_store(&self.bed.containerd_socket(), image).await
    }
}

pub async fn pull_via(
    socket: &Path,
    image: &str,
    namespace: &str,
    auth: Option<cri::AuthConfig>,
) -> Result<String, tonic::Status> {
    cri::image_client(socket)
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: Some(support::sandbox_config(
                &support::unique_name("p"),
                namespace,
            )),
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

pub async fn in_store(socket: &Path, image: &str) -> bool {
    cri::image_client(socket)
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .is_some()
}

/// Asserts a kubelet-readable signature denial naming `image` and containing `reason`.
pub fn assert_denied(result: Result<String, tonic::Status>, image: &str, reason: &str) {
    let err = result.expect_err("pull must be denied");
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    let prefix = format!("SignatureValidationFailed: {image}: ");
    assert!(
        err.message().starts_with(&prefix),
        "{:?} does not start with {prefix:?}",
        err.message()
    );
    assert!(
        err.message().contains(reason),
        "{:?} does not say {reason:?}",
        err.message()
    );
}
