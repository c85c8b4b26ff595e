//! How a payload's `critical.identity.docker-reference` must relate to the image, like
//! containers-policy.json's `signedIdentity`. sigstore 0.15 does no such check at all, so
//! without this a signature copied from another repository verifies.
//!
//! Both sides are normalized by `oci_client::Reference` (`busybox` is
//! `docker.io/library/busybox`). Parsing adds `:latest` to a reference without tag or digest,
//! which would make cosign's tag-less docker-reference look tagged, so whether the *signed*
//! reference has a tag is read from its text.

use oci_client::Reference;

use super::signature::{Expected, Failure};
use crate::verify::cosign::shown;

/// How the payload's docker-reference must relate to the image (like containers-policy.json's
/// `signedIdentity`). Names are compared normalized: `registry/repository`, e.g.
/// `docker.io/library/busybox`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Same registry and repository; tags are ignored. The default, and what cosign's
    /// tag-less docker-references mean.
    #[default]
    Repository,
    /// Same registry and repository, and if the signed reference has a tag, the image must
    /// have been requested with that same tag. A signed reference without tag matches by
    /// repository. An image requested by digest only (`repo@sha256:..`) matches a tagged
    /// signature by repository: the digest is already pinned by the payload's signed digest,
    /// and refusing would make digest pinning of tag-signed images impossible (this is
    /// containers/image's `matchRepoDigestOrExact`). A signed reference that carries a digest
    /// must carry the image's digest.
    Exact,
    /// For mirrors: if the image's `registry/repository` equals `prefix` or starts with
    /// `prefix` + `/`, that prefix is replaced by `signed_prefix` before an [`Exact`] match;
    /// otherwise the name is matched unchanged (containers/image's `remapIdentity`). Prefixes
    /// are normalized names without a trailing `/`, e.g. `mirror.local/dockerhub` and
    /// `docker.io`.
    ///
    /// [`Exact`]: IdentityMatch::Exact
    RemapPrefix {
        /// Prefix of the image's name as pulled (e.g. the mirror).
        prefix: String,
        /// What that prefix is in the signed name (e.g. the upstream registry).
        signed_prefix: String,
    },
    /// Any docker-reference is accepted (the key alone decides).
    Any,
}

/// The tag written in a reference's text, if any: after the last `:` of the last path
/// component, once any `@digest` is cut off (`host:5000/repo` has none).
pub(crate) fn explicit_tag(reference: &str) -> Option<&str> {
    let name = reference.split('@').next().unwrap_or(reference);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map(|(_, tag)| tag)
}

fn name_of(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// Checks the signed docker-reference against the image.
pub(super) fn check(signed: &str, expected: &Expected<'_>) -> Result<(), Failure> {
    let (prefix, signed_prefix) = match expected.identity {
        IdentityMatch::Any => return Ok(()),
        IdentityMatch::RemapPrefix {
            prefix,
            signed_prefix,
        } => (Some(prefix.as_str()), Some(signed_prefix.as_str())),
        IdentityMatch::Repository | IdentityMatch::Exact => (None, None),
    };
    let parsed = Reference::try_from(signed).map_err(|_| Failure::InvalidSignedReference {
        reference: shown(signed),
    })?;
    let signed_name = name_of(&parsed);
    let image = expected.reference;
    let pulled_name = name_of(image);

    if matches!(expected.identity, IdentityMatch::Repository) {
        if signed_name != pulled_name {
            return Err(Failure::IdentityMismatch {
                signed: signed_name,
                image: pulled_name,
            });
        }
        return Ok(());
    }

    // Exact, or RemapPrefix followed by Exact.
    let mut image_name = pulled_name.clone();
    let mut remapped = false;
    if let (Some(prefix), Some(signed_prefix)) = (prefix, signed_prefix) {
        let rest = pulled_name
            .strip_prefix(prefix)
            .filter(|rest| !prefix.is_empty() && (rest.is_empty() || rest.starts_with('/')));
        if let Some(rest) = rest {
            image_name = format!("{signed_prefix}{rest}");
            remapped = true;
        }
    }
    let signed_tag = explicit_tag(signed);
    let with_tag = |name: &str, tag: Option<&str>| match tag {
        Some(t) => format!("{name}:{t}"),
        None => name.to_owned(),
    };
    let image_shown = |tag: Option<&str>| {
        let s = with_tag(&image_name, tag);
        if remapped {
            format!("{s} (remapped from {pulled_name})")
        } else {
            s
        }
    };
    if signed_name != image_name {
        return Err(Failure::IdentityMismatch {
            signed: with_tag(&signed_name, signed_tag),
            image: image_shown(image.tag()),
        });
    }
    if let (Some(signed_tag), Some(image_tag)) = (signed_tag, image.tag()) {
        if signed_tag != image_tag {
            return Err(Failure::IdentityMismatch {
                signed: with_tag(&signed_name, Some(signed_tag)),
                image: image_shown(Some(image_tag)),
            });
        }
    }
    if let Some(signed_digest) = parsed.digest() {
        if signed_digest != expected.digest {
            return Err(Failure::IdentityMismatch {
                signed: format!("{signed_name}@{signed_digest}"),
                image: format!("{image_name}@{}", shown(expected.digest)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn check_with(signed: &str, image: &str, identity: IdentityMatch) -> Result<(), Failure> {
        let reference: Reference = image.parse().unwrap();
        check(
            signed,
            &Expected {
                digest: D,
                reference: &reference,
                identity: &identity,
            },
        )
    }

    /// Text-level tag detection ignores registry ports and digests.
    #[test]
    fn explicit_tags() {
        assert_eq!(explicit_tag("host:5000/repo"), None);
        assert_eq!(explicit_tag("host:5000/repo:v1"), Some("v1"));
        assert_eq!(explicit_tag("repo@sha256:abc"), None);
        assert_eq!(explicit_tag("repo:t@sha256:abc"), Some("t"));
        assert_eq!(explicit_tag("busybox"), None);
    }

    /// Repository ignores tags on both sides and normalizes Docker Hub names.
    #[test]
    fn repository_match() {
        let r = IdentityMatch::Repository;
        assert!(check_with("busybox", "docker.io/library/busybox:1.36", r.clone()).is_ok());
        assert!(check_with("index.docker.io/library/busybox:old", "busybox", r.clone()).is_ok());
        let err = check_with(
            "registry.example.com/other",
            "registry.example.com/app:v1",
            r,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "signed for registry.example.com/other, not registry.example.com/app"
        );
    }

    /// Exact compares tags when both have one; a tag-less signature matches by repository;
    /// a digest-only image matches a tagged signature.
    #[test]
    fn exact_match() {
        let e = IdentityMatch::Exact;
        assert!(check_with("r.io/app:v1", "r.io/app:v1", e.clone()).is_ok());
        assert!(check_with("r.io/app", "r.io/app:v2", e.clone()).is_ok());
        assert!(check_with("r.io/app:v1", &format!("r.io/app@{D}"), e.clone()).is_ok());
        let err = check_with("r.io/app:v1", "r.io/app:v2", e.clone()).unwrap_err();
        assert_eq!(err.to_string(), "signed for r.io/app:v1, not r.io/app:v2");
        // Implicit latest on the image side is a tag.
        assert!(check_with("r.io/app:v1", "r.io/app", e.clone()).is_err());
        assert!(check_with("r.io/other:v1", "r.io/app:v1", e.clone()).is_err());
        // A signed digest must be the image's digest.
        assert!(check_with(&format!("r.io/app@{D}"), "r.io/app:v1", e.clone()).is_ok());
        let other = format!("r.io/app@sha256:{}", "2".repeat(64));
        assert!(check_with(&other, "r.io/app:v1", e).is_err());
    }

    /// RemapPrefix maps a mirror's names onto the signed names at a path boundary only.
    #[test]
    fn remap_prefix() {
        let m = IdentityMatch::RemapPrefix {
            prefix: "mirror.local/hub".into(),
            signed_prefix: "docker.io".into(),
        };
        assert!(
            check_with(
                "docker.io/library/nginx",
                "mirror.local/hub/library/nginx:1",
                m.clone()
            )
            .is_ok()
        );
        let err = check_with(
            "docker.io/library/nginx",
            "mirror.local/hubx/library/nginx:1",
            m.clone(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("mirror.local/hubx/library/nginx"),
            "{err}"
        );
        // Not under the prefix: matched as is.
        assert!(check_with("quay.io/a/b", "quay.io/a/b:1", m.clone()).is_ok());
        let err = check_with(
            "docker.io/library/redis",
            "mirror.local/hub/library/nginx:1",
            m,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("remapped from mirror.local/hub/library/nginx"),
            "{err}"
        );
    }

    /// Any accepts every reference, even an invalid one; other modes reject invalid ones.
    #[test]
    fn any_and_invalid() {
        assert!(check_with("NOT A REF", "r.io/app", IdentityMatch::Any).is_ok());
        let err = check_with("NOT A REF", "r.io/app", IdentityMatch::Repository).unwrap_err();
        assert!(
            matches!(err, Failure::InvalidSignedReference { .. }),
            "{err}"
        );
        assert!(check_with("", "r.io/app", IdentityMatch::Exact).is_err());
    }
}
