//! CreateContainer through cri-guard on a cache hit, against CreateContainer straight to
//! containerd, in the same run (interleaved batches). Also the decision alone
//! (`Verifier::check_create`: PodSandboxStatus and ImageStatus on the runtime + cache lookup),
//! against those two runtime calls made directly.
//!
//! `cargo bench --bench create [-- --quick]`

#[path = "../tests/fakes/mod.rs"]
mod fakes;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cri_guard::cri;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;
use support::sign::{self, TestKey};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

type Client = cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// One CreateContainer on a long-lived client (a kubelet keeps its connection).
async fn create(
    client: &mut Client,
    pod: &(String, cri::PodSandboxConfig),
    image_id: &str,
    name: &str,
) -> Duration {
    let mut config = support::container_config(
        &support::unique_name("b"),
        image_id,
        &["/bin/sleep", "3600"],
    );
    config.image.as_mut().unwrap().user_specified_image = name.into();
    let started = Instant::now();
    client
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(config),
            sandbox_config: Some(pod.1.clone()),
        })
        .await
        .expect("create");
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (batches, per_batch, decisions) = if quick {
        (4, 10, 2_000)
    } else {
        (10, 20, 20_000)
    };
    let bed = support::TestBed::start().await;
    let reg = bed.registry.addr().to_string();
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "release");
    let (image, digest) = bed.registry.push("bench/app", "v1", None);
    sign::sign_image(&reg, None, "bench/app", &digest, &key);
    let policy = Policy::parse(
        "bench",
        &format!(
            "hostsDir = \"{}\"\n[[rules]]\nname = \"bench\"\nimageReferences = [\"{reg}/bench/*\"]\n[[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n",
            bed.containerd.certs_dir().display(),
            key_path.display()
        ),
        bed.dir.path(),
    )
    .unwrap();
    let verifier = Verifier::new(policy, Some(bed.containerd_socket())).unwrap();
    let proxy = fakes::TestProxy::start(
        &bed.dir.path().join("g.sock"),
        &bed.containerd_socket(),
        Arc::new(verifier.clone()),
    );
    let direct = bed.containerd_socket();
    let image_id = cri::image_client(&direct)
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
    let config = support::sandbox_config("bench", "default");
    let sandbox = cri::runtime_client(&direct)
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let pod = (sandbox, config);
    // Warm up both paths; the first create through cri-guard verifies and fills the cache.
    let (mut via_client, mut direct_client) = (
        cri::runtime_client(&proxy.path),
        cri::runtime_client(&direct),
    );
    create(&mut via_client, &pod, &image_id, &image).await;
    create(&mut direct_client, &pod, &image_id, &image).await;

    let (mut via, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        for _ in 0..per_batch {
            plain.push(create(&mut direct_client, &pod, &image_id, &image).await);
        }
        for _ in 0..per_batch {
            via.push(create(&mut via_client, &pod, &image_id, &image).await);
        }
    }
    via.sort();
    plain.sort();
    let (hits, _, verifications) = verifier.stats();
    println!(
        "CreateContainer, {} per path in interleaved batches of {per_batch} (cache hits {hits}, verifications {verifications})",
        via.len()
    );
    println!("  path          p50 us     p99 us");
    println!(
        "  direct    {:>10.0} {:>10.0}",
        percentile(&plain, 0.5),
        percentile(&plain, 0.99)
    );
    println!(
        "  cri-guard {:>10.0} {:>10.0}",
        percentile(&via, 0.5),
        percentile(&via, 0.99)
    );
    println!(
        "  added p50 {:+.0} us ({:.1}% of a plain CreateContainer)",
        percentile(&via, 0.5) - percentile(&plain, 0.5),
        100.0 * (percentile(&via, 0.5) - percentile(&plain, 0.5)) / percentile(&plain, 0.5)
    );

    // The decision alone: ImageStatus on containerd plus the cache lookup.
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.0.clone(),
        config: Some({
            let mut c = support::container_config("d", &image_id, &["/bin/true"]);
            c.image.as_mut().unwrap().user_specified_image = image.clone();
            c
        }),
        sandbox_config: Some(pod.1.clone()),
    };
    let mut decide = Vec::with_capacity(decisions);
    let mut status = Vec::with_capacity(decisions);
    let mut client = cri::image_client(&direct);
    let mut sandboxes = cri::runtime_client(&direct);
    for i in 0..decisions {
        if i % 2 == 0 {
            let t = Instant::now();
            let (d, _) = verifier.check_create(&req).await.expect("allowed");
            decide.push(t.elapsed());
            assert!(d.cached);
        } else {
            let t = Instant::now();
            sandboxes
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.0.clone(),
                    verbose: false,
                })
                .await
                .unwrap();
            client
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image_id.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap();
            status.push(t.elapsed());
        }
    }
    decide.sort();
    status.sort();
    println!("Decision alone ({} each, alternating):", decide.len());
    println!(
        "  check_create (2 runtime calls + cache)  p50 {:>7.1} us  p99 {:>7.1} us",
        percentile(&decide, 0.5),
        percentile(&decide, 0.99)
    );
    println!(
        "  PodSandboxStatus + ImageStatus direct   p50 {:>7.1} us  p99 {:>7.1} us",
        percentile(&status, 0.5),
        percentile(&status, 0.99)
    );
    println!(
        "  decision beyond its runtime calls: p50 {:+.1} us",
        percentile(&decide, 0.5) - percentile(&status, 0.5)
    );
    support::remove_all_pods(&direct).await;
}
