//! End to end against the real parts: a private containerd 1.6 and a docker-registry per test
//! (see `support`), with the proxy in between. Each result through the proxy is compared with the
//! same call made directly to containerd.

mod fakes;
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cri_guard::cri;
use cri_guard::proxy::AllowAll;
use fakes::TestProxy;
use support::TestBed;

fn proxy_for(bed: &TestBed) -> TestProxy {
    TestProxy::start(
        &bed.dir.path().join("guard.sock"),
        &bed.containerd_socket(),
        Arc::new(AllowAll),
    )
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Blanks what legitimately differs between two reads of the same container (its log-derived
/// and timing fields are equal anyway; nothing else should differ).
fn status_of(mut s: cri::ContainerStatusResponse) -> cri::ContainerStatusResponse {
    s.info.clear();
    s
}

/// The whole pod lifecycle through the proxy gives the same answers as containerd directly:
/// Version, Status, PullImage, ImageStatus, ListImages, RunPodSandbox, CreateContainer,
/// StartContainer, ExecSync, ContainerStatus, ListContainers, GetContainerEvents (Unimplemented on
/// 1.6; on 2.1 the container's events arrive on the relayed stream as on the direct one),
/// Stop/Remove.
#[tokio::test]
async fn pod_lifecycle_through_proxy_matches_direct() {
    let bed = TestBed::start().await;
    let image = bed.push_image("app", "v1");
    let proxy = proxy_for(&bed);
    let (via, direct) = (proxy.path.as_path(), bed.containerd_socket());
    let (mut rt, mut rt_d) = (cri::runtime_client(via), cri::runtime_client(&direct));
    let (mut img, mut img_d) = (cri::image_client(via), cri::image_client(&direct));
    // containerd 2.1 streams container events. It sends no response headers before the first
    // event, so both streams are opened in tasks now, before the pod exists, and read at the end.
    let events = (bed.containerd_version() == support::ContainerdVersion::V2_1)
        .then(|| (collect_events(via), collect_events(&direct)));

    let v = rt
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v,
        rt_d.version(cri::VersionRequest {
            version: "v1".into()
        })
        .await
        .unwrap()
        .into_inner()
    );
    assert_eq!(v.runtime_name, "containerd");
    let st = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st,
        rt_d.status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner()
    );

    let name = support::unique_name("e2e");
    let sandbox_config = support::sandbox_config(&name, "default");
    let pulled = img
        .pull_image(cri::PullImageRequest {
            image: image_spec(&image),
            auth: None,
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
    let is = img
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let is_d = img_d
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(is, is_d);
    assert_eq!(is.image.as_ref().unwrap().id, pulled.image_ref);
    assert!(is.image.as_ref().unwrap().repo_tags.contains(&image));
    let li = img
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        li,
        img_d
            .list_images(cri::ListImagesRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert!(li.images.iter().any(|i| i.id == pulled.image_ref));

    let sandbox_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let mut config = support::container_config("main", &pulled.image_ref, &["/bin/sleep", "3600"]);
    config.image.as_mut().unwrap().user_specified_image = image.clone();
    let container_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap();

    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: container_id.clone(),
            cmd: vec!["echo".into(), "hi".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((exec.stdout.as_slice(), exec.exit_code), (&b"hi\n"[..], 0));

    let cs = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let cs_d = rt_d
        .container_status(cri::ContainerStatusRequest {
            container_id: container_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status_of(cs.clone()), status_of(cs_d));
    assert_eq!(
        cs.status.unwrap().state,
        cri::ContainerState::ContainerRunning as i32
    );
    let lc = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        lc,
        rt_d.list_containers(cri::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
    );
    assert_eq!(lc.containers.len(), 1);

    if events.is_none() {
        let ev = rt
            .get_container_events(cri::GetEventsRequest::default())
            .await
            .expect_err("1.6 has no events");
        let ev_d = rt_d
            .get_container_events(cri::GetEventsRequest::default())
            .await
            .expect_err("1.6 has no events");
        assert_eq!((ev.code(), ev.message()), (ev_d.code(), ev_d.message()));
        assert_eq!(ev.code(), tonic::Code::Unimplemented);
    }

    rt.stop_container(cri::StopContainerRequest {
        container_id: container_id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    if let Some((via_events, direct_events)) = events {
        use cri::ContainerEventType as T;
        let of_container = |events: &Events| -> Vec<i32> {
            let events = events.0.lock().unwrap();
            events
                .iter()
                .filter(|(id, _)| *id == container_id)
                .map(|(_, t)| *t)
                .collect()
        };
        let stopped = T::ContainerStoppedEvent as i32;
        // An async wait: the collecting tasks run on this test's runtime.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut both_stopped = false;
        while !both_stopped && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            both_stopped = of_container(&via_events).contains(&stopped)
                && of_container(&direct_events).contains(&stopped);
        }
        assert!(
            both_stopped,
            "no stop event within 10 s: through the proxy {:?}, direct {:?}",
            of_container(&via_events),
            of_container(&direct_events)
        );
        assert_eq!(of_container(&via_events), of_container(&direct_events));
        assert_eq!(
            of_container(&via_events),
            [
                T::ContainerCreatedEvent,
                T::ContainerStartedEvent,
                T::ContainerStoppedEvent
            ]
            .map(|t| t as i32)
        );
        via_events.1.abort();
        direct_events.1.abort();
    }
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    let pods = rt_d
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(pods.items.is_empty(), "pods left: {pods:?}");

    // A runtime error comes through with containerd's own code and message.
    let err = rt
        .container_status(cri::ContainerStatusRequest {
            container_id,
            verbose: false,
        })
        .await
        .unwrap_err();
    let err_d = rt_d
        .container_status(cri::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), err_d.code());
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// The (container id, event type) pairs a `GetContainerEvents` stream delivers, collected by a
/// task (aborted by the caller).
type Events = (
    Arc<std::sync::Mutex<Vec<(String, i32)>>>,
    tokio::task::JoinHandle<()>,
);

fn collect_events(socket: &Path) -> Events {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut client = cri::runtime_client(socket);
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let Ok(stream) = client
            .get_container_events(cri::GetEventsRequest::default())
            .await
        else {
            return;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(e)) = stream.message().await {
            sink.lock()
                .unwrap()
                .push((e.container_id, e.container_event_type));
        }
    });
    (seen, task)
}

async fn version_code(socket: &Path) -> Result<String, tonic::Code> {
    cri::runtime_client(socket)
        .version(cri::VersionRequest::default())
        .await
        .map(|v| v.into_inner().runtime_name)
        .map_err(|s| s.code())
}

/// containerd killed under a running proxy: calls fail fast with Unavailable; once containerd is
/// back, the same client works again without restarting the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_killed_and_restarted_under_proxy() {
    let mut bed = TestBed::start().await;
    let proxy = proxy_for(&bed);
    let mut client = cri::runtime_client(&proxy.path);
    assert_eq!(
        client
            .version(cri::VersionRequest::default())
            .await
            .unwrap()
            .into_inner()
            .runtime_name,
        "containerd"
    );

    bed.containerd.kill();
    let started = Instant::now();
    let err = client
        .version(cri::VersionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "must fail fast, took {:?}",
        started.elapsed()
    );

    tokio::task::block_in_place(|| bed.containerd.start_again());
    let v = client
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "containerd");
    // And a fresh client too.
    assert_eq!(version_code(&proxy.path).await, Ok("containerd".into()));
}

/// The proxy starts while containerd is down, answers Unavailable, and serves as soon as
/// containerd comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_started_before_containerd() {
    let mut bed = TestBed::start().await;
    tokio::task::block_in_place(|| bed.containerd.stop());
    let proxy = proxy_for(&bed);
    assert_eq!(
        version_code(&proxy.path).await,
        Err(tonic::Code::Unavailable)
    );
    tokio::task::block_in_place(|| bed.containerd.start_again());
    assert_eq!(version_code(&proxy.path).await, Ok("containerd".into()));
}
