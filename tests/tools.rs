//! The real tools of the test bed, proven on both registry kinds: cosign 3.1.1 signs and attests
//! in its new bundle format and in the old `.sig`/`.att` format, the results land where design.md
//! section 5 says (referrers API on the referrers registry, the `sha256-<hex>` fallback index on
//! docker-registry 2.8, `.sig`/`.att` tags for the old format), `cosign verify` accepts each and
//! refuses another key, crane reads and copies, and containerd pulls from both registries.

mod support;

use support::cosign::{Cosign, Crane, Format, write_spdx};
use support::registry::{Registry, RegistryKind};
use support::{BedOptions, TestBed, run_pod, util};

const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const SPDX_PREDICATE: &str = "https://spdx.dev/Document";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A registry of `kind` and a cosign key pair in a temp dir (no containerd needed).
struct Env {
    registry: Registry,
    cosign: Cosign,
    dir: tempfile::TempDir,
}

fn env(kind: RegistryKind) -> Env {
    let dir = util::short_tempdir("cgt");
    let registry = Registry::start_kind(kind, &dir.path().join("reg"));
    let cosign = Cosign::generate(&dir.path().join("cosign"));
    Env {
        registry,
        cosign,
        dir,
    }
}

impl Env {
    /// Pushes a fresh image variant `name:v1`; returns (digest reference, digest).
    fn image(&self, name: &str) -> (String, String) {
        let (_, digest) = self.registry.push(name, "v1", Some(name));
        (format!("{}/{name}@{digest}", self.registry.addr()), digest)
    }
}

/// The referrer manifests of `name@digest` as (manifest digest, manifest JSON), read through
/// the referrers API or the fallback tag.
fn referrer_manifests(
    registry: &Registry,
    name: &str,
    digest: &str,
    index: &serde_json::Value,
) -> Vec<(String, serde_json::Value)> {
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("no manifests in {index}"))
        .iter()
        .map(|d| {
            let md = d["digest"].as_str().unwrap().to_string();
            let m = registry
                .manifest_json(name, &md)
                .unwrap_or_else(|| panic!("referrer {md} of {name}@{digest} not in the registry"));
            (md, m)
        })
        .collect()
}

/// Checks that `manifests` are exactly one cosign signature bundle and one SPDX attestation
/// bundle about `digest`, each an artifact manifest whose single layer is a v0.3 bundle.
fn assert_bundles(
    registry: &Registry,
    name: &str,
    digest: &str,
    manifests: &[(String, serde_json::Value)],
) {
    let mut predicates: Vec<&str> = Vec::new();
    for (md, m) in manifests {
        assert_eq!(m["artifactType"], BUNDLE_V03, "{md}: {m}");
        assert_eq!(m["subject"]["digest"], digest, "{md}: subject: {m}");
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{md}: {m}");
        assert_eq!(layers[0]["mediaType"], BUNDLE_V03, "{md}: {m}");
        assert_eq!(
            m["annotations"]["dev.sigstore.bundle.content"], "dsse-envelope",
            "{md}: {m}"
        );
        let layer = registry
            .blob(name, layers[0]["digest"].as_str().unwrap())
            .expect("bundle layer blob");
        let bundle: serde_json::Value = serde_json::from_slice(&layer).unwrap();
        assert_eq!(bundle["mediaType"], BUNDLE_V03);
        assert!(
            bundle["dsseEnvelope"]["signatures"][0]["sig"].is_string(),
            "{bundle}"
        );
        predicates.push(
            m["annotations"]["dev.sigstore.bundle.predicateType"]
                .as_str()
                .unwrap(),
        );
    }
    predicates.sort();
    assert_eq!(
        predicates,
        [SIGN_PREDICATE, SPDX_PREDICATE],
        "{manifests:?}"
    );
}

/// Signs and attests `image` in the new format with `env`'s key.
fn sign_and_attest(env: &Env, image: &str, format: Format) {
    let sbom = write_spdx(env.dir.path(), "sbom");
    env.cosign.sign(image, format);
    env.cosign.attest(image, "spdxjson", &sbom, format);
}

/// Verification passes with the signing key and fails with another key (or for another image).
fn assert_verifies_only_with_its_key(env: &Env, image: &str, unsigned: &str) {
    let out = env.cosign.verify(image).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.contains(SIGN_PREDICATE) || out.contains("docker-manifest-digest"),
        "{out}"
    );
    env.cosign
        .verify_attestation(image, "spdxjson")
        .unwrap_or_else(|e| panic!("{e}"));
    let other = Cosign::generate(&env.dir.path().join("other"));
    let e = other
        .verify(image)
        .expect_err("another key must not verify");
    assert!(e.contains("exit status"), "{e}");
    other
        .verify_attestation(image, "spdxjson")
        .expect_err("another key must not verify the attestation");
    env.cosign
        .verify(unsigned)
        .expect_err("an unsigned image must not verify");
}

/// cosign 3's default format on a registry with the referrers API: both bundles are listed by
/// `GET /v2/<name>/referrers/<digest>`, no tag is added, and cosign verifies them.
#[test]
fn new_format_on_referrers_registry_is_listed_by_the_referrers_api() {
    let env = env(RegistryKind::Referrers);
    let (image, digest) = env.image("new/refapi");
    let (unsigned, _) = env.image("new/unsigned");
    sign_and_attest(&env, &image, Format::New);

    let index = env
        .registry
        .referrers("new/refapi", &digest)
        .expect("the referrers API answers");
    assert_eq!(index["mediaType"], OCI_INDEX);
    let manifests = referrer_manifests(&env.registry, "new/refapi", &digest, &index);
    assert_eq!(manifests.len(), 2, "{index}");
    assert_bundles(&env.registry, "new/refapi", &digest, &manifests);
    assert_eq!(
        env.registry.tags("new/refapi"),
        ["v1"],
        "no fallback tag with the API"
    );
    assert_verifies_only_with_its_key(&env, &image, &unsigned);
}

/// cosign 3's default format on docker-registry 2.8 (no referrers API: 404): the fallback tag
/// `sha256-<hex>` holds an OCI index naming both bundles, and cosign verifies them.
#[test]
fn new_format_on_docker_registry_uses_the_fallback_tag() {
    let env = env(RegistryKind::Distribution);
    let (image, digest) = env.image("new/fallback");
    let (unsigned, _) = env.image("new/unsigned");
    sign_and_attest(&env, &image, Format::New);

    assert_eq!(
        env.registry.referrers("new/fallback", &digest).err(),
        Some(404)
    );
    let tag = digest.replace(':', "-");
    assert_eq!(
        env.registry.tags("new/fallback"),
        [tag.clone(), "v1".into()]
    );
    let (media, body) = env.registry.manifest("new/fallback", &tag).unwrap();
    assert_eq!(media, OCI_INDEX);
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let manifests = referrer_manifests(&env.registry, "new/fallback", &digest, &index);
    assert_eq!(manifests.len(), 2, "{index}");
    assert_bundles(&env.registry, "new/fallback", &digest, &manifests);
    assert_verifies_only_with_its_key(&env, &image, &unsigned);
}

/// The old format (`--new-bundle-format=false`) makes the `.sig` and `.att` tags on both
/// registry kinds, with no referrer, and cosign 3 verifies them.
#[test]
fn old_format_makes_sig_and_att_tags_on_both_kinds() {
    for kind in RegistryKind::ALL {
        let env = env(kind);
        let (image, digest) = env.image("old/tags");
        let (unsigned, _) = env.image("old/unsigned");
        sign_and_attest(&env, &image, Format::Old);

        let base = digest.replace(':', "-");
        assert_eq!(
            env.registry.tags("old/tags"),
            [format!("{base}.att"), format!("{base}.sig"), "v1".into()],
            "{kind:?}"
        );
        let sig = env
            .registry
            .manifest_json("old/tags", &format!("{base}.sig"))
            .unwrap();
        assert_eq!(
            sig["layers"][0]["mediaType"], "application/vnd.dev.cosign.simplesigning.v1+json",
            "{kind:?}: {sig}"
        );
        assert!(
            sig["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"].is_string(),
            "{sig}"
        );
        assert!(sig.get("subject").is_none(), "{sig}");
        let att = env
            .registry
            .manifest_json("old/tags", &format!("{base}.att"))
            .unwrap();
        assert_eq!(
            att["layers"][0]["mediaType"], "application/vnd.dsse.envelope.v1+json",
            "{kind:?}: {att}"
        );
        assert_eq!(
            att["layers"][0]["annotations"]["predicateType"],
            SPDX_PREDICATE
        );
        match env.registry.referrers("old/tags", &digest) {
            Ok(index) => assert_eq!(index["manifests"], serde_json::json!([]), "{index}"),
            Err(status) => assert_eq!(status, 404, "{kind:?}"),
        }
        assert_verifies_only_with_its_key(&env, &image, &unsigned);
    }
}

/// crane lists the same tags as the registry API, and `crane copy` moves an image between the
/// two registry kinds with its digest unchanged (but not its signature: cosign finds none).
#[test]
fn crane_lists_and_copies_between_kinds() {
    let dir = util::short_tempdir("cgt");
    let dist = Registry::start_kind(RegistryKind::Distribution, &dir.path().join("dist"));
    let refs = Registry::start_kind(RegistryKind::Referrers, &dir.path().join("refs"));
    let cosign = Cosign::generate(&dir.path().join("cosign"));
    let crane = Crane::new(&dir.path().join("crane"));
    let (_, digest) = dist.push("copy/app", "v1", Some("copy"));
    let src = format!("{}/copy/app@{digest}", dist.addr());
    cosign.sign(&src, Format::New);
    assert_eq!(
        crane.ls(&format!("{}/copy/app", dist.addr())),
        dist.tags("copy/app")
    );
    assert_eq!(
        crane.digest(&format!("{}/copy/app:v1", dist.addr())),
        digest
    );
    let dst = format!("{}/copy/app:v1", refs.addr());
    crane.copy(&src, &dst);
    assert_eq!(
        refs.manifest_digest("copy/app", "v1").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(crane.manifest(&dst)["schemaVersion"], 2);
    cosign.verify(&src).unwrap_or_else(|e| panic!("{e}"));
    cosign
        .verify(&format!("{}/copy/app@{digest}", refs.addr()))
        .expect_err("the copy has no signature");
}

/// The bed's containerd (whichever `CRI_GUARD_CONTAINERD` picks) pulls and runs images from
/// both registry kinds, signed by cosign in the new format.
#[tokio::test]
async fn bed_runs_images_from_both_registry_kinds() {
    let bed = TestBed::start_with(BedOptions::default().with_referrers_registry()).await;
    let cosign = bed.cosign("k");
    for kind in RegistryKind::ALL {
        let (reference, digest) = bed.push_to(kind, "both/app", "v1", Some("both"));
        let by_digest = format!("{}/both/app@{digest}", bed.registry_of(kind).addr());
        cosign.sign(&by_digest, Format::New);
        let pod = run_pod(&bed.containerd_socket(), &reference, "default").await;
        assert!(pod.image_id.starts_with("sha256:"), "{pod:?}");
    }
}
