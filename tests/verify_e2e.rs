//! Signature verification on PullImage, end to end: a real containerd and registry per test, the
//! proxy with the verifier in front, images signed in the test (sigstore crate, cosign format).
//! Every denial is checked twice: the kubelet-facing status, and the image absent from containerd.

mod fakes;
mod guarded;
mod support;

use cri_guard::cri;
use cri_guard::registry::Auth;
use guarded::*;
use support::sign::{self, Layer, TestKey};

/// A signed image pulls; an unsigned one is denied with "no signature found" and is not in
/// containerd's store.
#[tokio::test]
async fn signed_pulls_unsigned_denied() {
    let g = Guarded::start(enforce_rule).await;
    let (signed, _) = g.push_signed("app", "v1");
    let (unsigned, _) = g.bed.registry.push("other", "v1", None);

    let id = g
        .pull(&signed, "default")
        .await
        .expect("signed image must pull");
    assert!(id.starts_with("sha256:"));
    assert!(g.in_store(&signed).await);

    assert_denied(
        g.pull(&unsigned, "default").await,
        &unsigned,
        "no signature found",
    );
    assert!(
        !g.in_store(&unsigned).await,
        "a denied image reached containerd"
    );
}

/// Wrong key, tampered payload, wrong digest and wrong repository are each denied with their
/// own reason, and none of the images reaches containerd.
#[tokio::test]
async fn bad_signatures_denied_with_reasons() {
    let g = Guarded::start(enforce_rule).await;
    let reg = g.bed.registry.addr().to_string();
    let other_key = TestKey::p256();

    // Signed by a key the policy doesn't trust.
    let (wrong_key, d) = g.bed.registry.push("wrongkey", "v1", None);
    sign::sign_image(&reg, None, "wrongkey", &d, &other_key);
    // Signature over one payload, stored with another (tampered).
    let (tampered, d) = g.bed.registry.push("tampered", "v1", None);
    let mut layer = Layer::signed(&g.key, sign::payload(&format!("{reg}/tampered"), &d));
    layer.payload = sign::payload(&format!("{reg}/tampered-x"), &d);
    sign::push_signature(&reg, None, "tampered", &d, &[layer]);
    // A genuine signature for another digest, copied to this image's signature tag.
    let (wrong_digest, d) = g.bed.registry.push("wrongdigest", "v1", Some("x"));
    let (_, other_d) = g.bed.registry.push("wrongdigest", "v0", None);
    let layer = Layer::signed(
        &g.key,
        sign::payload(&format!("{reg}/wrongdigest"), &other_d),
    );
    sign::push_signature(&reg, None, "wrongdigest", &d, &[layer]);
    // A genuine signature made for another repository, copied here.
    let (wrong_repo, d) = g.bed.registry.push("wrongrepo", "v1", None);
    let layer = Layer::signed(&g.key, sign::payload(&format!("{reg}/somewhere-else"), &d));
    sign::push_signature(&reg, None, "wrongrepo", &d, &[layer]);
    // A signature manifest whose only layer is not a cosign signature.
    let (not_sig, d) = g.bed.registry.push("notsig", "v1", None);
    let mut layer = Layer::signed(&g.key, sign::payload(&format!("{reg}/notsig"), &d));
    layer.media_type = "text/plain".into();
    sign::push_signature(&reg, None, "notsig", &d, &[layer]);

    for (image, reason) in [
        (&wrong_key, "test-key"),
        (&tampered, "test-key"),
        (&wrong_digest, &other_d[..20]),
        (&wrong_repo, "somewhere-else"),
        (&not_sig, "text/plain"),
    ] {
        assert_denied(g.pull(image, "default").await, image, reason);
        assert!(!g.in_store(image).await, "{image} reached containerd");
    }
}

/// With `count = 2` of two attestors, one signature is not enough; both are.
#[tokio::test]
async fn threshold_of_attestors() {
    let second = TestKey::p256();
    let second_pem = second.public_pem.clone();
    let g = Guarded::start(move |bed, key| {
        format!(
            "[[rules]]\nname = \"two\"\nimageReferences = [\"{}/*\"]\ncount = 2\n\
             [[rules.attestors]]\nname = \"first\"\nkey = \"{}\"\n\
             [[rules.attestors]]\nname = \"second\"\nkeyData = \"\"\"{second_pem}\"\"\"\n",
            bed.registry.addr(),
            key.display()
        )
    })
    .await;
    let reg = g.bed.registry.addr().to_string();
    let (one, _) = g.push_signed("one", "v1");
    assert_denied(
        g.pull(&one, "default").await,
        &one,
        "signed by 1 of the 2 required attestors (first); not signed by second",
    );
    assert!(!g.in_store(&one).await);

    let (both, d) = g.bed.registry.push("both", "v1", None);
    let p = sign::payload(&format!("{reg}/both"), &d);
    sign::push_signature(
        &reg,
        None,
        "both",
        &d,
        &[Layer::signed(&g.key, p.clone()), Layer::signed(&second, p)],
    );
    g.pull(&both, "default")
        .await
        .expect("both attestors signed");
}

/// Audit mode lets an unsigned image through; a skip rule trusts it; the default denies the rest.
#[tokio::test]
async fn audit_and_skip_rules() {
    let g = Guarded::start(|bed, key| {
        format!(
            "[[rules]]\nname = \"audited\"\nimageReferences = [\"{r}/audited\"]\nmode = \"audit\"\n\
             [[rules.attestors]]\nname = \"k\"\nkey = \"{k}\"\n\
             [[rules]]\nname = \"trusted\"\nimageReferences = [\"{r}/trusted:*\"]\nmode = \"skip\"\n",
            r = bed.registry.addr(),
            k = key.display()
        )
    })
    .await;
    let (audited, _) = g.bed.registry.push("audited", "v1", None);
    let (trusted, _) = g.bed.registry.push("trusted", "v1", None);
    let (unmatched, _) = g.bed.registry.push("unmatched", "v1", None);
    g.pull(&audited, "default")
        .await
        .expect("audit mode allows");
    assert!(g.in_store(&audited).await);
    g.pull(&trusted, "default").await.expect("skip rule allows");
    assert_denied(
        g.pull(&unmatched, "default").await,
        &unmatched,
        "no policy rule matches",
    );
    assert!(!g.in_store(&unmatched).await);
}

/// A rule scoped to namespace `a` allows the image there and not in `b`.
#[tokio::test]
async fn namespace_scoping() {
    let g = Guarded::start(|bed, _| {
        format!(
            "[[rules]]\nname = \"only-a\"\nimageReferences = [\"{}/*\"]\nnamespaces = [\"a\"]\nmode = \"skip\"\n",
            bed.registry.addr()
        )
    })
    .await;
    let (image, _) = g.bed.registry.push("scoped", "v1", None);
    assert_denied(g.pull(&image, "b").await, &image, "in namespace b");
    assert!(!g.in_store(&image).await);
    g.pull(&image, "a").await.expect("allowed in namespace a");
}

/// A digest reference is verified as is (no tag resolution) and pulls.
#[tokio::test]
async fn digest_reference() {
    let g = Guarded::start(enforce_rule).await;
    let (_, d) = g.push_signed("bydigest", "v1");
    let image = format!("{}/bydigest@{d}", g.bed.registry.addr());
    g.pull(&image, "default")
        .await
        .expect("signed digest pulls");
    assert!(g.in_store(&image).await);
}

/// A multi-arch index whose digest is signed pulls by tag (containerd picks the platform's
/// manifest; the signed index digest is what is recorded).
#[tokio::test]
async fn multi_arch_index() {
    let g = Guarded::start(enforce_rule).await;
    let reg = g.bed.registry.addr().to_string();
    let (_, child) = g.bed.registry.push("multi", "single", None);
    let manifest = support::util::http(
        &reg,
        "GET",
        &format!("/v2/multi/manifests/{child}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    )
    .unwrap();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let index = |note: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                { "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": child, "size": manifest.body.len(),
                  "platform": { "architecture": arch, "os": "linux" } },
            ],
            "annotations": { "note": note },
        }))
        .unwrap()
    };
    let media = "application/vnd.oci.image.index.v1+json";
    // Only the platform manifest is signed, not the index the tag points to: denied.
    sign::sign_image(&reg, None, "multi", &child, &g.key);
    let unsigned_index = sign::push_manifest(&reg, None, "multi", "v1", media, &index("unsigned"));
    let image = format!("{reg}/multi:v1");
    assert_denied(
        g.pull(&image, "default").await,
        &image,
        &unsigned_index.replace(':', "-"),
    );
    assert!(!g.in_store(&image).await);
    // A signed index: pulls, and containerd records the index digest.
    let signed_index = sign::push_manifest(&reg, None, "multi", "v2", media, &index("signed"));
    sign::sign_image(&reg, None, "multi", &signed_index, &g.key);
    let image = format!("{reg}/multi:v2");
    g.pull(&image, "default").await.expect("signed index pulls");
    assert!(g.in_store(&format!("{reg}/multi@{signed_index}")).await);
    assert!(g.in_store(&image).await);
}

/// Invariant I1: the tag moves to an unsigned digest after cri-guard resolved it (its resolution
/// is cached) but before containerd pulls: containerd's stored digest is checked, the image is
/// removed and the pull denied. When the tag moves to another signed digest, the pull is allowed.
#[tokio::test]
async fn tag_moves_during_pull() {
    let g = Guarded::start(enforce_rule).await;
    let reg = g.bed.registry.addr().to_string();
    let (image, d1) = g.push_signed("moving", "v1");
    g.pull(&image, "default").await.expect("first pull");
    // Make containerd pull again: drop its copy.
    cri::image_client(g.bed.containerd_socket())
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    // The tag now points at an unsigned image; cri-guard still has v1 -> d1 cached.
    let (_, d2) = g.bed.registry.push("moving", "v1", Some("evil"));
    assert_ne!(d1, d2);
    assert_denied(
        g.pull(&image, "default").await,
        &image,
        &format!("the runtime stored {d2}"),
    );
    assert!(
        !g.in_store(&format!("{reg}/moving@{d2}")).await,
        "the unverified digest stayed in containerd"
    );
    assert!(!g.in_store(&image).await);

    // The tag moves again, to a signed image: allowed although the cached resolution is stale.
    let (_, d3) = g.bed.registry.push("moving", "v1", Some("good"));
    sign::sign_image(&reg, None, "moving", &d3, &g.key);
    g.pull(&image, "default")
        .await
        .expect("moved to a signed digest");
    assert!(g.in_store(&format!("{reg}/moving@{d3}")).await);
}

/// 200 concurrent decisions on one unverified digest run exactly one verification, and all agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_verification() {
    let g = Guarded::start(enforce_rule).await;
    let (_, d) = g.push_signed("popular", "v1");
    let image = format!("{}/popular@{d}", g.bed.registry.addr());
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (v, image) = (g.verifier.clone(), image.clone());
        tasks.push(tokio::spawn(async move {
            v.check_image(&image, "default", &Auth::Anonymous)
                .await
                .allowed
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    let (_, _, verifications) = g.verifier.stats();
    assert_eq!(verifications, 1);
}
