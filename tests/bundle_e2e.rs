//! cosign 3's formats end to end through the proxy: real cosign 3.1.1 signs and attests (new
//! bundle format and `--new-bundle-format=false`) images on a registry with the referrers API
//! and on docker-registry 2.8 (the referrers tag), real containerd (1.6, and 2.1 in test.sh's
//! matrix) pulls and runs them through cri-guard. What must not run is denied naming the reason
//! and is not in containerd's store; CreateContainer checks the same for images that reached
//! the node without cri-guard.

mod fakes;
mod guarded;
mod support;

use std::path::Path;

use cri_guard::cri;
use guarded::{Guarded, assert_denied};
use support::{BedOptions, Format, RegistryKind, TestBed};

const SPDX: &str = "https://spdx.dev/Document";

/// The policy: on both registries, `sig-*` needs a signature by the cosign key, `att-*` also an
/// SPDX attestation by it; the bed's pause image is skipped (named for containerd 2.x, which
/// does not report it).
fn rules(bed: &TestBed, cosign_pub: &Path) -> String {
    let (dist, refs) = (
        bed.registry_of(RegistryKind::Distribution).addr(),
        bed.registry_of(RegistryKind::Referrers).addr(),
    );
    format!(
        r#"
[sandbox]
image = "{pause}"

[[rules]]
name = "pause"
imageReferences = ["{pause_repo}"]
mode = "skip"

[[rules]]
name = "sig"
imageReferences = ["{dist}/sig-*", "{refs}/sig-*"]
[[rules.attestors]]
name = "cosign3"
key = "{key}"

[[rules]]
name = "att"
imageReferences = ["{dist}/att-*", "{refs}/att-*"]
[[rules.attestors]]
name = "cosign3"
key = "{key}"
[[rules.attestations]]
predicateType = "spdxjson"
"#,
        key = cosign_pub.display(),
        pause = bed.pause_image,
        // The repository: the runtime holds it by digest once pulled.
        pause_repo = bed.pause_image.rsplit_once(':').map_or("", |(r, _)| r)
    )
}

/// A guarded bed with the referrers registry and a cosign key the policy trusts.
async fn start() -> (Guarded, support::Cosign) {
    let mut signer = None;
    let g = Guarded::start_with(BedOptions::default().with_referrers_registry(), |bed, _| {
        let cosign = bed.cosign("release");
        let text = rules(bed, cosign.public_key_path());
        signer = Some(cosign);
        text
    })
    .await;
    (g, signer.expect("cosign key"))
}

fn kind_label(kind: RegistryKind) -> &'static str {
    match kind {
        RegistryKind::Distribution => "dist",
        RegistryKind::Referrers => "refs",
    }
}

fn format_label(format: Format) -> &'static str {
    match format {
        Format::New => "new",
        Format::Old => "old",
    }
}

/// Pushes `name:v1` to the registry of `kind`; returns (tag reference, digest reference).
fn push(g: &Guarded, kind: RegistryKind, name: &str) -> (String, String) {
    let (reference, digest) = g.bed.push_to(kind, name, "v1", Some(name));
    let at = g.bed.registry_of(kind).addr();
    (reference, format!("{at}/{name}@{digest}"))
}

/// {old, new format} x {referrers API, referrers tag} x {cosign sign, cosign sign + attest
/// --type spdxjson}: each image is pulled and run through cri-guard, with the decision the
/// verifier gives its reasons for.
#[tokio::test]
async fn cosign3_formats_pull_and_run() {
    let (g, cosign) = start().await;
    let sbom = support::cosign::write_spdx(g.bed.dir.path(), "sbom");
    for kind in [RegistryKind::Referrers, RegistryKind::Distribution] {
        for format in [Format::New, Format::Old] {
            let label = format!("{}-{}", kind_label(kind), format_label(format));
            let (sig_ref, sig_digest_ref) = push(&g, kind, &format!("sig-{label}"));
            cosign.sign(&sig_digest_ref, format);
            let (att_ref, att_digest_ref) = push(&g, kind, &format!("att-{label}"));
            cosign.sign(&att_digest_ref, format);
            cosign.attest(&att_digest_ref, "spdxjson", &sbom, format);
            for (image, reason) in [
                (&sig_ref, "signed by cosign3".to_string()),
                (&att_ref, format!("signed by cosign3; attested: {SPDX}")),
            ] {
                let d = g
                    .verifier
                    .check_image(image, "default", &Default::default())
                    .await;
                assert!(d.allowed, "{label}: {image}: {}", d.reason());
                assert_eq!(d.reason(), reason, "{label}: {image}");
                let pod = support::try_run_pod(&g.proxy.path, image, "default")
                    .await
                    .unwrap_or_else(|e| panic!("{label}: {image}: {e}"));
                assert!(!pod.container_id.is_empty());
                assert!(g.in_store(image).await, "{label}: {image}");
            }
        }
    }
    support::remove_all_pods(&g.bed.containerd_socket()).await;
}

/// Pushes a referrer of `subject` (digest) in `name` whose one layer, of the Sigstore bundle
/// media type, holds `layer`; on docker-registry 2.8 also lists it in the referrers tag, as
/// cosign would.
fn push_referrer(g: &Guarded, kind: RegistryKind, name: &str, subject: &str, layer: &[u8]) {
    let reg = g.bed.registry_of(kind);
    let addr = reg.addr();
    let config = support::sign::push_blob(addr, None, name, b"{}");
    let layer_digest = support::sign::push_blob(addr, None, name, layer);
    let (subject_type, subject_bytes) = reg.manifest(name, subject).expect("subject manifest");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": config},
        "layers": [{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                    "size": layer.len(), "digest": layer_digest}],
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
        "subject": {"mediaType": subject_type, "size": subject_bytes.len(), "digest": subject},
    });
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = format!(
        "sha256:{}",
        support::util::sha256_hex(&body).expect("sha256")
    );
    support::sign::push_manifest(
        addr,
        None,
        name,
        &digest,
        "application/vnd.oci.image.manifest.v1+json",
        &body,
    );
    if kind == RegistryKind::Distribution {
        let tag = subject.replace(':', "-");
        let mut index = reg.manifest_json(name, &tag).unwrap_or_else(|| {
            serde_json::json!({"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        });
        index["manifests"].as_array_mut().unwrap().push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "size": body.len(), "digest": digest,
                "artifactType": "application/vnd.oci.empty.v1+json"}),
        );
        support::sign::push_manifest(
            addr,
            None,
            name,
            &tag,
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&index).unwrap(),
        );
    }
}

/// The bundle layer of the first referrer of `digest` in `name` (cosign 3's signature).
fn first_bundle(g: &Guarded, kind: RegistryKind, name: &str, digest: &str) -> Vec<u8> {
    let reg = g.bed.registry_of(kind);
    let listing = match reg.referrers(name, digest) {
        Ok(index) => index,
        Err(_) => reg
            .manifest_json(name, &digest.replace(':', "-"))
            .expect("referrers tag"),
    };
    let m = listing["manifests"][0]["digest"]
        .as_str()
        .expect("a referrer");
    let manifest = reg.manifest_json(name, m).expect("referrer manifest");
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
    reg.blob(name, layer).expect("bundle")
}

/// What must not run, on both registries: a bundle by a key the policy does not trust, a
/// bundle whose statement names another image (attached to this one), a new-format image
/// without the required attestation or with one of another type, and a referrer whose bundle
/// layer is not a bundle. Each pull is denied naming why, and the image is not in the store.
#[tokio::test]
async fn cosign3_negatives_are_denied() {
    let (g, cosign) = start().await;
    let stranger = g.bed.cosign("stranger");
    let sbom = support::cosign::write_spdx(g.bed.dir.path(), "sbom");
    for kind in [RegistryKind::Referrers, RegistryKind::Distribution] {
        let k = kind_label(kind);

        let (image, digest_ref) = push(&g, kind, &format!("sig-{k}-stranger"));
        stranger.sign(&digest_ref, Format::New);
        assert_denied(
            g.pull(&image, "default").await,
            &image,
            "no valid signature: bundle signature does not verify with key cosign3",
        );
        assert!(!g.in_store(&image).await, "{image}");

        // A genuine bundle for image A, attached to image B.
        let name_a = format!("sig-{k}-a");
        let (_, a_ref) = push(&g, kind, &name_a);
        cosign.sign(&a_ref, Format::New);
        let a_digest = a_ref.rsplit_once('@').unwrap().1.to_owned();
        let bundle = first_bundle(&g, kind, &name_a, &a_digest);
        let name_b = format!("sig-{k}-b");
        let (image, b_ref) = push(&g, kind, &name_b);
        let b_digest = b_ref.rsplit_once('@').unwrap().1.to_owned();
        push_referrer(&g, kind, &name_b, &b_digest, &bundle);
        assert_denied(
            g.pull(&image, "default").await,
            &image,
            &format!(
                "bundle statement subject does not include the digest {b_digest} (it names {}",
                &a_digest[..19]
            ),
        );
        assert!(!g.in_store(&image).await, "{image}");

        let (image, digest_ref) = push(&g, kind, &format!("att-{k}-missing"));
        cosign.sign(&digest_ref, Format::New);
        assert_denied(
            g.pull(&image, "default").await,
            &image,
            &format!("missing attestation {SPDX}"),
        );
        assert!(!g.in_store(&image).await, "{image}");

        let (image, digest_ref) = push(&g, kind, &format!("att-{k}-cyclonedx"));
        cosign.sign(&digest_ref, Format::New);
        cosign.attest(&digest_ref, "cyclonedx", &sbom, Format::New);
        assert_denied(
            g.pull(&image, "default").await,
            &image,
            &format!("missing attestation {SPDX}"),
        );
        let d = g
            .verifier
            .check_image(&image, "default", &Default::default())
            .await;
        assert!(
            d.attestations()
                .iter()
                .any(|f| f.predicate_type == "https://cyclonedx.org/bom" && !f.accepted),
            "{:?}",
            d.attestations()
        );
        assert!(!g.in_store(&image).await, "{image}");

        let name = format!("sig-{k}-garbage");
        let (image, digest_ref) = push(&g, kind, &name);
        let digest = digest_ref.rsplit_once('@').unwrap().1.to_owned();
        push_referrer(&g, kind, &name, &digest, b"{\"mediaType\":\"no bundle\"}");
        assert_denied(
            g.pull(&image, "default").await,
            &image,
            "no valid signature: not a Sigstore bundle cri-guard can read",
        );
        assert!(!g.in_store(&image).await, "{image}");
    }
}

/// Pulls `image` straight from containerd (bypassing cri-guard); returns the image id.
async fn pull_direct(bed: &TestBed, image: &str) -> String {
    cri::image_client(bed.containerd_socket())
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("direct pull")
        .into_inner()
        .image_ref
}

/// CreateContainer checks the same for images that reached the node without cri-guard: an
/// image signed and attested in the new format runs; one whose required attestation is
/// missing does not (and containerd creates no container for it).
#[tokio::test]
async fn create_container_checks_bundles() {
    let (g, cosign) = start().await;
    let sbom = support::cosign::write_spdx(g.bed.dir.path(), "sbom");
    let kind = RegistryKind::Referrers;
    let (good, good_ref) = push(&g, kind, "att-create-good");
    cosign.sign(&good_ref, Format::New);
    cosign.attest(&good_ref, "spdxjson", &sbom, Format::New);
    let (bad, bad_ref) = push(&g, kind, "att-create-bad");
    cosign.sign(&bad_ref, Format::New);

    let mut runtime = cri::runtime_client(&g.proxy.path);
    for (image, allowed) in [(&good, true), (&bad, false)] {
        let id = pull_direct(&g.bed, image).await;
        let sandbox = support::sandbox_config(&support::unique_name("c"), "default");
        let sandbox_id = runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("sandbox")
            .into_inner()
            .pod_sandbox_id;
        let mut config =
            support::container_config(&support::unique_name("ctr"), &id, &["sleep", "3600"]);
        config.image.as_mut().unwrap().user_specified_image = image.clone();
        let created = runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id,
                config: Some(config),
                sandbox_config: Some(sandbox),
            })
            .await;
        match (allowed, created) {
            (true, Ok(_)) => {}
            (false, Err(e)) => {
                assert_eq!(e.code(), tonic::Code::Unknown, "{e:?}");
                assert!(
                    e.message().contains(&format!("missing attestation {SPDX}")),
                    "{}",
                    e.message()
                );
            }
            (want, got) => panic!("{image}: allowed={want}, got {got:?}"),
        }
    }
    let containers = cri::runtime_client(g.bed.containerd_socket())
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        containers.len(),
        1,
        "only the good image's container exists"
    );
    support::remove_all_pods(&g.bed.containerd_socket()).await;
}
