//! CreateContainer is guarded too (invariant I2): images that reached the node without cri-guard
//! (pulled straight from containerd's socket, `ctr import`ed, pulled under an older policy or
//! for another namespace) cannot run unless they pass the policy now. Real containerd and
//! registry per test; the check is on what containerd actually created.

mod fakes;
mod guarded;
mod support;

use std::path::Path;
use std::sync::Arc;

use cri_guard::cri;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;
use fakes::TestProxy;
use guarded::*;
use support::sign::{self, TestKey};
use support::{Registry, TestBed};

/// Pulls `image` straight from containerd (bypassing cri-guard); returns the image id.
async fn pull_direct(bed: &TestBed, image: &str, auth: Option<cri::AuthConfig>) -> String {
    cri::image_client(bed.containerd_socket())
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config: None,
        })
        .await
        .expect("direct pull")
        .into_inner()
        .image_ref
}

/// A pod sandbox in `namespace`, created straight on containerd.
async fn sandbox(bed: &TestBed, namespace: &str) -> (String, cri::PodSandboxConfig) {
    let config = support::sandbox_config(&support::unique_name("c"), namespace);
    let id = cri::runtime_client(bed.containerd_socket())
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("sandbox")
        .into_inner()
        .pod_sandbox_id;
    (id, config)
}

/// CreateContainer through `socket` the way the kubelet sends it: the image id, plus the name.
async fn create_via(
    socket: &Path,
    pod: &(String, cri::PodSandboxConfig),
    image_id: &str,
    name: &str,
) -> Result<String, tonic::Status> {
    let mut config = support::container_config(
        &support::unique_name("ctr"),
        image_id,
        &["/bin/sleep", "3600"],
    );
    config.image.as_mut().unwrap().user_specified_image = name.into();
    cri::runtime_client(socket)
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// How many containers containerd has.
async fn containers(bed: &TestBed) -> usize {
    cri::runtime_client(bed.containerd_socket())
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .len()
}

fn assert_create_denied(result: Result<String, tonic::Status>, image: &str, reason: &str) {
    let err = result.expect_err("CreateContainer must be denied");
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.message()
            .starts_with(&format!("SignatureValidationFailed: {image}: ")),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(reason),
        "{:?} does not say {reason:?}",
        err.message()
    );
}

/// An unsigned image pulled straight from containerd's socket can't be run through cri-guard:
/// CreateContainer is denied and containerd has no container.
#[tokio::test]
async fn unsigned_image_on_node_cannot_run() {
    let g = Guarded::start(enforce_rule).await;
    let (image, _) = g.bed.registry.push("sneaky", "v1", None);
    let id = pull_direct(&g.bed, &image, None).await;
    let pod = sandbox(&g.bed, "default").await;
    assert_create_denied(
        create_via(&g.proxy.path, &pod, &id, &image).await,
        &image,
        "no signature found",
    );
    assert_eq!(
        containers(&g.bed).await,
        0,
        "a container was created from an unverified image"
    );
}

/// An image imported with `ctr image import` has no registry digest in containerd (1.6 records
/// none), so it carries no signature: denied, unless a `skip` rule covers one of its names.
#[tokio::test]
async fn ctr_imported_image() {
    let g = Guarded::start(|bed, key| {
        format!(
            "[[rules]]\nname = \"local-skip\"\nimageReferences = [\"{r}/local/trusted:*\"]\nmode = \"skip\"\n{}",
            enforce_rule(bed, key),
            r = bed.registry.addr()
        )
    })
    .await;
    let reg = g.bed.registry.addr().to_string();
    let archive = g.bed.dir.path().join("image.tar");
    let layout = support::image::layout().dir.join("oci");
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .output()
        .unwrap();
    assert!(tar.status.success(), "{tar:?}");
    let import = |name: &str| {
        g.bed.ctr_import(&archive, &format!("{reg}/{name}"));
    };
    let pod = sandbox(&g.bed, "default").await;
    let untrusted = format!("{reg}/local/untrusted:base");
    let trusted = format!("{reg}/local/trusted:base");
    import("local/untrusted");
    assert_create_denied(
        create_via(&g.proxy.path, &pod, &untrusted, &untrusted).await,
        &untrusted,
        "has no registry digest",
    );
    assert_eq!(containers(&g.bed).await, 0);

    // The same content imported under a name a `skip` rule trusts: allowed under that name, and,
    // since the runtime now lists that name for this image (same image id), under the other
    // name too (docs/policy.md, "CreateContainer").
    import("local/trusted");
    create_via(&g.proxy.path, &pod, &trusted, &trusted)
        .await
        .expect("skip rule allows the imported image");
    create_via(&g.proxy.path, &pod, &untrusted, &untrusted)
        .await
        .expect("same content, trusted repository");
    assert_eq!(containers(&g.bed).await, 2);
}

/// A signed image pre-pulled straight from containerd runs through cri-guard; the second
/// container from it is a cache hit (one verification in all).
#[tokio::test]
async fn signed_prepulled_image_runs_and_is_cached() {
    let g = Guarded::start(enforce_rule).await;
    let (image, _) = g.push_signed("prepulled", "v1");
    let id = pull_direct(&g.bed, &image, None).await;
    let pod = sandbox(&g.bed, "default").await;
    create_via(&g.proxy.path, &pod, &id, &image)
        .await
        .expect("signed image runs");
    create_via(&g.proxy.path, &pod, &id, &image)
        .await
        .expect("again");
    assert_eq!(containers(&g.bed).await, 2);
    let (hits, _, verifications) = g.verifier.stats();
    assert_eq!((verifications, hits), (1, 1));
}

/// An image pulled while its rule was `audit` can't run once the policy says `enforce`: a policy
/// reload drops every cached decision and the image is checked again at creation.
#[tokio::test]
async fn audit_then_enforce_rechecks_existing_images() {
    let g = Guarded::start(|bed, key| {
        enforce_rule(bed, key).replace("name = \"bed\"", "name = \"bed\"\nmode = \"audit\"")
    })
    .await;
    let (image, _) = g.bed.registry.push("legacy", "v1", None);
    let id = g
        .pull(&image, "default")
        .await
        .expect("audit allows the pull");
    let pod = sandbox(&g.bed, "default").await;
    create_via(&g.proxy.path, &pod, &id, &image)
        .await
        .expect("audit allows the container");

    let enforcing = std::fs::read_to_string(&g.policy_path)
        .unwrap()
        .replace("mode = \"audit\"\n", "");
    std::fs::write(&g.policy_path, enforcing).unwrap();
    g.verifier
        .reload(Policy::load(&g.policy_path).unwrap())
        .unwrap();
    assert_create_denied(
        create_via(&g.proxy.path, &pod, &id, &image).await,
        &image,
        "no signature found",
    );
    assert_eq!(containers(&g.bed).await, 1);
}

/// An image allowed for namespace `a` is refused for a pod in `b`, although it is on the node.
#[tokio::test]
async fn namespace_scoping_on_create() {
    let g = Guarded::start(|bed, _| {
        format!("[[rules]]\nname = \"only-a\"\nimageReferences = [\"{}/*\"]\nnamespaces = [\"a\"]\nmode = \"skip\"\n", bed.registry.addr())
    })
    .await;
    let (image, _) = g.bed.registry.push("for-a", "v1", None);
    let id = g.pull(&image, "a").await.expect("pulled for namespace a");
    let pod_b = sandbox(&g.bed, "b").await;
    assert_create_denied(
        create_via(&g.proxy.path, &pod_b, &id, &image).await,
        &image,
        "in namespace b",
    );
    assert_eq!(containers(&g.bed).await, 0);
    let pod_a = sandbox(&g.bed, "a").await;
    create_via(&g.proxy.path, &pod_a, &id, &image)
        .await
        .expect("allowed in namespace a");
}

/// A private-registry image on the node, checked by a freshly started cri-guard (no credentials
/// remembered from a pull): the node's docker config.json credentials are used; without them
/// the check can't fetch the signature and the container is refused.
#[tokio::test]
async fn private_registry_uses_node_credentials() {
    const USER: &str = "bob";
    const PASSWORD: &str = "node-secret-42";
    let bed = TestBed::start().await;
    let private = Registry::with_htpasswd(&bed.dir.path().join("private"), USER, PASSWORD);
    bed.containerd.trust_registry(private.addr());
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "ci");
    let (image, digest) = private.push("app", "v1", None);
    sign::sign_image(private.addr(), Some((USER, PASSWORD)), "app", &digest, &key);
    let auth = cri::AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let id = pull_direct(&bed, &image, Some(auth)).await;
    let pod = sandbox(&bed, "default").await;

    let creds = bed.dir.path().join("config.json");
    std::fs::write(
        &creds,
        serde_json::json!({ "auths": { private.addr(): { "auth": support::util::base64(format!("{USER}:{PASSWORD}").as_bytes()) } } }).to_string(),
    )
    .unwrap();
    for (with_creds, sock) in [(false, "g1.sock"), (true, "g2.sock")] {
        let mut text = format!(
            "hostsDir = \"{}\"\n[[rules]]\nname = \"private\"\nimageReferences = [\"{}/*\"]\n[[rules.attestors]]\nname = \"ci\"\nkey = \"{}\"\n",
            bed.containerd.certs_dir().display(),
            private.addr(),
            key_path.display()
        );
        if with_creds {
            text = format!("nodeCredentials = \"{}\"\n{text}", creds.display());
        }
        let policy = Policy::parse("test", &text, bed.dir.path()).unwrap();
        let verifier = Verifier::new(policy, Some(bed.containerd_socket())).unwrap();
        let proxy = TestProxy::start(
            &bed.dir.path().join(sock),
            &bed.containerd_socket(),
            Arc::new(verifier),
        );
        let result = create_via(&proxy.path, &pod, &id, &image).await;
        if with_creds {
            result.expect("node credentials let the signature be fetched");
        } else {
            assert_create_denied(result, &image, "credentials");
        }
    }
}

/// The sandbox (pause) image the runtime pulls by itself is checked against the policy: denied
/// without a rule for it, allowed with a skip rule.
#[tokio::test]
async fn sandbox_image_is_checked() {
    // containerd 2.x no longer reports the sandbox image in the verbose Status info
    // (`config.sandboxImage`; it moved to the `io.containerd.cri.v1.images` plugin's
    // `pinned_images.sandbox`), where `Verifier::check_sandbox_image` reads it.
    if support::skip_on_containerd(
        support::ContainerdVersion::V2_1,
        "check_sandbox_image reads Status info config.sandboxImage, which containerd 2.1 lacks",
    ) {
        return;
    }
    let g = Guarded::start(enforce_rule).await;
    let d = g
        .verifier
        .check_sandbox_image()
        .await
        .expect("containerd reports its sandbox image");
    assert_eq!(d.image, g.bed.pause_image);
    assert!(!d.allowed, "{d:?}");
    // The skip rule goes first: rules match in order.
    let with_skip = std::fs::read_to_string(&g.policy_path).unwrap().replacen(
        "[[rules]]",
        &format!(
            "[[rules]]\nname = \"pause\"\nimageReferences = [\"{}\"]\nmode = \"skip\"\n\n[[rules]]",
            g.bed.pause_image
        ),
        1,
    );
    g.verifier
        .reload(Policy::parse("test", &with_skip, g.bed.dir.path()).unwrap())
        .unwrap();
    let d = g.verifier.check_sandbox_image().await.unwrap();
    assert!(d.allowed && d.rule == "pause", "{d:?}");
}

/// A rule's required attestations also hold at CreateContainer: a signed image without the
/// SBOM, pulled straight from containerd, can't be run; the same kind of image with a signed
/// SBOM can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_requires_attestations() {
    const SPDX: &str = "https://spdx.dev/Document";
    let g = Guarded::start(|bed, key| {
        format!(
            "{}[[rules.attestations]]\npredicateType = \"spdxjson\"\n",
            enforce_rule(bed, key)
        )
    })
    .await;
    let reg = g.bed.registry.addr().to_string();
    let pod = sandbox(&g.bed, "default").await;

    let (bare, _) = g.push_signed("no-sbom", "v1");
    let id = pull_direct(&g.bed, &bare, None).await;
    assert_create_denied(
        create_via(&g.proxy.path, &pod, &id, &bare).await,
        &bare,
        SPDX,
    );
    assert_eq!(containers(&g.bed).await, 0);

    let (attested, d) = g.bed.registry.push("with-sbom", "v1", Some("with-sbom"));
    sign::sign_image(&reg, None, "with-sbom", &d, &g.key);
    let sbom = serde_json::json!({ "spdxVersion": "SPDX-2.3", "name": "with-sbom" });
    sign::attest_image(&reg, "with-sbom", &d, &[(&g.key, SPDX, sbom)]);
    let id = pull_direct(&g.bed, &attested, None).await;
    create_via(&g.proxy.path, &pod, &id, &attested)
        .await
        .expect("an image with its signed SBOM runs");
    assert_eq!(containers(&g.bed).await, 1);
}
