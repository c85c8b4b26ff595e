//! The bypasses of issue 10 that need a runtime, against a real containerd and registry: what a
//! socket peer claims (namespace, image name) or a registry serves (different digests to
//! cri-guard and to containerd) must not get an unverified image run. Each test checks what
//! containerd actually holds or created.

mod fakes;
mod front;
mod guarded;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cri_guard::cri;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;
use fakes::TestProxy;
use front::{Action, Front, Gate};
use guarded::*;
use support::TestBed;
use support::sign::{self, Layer, TestKey};

/// A pod sandbox in `namespace`, created straight on containerd.
async fn sandbox(bed: &TestBed, namespace: &str) -> (String, cri::PodSandboxConfig) {
    let config = support::sandbox_config(&support::unique_name("b"), namespace);
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

/// CreateContainer through `socket` for sandbox `sandbox_id`, with `claimed` as the request's
/// sandbox config, `image` in `image.image` and `name` in `user_specified_image`.
async fn create_via(
    socket: &Path,
    sandbox_id: &str,
    claimed: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
) -> Result<String, tonic::Status> {
    let mut config =
        support::container_config(&support::unique_name("c"), image, &["/bin/sleep", "3600"]);
    config.image.as_mut().unwrap().user_specified_image = name.into();
    cri::runtime_client(socket)
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(claimed.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

async fn containers(bed: &TestBed) -> usize {
    cri::runtime_client(bed.containerd_socket())
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .len()
}

async fn sandboxes(bed: &TestBed) -> usize {
    cri::runtime_client(bed.containerd_socket())
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .len()
}

/// The image id containerd holds for `image` now (asked directly).
async fn image_id(bed: &TestBed, image: &str) -> Option<String> {
    cri::image_client(bed.containerd_socket())
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
        .map(|i| i.id)
}

fn assert_signature_denial(err: &tonic::Status, reason: &str) {
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.message().starts_with("SignatureValidationFailed: "),
        "{:?}",
        err.message()
    );
    assert!(
        err.message().contains(reason),
        "{:?} does not say {reason:?}",
        err.message()
    );
}

/// Item 1: a CreateContainer naming an image by tag is forwarded pinned to the image cri-guard
/// checked. The registry serves the signed digest to cri-guard and an unsigned one to
/// containerd; a PullImage of the tag lands between the create's check and its forwarding (the
/// front holds the registry answers that pace it). containerd must create the container from
/// the checked (signed) image, not from what the tag names by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_pinned_to_the_checked_image() {
    let bed = TestBed::start().await;
    let front = Front::start(Some(bed.registry.addr()), front::pass).await;
    bed.containerd.trust_registry(&front.addr);
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "k");
    let reg = front.addr.clone();
    let (_, signed) = bed.registry.push("app", "v1", None);
    let layer = Layer::signed(&key, sign::payload(&format!("{reg}/app"), &signed));
    sign::push_signature(bed.registry.addr(), None, "app", &signed, &[layer]);
    let (_, unsigned) = bed.registry.push("app", "evil", Some("evil"));
    // Two rules with the same key: the create (namespace a) and the pull (namespace b) are
    // decided under different rules, so their checks are not one shared verification.
    let rule = |name: &str, ns: &str| {
        format!(
            "[[rules]]\nname = \"{name}\"\nimageReferences = [\"{reg}/*\"]\nnamespaces = [\"{ns}\"]\n[[rules.attestors]]\nname = \"k\"\nkey = \"{}\"\n",
            key_path.display()
        )
    };
    let text = policy_text(&bed, &format!("{}{}", rule("ns-a", "a"), rule("ns-b", "b")));
    let policy = Policy::parse("test", &text, bed.dir.path()).unwrap();
    let verifier = Verifier::new(policy, Some(bed.containerd_socket())).unwrap();
    let proxy = TestProxy::start(
        &bed.dir.path().join("g.sock"),
        &bed.containerd_socket(),
        Arc::new(verifier),
    );
    let image = format!("{reg}/app:v1");
    let signed_id = pull_via(&proxy.path, &image, "b", None)
        .await
        .expect("the signed image is pulled");
    let pod = sandbox(&bed, "a").await;

    // From now on the tag names the unsigned image for containerd only; cri-guard's first
    // signature fetch for the signed digest and every one for the unsigned digest wait.
    let (hold_signed, hold_unsigned) = (Gate::new(), Gate::new());
    let (hs, hu) = (hold_signed.clone(), hold_unsigned.clone());
    let first = AtomicUsize::new(0);
    let (tag_path, unsigned_path) = (
        "/v2/app/manifests/v1".to_string(),
        format!("/v2/app/manifests/{unsigned}"),
    );
    let signed_sig = format!("/v2/app/manifests/{}.sig", signed.replace(':', "-"));
    let unsigned_sig = format!("/v2/app/manifests/{}.sig", unsigned.replace(':', "-"));
    front.set(move |r| {
        if r.is_containerd() && r.path == tag_path {
            Action::Forward(unsigned_path.clone())
        } else if r.path == signed_sig && first.fetch_add(1, Ordering::SeqCst) == 0 {
            Action::Hold(hs.clone(), r.path.clone())
        } else if r.path == unsigned_sig {
            Action::Hold(hu.clone(), r.path.clone())
        } else {
            Action::Forward(r.path.clone())
        }
    });
    let create = {
        let (sock, image, pod) = (proxy.path.clone(), image.clone(), pod.clone());
        tokio::spawn(async move { create_via(&sock, &pod.0, &pod.1, &image, &image).await })
    };
    assert!(
        hold_signed.reached(Duration::from_secs(20)).await,
        "the create's check never fetched the signature"
    );
    let pull = {
        let (sock, image) = (proxy.path.clone(), image.clone());
        tokio::spawn(async move { pull_via(&sock, &image, "b", None).await })
    };
    assert!(
        hold_unsigned.reached(Duration::from_secs(30)).await,
        "the pull never reached its confirmation"
    );
    let now = image_id(&bed, &image)
        .await
        .expect("the tag is in the store");
    assert_ne!(
        now, signed_id,
        "containerd did not store the unsigned image"
    );

    // The create's check finishes (the signed image passed) and the create is forwarded.
    hold_signed.open();
    let container = create.await.unwrap().expect("the checked image may run");
    let status = cri::runtime_client(bed.containerd_socket())
        .container_status(cri::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    // containerd 1.6 reports a repo digest of the container's image here: look its id up.
    assert_eq!(
        image_id(&bed, &status.image_ref).await.as_deref(),
        Some(signed_id.as_str()),
        "containerd created the container from {} instead of the checked image",
        status.image_ref
    );
    hold_unsigned.open();
    let err = pull
        .await
        .unwrap()
        .expect_err("the unsigned pull is denied");
    assert_signature_denial(&err, &unsigned);
}

/// Item 2: the namespace a CreateContainer claims in its sandbox config is not trusted; the
/// runtime's record of the sandbox decides. A container for a pod in `default` claiming
/// `kube-system` (where a skip rule applies) is refused, and containerd has no container.
#[tokio::test]
async fn claimed_namespace_is_not_trusted() {
    let g = Guarded::start(|bed, key| {
        format!(
            "[[rules]]\nname = \"system\"\nimageReferences = [\"{}/*\"]\nnamespaces = [\"kube-system\"]\nmode = \"skip\"\n{}",
            bed.registry.addr(),
            enforce_rule(bed, key)
        )
    })
    .await;
    let (image, _) = g.bed.registry.push("tool", "v1", None);
    let id = cri::image_client(g.bed.containerd_socket())
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    let (pod, _) = sandbox(&g.bed, "default").await;
    let claim = support::sandbox_config("fake", "kube-system");
    let err = create_via(&g.proxy.path, &pod, &claim, &id, &image)
        .await
        .expect_err("the claimed namespace must not apply");
    assert_signature_denial(&err, "no signature found");
    assert_eq!(containers(&g.bed).await, 0);
    // The real kube-system sandbox gets the skip rule.
    let (system, config) = sandbox(&g.bed, "kube-system").await;
    create_via(&g.proxy.path, &system, &config, &id, &image)
        .await
        .expect("skip rule in kube-system");
}

/// Item 2: `user_specified_image` selects a rule only if the runtime holds that name for the
/// image. An imported image (no registry digest) claiming the pause image's name does not get
/// the pause skip rule.
#[tokio::test]
async fn claimed_name_must_be_held_by_the_runtime() {
    let g = Guarded::start(|bed, key| {
        format!(
            "[[rules]]\nname = \"pause\"\nimageReferences = [\"{}\"]\nmode = \"skip\"\n{}",
            bed.pause_image,
            enforce_rule(bed, key)
        )
    })
    .await;
    let reg = g.bed.registry.addr().to_string();
    // Only the `base` tag, its index read under the layout's lock (a whole-layout tar could catch
    // index.json while another test adds a variant).
    let archive = support::image::archive_of_tag("base", &g.bed.dir.path().join("image.tar"));
    let out = g.bed.ctr(&[
        "image",
        "import",
        "--base-name",
        &format!("{reg}/local/evil"),
        archive.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "ctr import: {out:?}");
    let evil = format!("{reg}/local/evil:base");
    let id = image_id(&g.bed, &evil).await.expect("imported");
    let (pod, config) = sandbox(&g.bed, "default").await;
    let err = create_via(&g.proxy.path, &pod, &config, &id, &g.bed.pause_image)
        .await
        .expect_err("a name the runtime does not hold for this image must not pick the rule");
    assert_signature_denial(&err, "no registry digest");
    assert_eq!(containers(&g.bed).await, 0);
}

/// Item 3: a tag next to a digest does not select a rule; the runtime pulls the digest. A skip
/// rule for `app:release-*` does not let `app:release-1@<unsigned digest>` in.
#[tokio::test]
async fn tag_next_to_a_digest_selects_no_rule() {
    let g = Guarded::start(|bed, key| {
        format!(
            "[[rules]]\nname = \"releases\"\nimageReferences = [\"{}/app:release-*\"]\nmode = \"skip\"\n{}",
            bed.registry.addr(),
            enforce_rule(bed, key)
        )
    })
    .await;
    let reg = g.bed.registry.addr().to_string();
    let (_, unsigned) = g.bed.registry.push("app", "other", Some("u"));
    let image = format!("{reg}/app:release-1@{unsigned}");
    let err = g
        .pull(&image, "default")
        .await
        .expect_err("the digest decides, not the tag");
    assert_signature_denial(&err, "no signature found");
    assert!(!g.in_store(&format!("{reg}/app@{unsigned}")).await);
}

/// Item 9: RunPodSandbox is refused while the runtime's sandbox image fails the policy, and
/// nothing is pulled or run; once the pause image is signed, cri-guard pulls and verifies it,
/// and the sandbox runs.
#[tokio::test]
async fn sandbox_image_is_enforced() {
    let g = Guarded::start(enforce_rule).await;
    let config = support::sandbox_config(&support::unique_name("s"), "default");
    let run = || async {
        cri::runtime_client(&g.proxy.path)
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
    };
    if g.bed.containerd_version() == support::ContainerdVersion::V2_1 {
        // containerd 2.x does not report its sandbox image before pulling it: without
        // `[sandbox] image` the sandbox is refused with what to set, never run unchecked.
        let err = run()
            .await
            .expect_err("an unknown sandbox image must not run");
        assert_signature_denial(&err, "set `[sandbox] image`");
        assert_eq!(sandboxes(&g.bed).await, 0);
        let text = format!(
            "{}\n[sandbox]\nimage = \"{}\"\n",
            std::fs::read_to_string(&g.policy_path).unwrap(),
            g.bed.pause_image
        );
        std::fs::write(&g.policy_path, text).unwrap();
        g.verifier
            .reload(Policy::load(&g.policy_path).unwrap())
            .unwrap();
    }
    let err = run()
        .await
        .expect_err("the unsigned pause image must not run");
    assert_signature_denial(&err, "no signature found");
    assert_eq!(sandboxes(&g.bed).await, 0);
    assert!(
        !g.in_store(&g.bed.pause_image).await,
        "the unverified pause image was pulled"
    );

    let digest = g.bed.image_digest("pause", "test");
    sign::sign_image(g.bed.registry.addr(), None, "pause", &digest, &g.key);
    g.verifier
        .reload(Policy::load(&g.policy_path).unwrap())
        .unwrap();
    run().await.expect("the signed pause image runs");
    assert_eq!(sandboxes(&g.bed).await, 1);
}
