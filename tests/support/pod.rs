//! CRI pod helpers that work against any CRI socket (containerd directly, or through the proxy).
//! Pods use the host network and no hostname, so no CNI plugin is needed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use cri_guard::cri;
use tonic::Status;

/// What `run_pod` created.
#[derive(Clone, Debug)]
pub struct PodRun {
    pub sandbox_id: String,
    pub container_id: String,
    /// `PullImageResponse.image_ref` (the image ID, `sha256:<config digest>` on containerd).
    pub image_id: String,
    pub pod_name: String,
    pub namespace: String,
    /// The sandbox config used (kubelets send it again with PullImage and CreateContainer).
    pub sandbox_config: cri::PodSandboxConfig,
}

/// A name unique within this process: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn node_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    }
}

/// Sandbox config: host network, empty hostname, no log directory; `uid` is unique per call, so
/// reusing `name` never collides.
pub fn sandbox_config(name: &str, namespace: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.to_string(),
            uid: unique_name("uid"),
            namespace: namespace.to_string(),
            attempt: 0,
        }),
        labels: HashMap::from([("cri-guard.test".to_string(), "true".to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(node_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container config running `cmd` (as the command, i.e. replacing the image entrypoint) from
/// `image_ref`, which is put in both `image.image` and `image.user_specified_image`.
pub fn container_config(name: &str, image_ref: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image_ref.to_string(),
            user_specified_image: image_ref.to_string(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(node_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What a kubelet does to start a pod with one long-running container (`sleep 3600`):
/// PullImage (with the sandbox config), RunPodSandbox, CreateContainer (image = the image ID that
/// PullImage returned, `user_specified_image` = `image_ref`), StartContainer. Panics on error.
pub async fn run_pod(socket: &Path, image_ref: &str, namespace: &str) -> PodRun {
    try_run_pod(socket, image_ref, namespace)
        .await
        .unwrap_or_else(|e| panic!("run_pod({image_ref}) via {}: {e}", socket.display()))
}

/// `run_pod` returning the first failing call's status (for denial tests). On failure after
/// RunPodSandbox the sandbox is left for `remove_all_pods`.
pub async fn try_run_pod(
    socket: &Path,
    image_ref: &str,
    namespace: &str,
) -> Result<PodRun, Status> {
    try_run_pod_cmd(socket, image_ref, namespace, &["sleep", "3600"]).await
}

/// `try_run_pod` with a custom container command.
pub async fn try_run_pod_cmd(
    socket: &Path,
    image_ref: &str,
    namespace: &str,
    cmd: &[&str],
) -> Result<PodRun, Status> {
    let mut images = cri::image_client(socket);
    let mut runtime = cri::runtime_client(socket);
    let pod_name = unique_name("pod");
    let sandbox = sandbox_config(&pod_name, namespace);
    let image_id = images
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image_ref.to_string(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(sandbox.clone()),
        })
        .await?
        .into_inner()
        .image_ref;
    let sandbox_id = runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let mut config = container_config("main", &image_id, cmd);
    if let Some(spec) = config.image.as_mut() {
        spec.user_specified_image = image_ref.to_string();
    }
    let container_id = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    runtime
        .start_container(cri::StartContainerRequest {
            container_id: container_id.clone(),
        })
        .await?;
    Ok(PodRun {
        sandbox_id,
        container_id,
        image_id,
        pod_name,
        namespace: namespace.to_string(),
        sandbox_config: sandbox,
    })
}

/// ExecSync `cmd` in a container (10 s timeout). Panics on a gRPC error.
pub async fn exec_sync(socket: &Path, container_id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    cri::runtime_client(socket)
        .exec_sync(cri::ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {container_id}: {e}"))
        .into_inner()
}

/// Stops and removes every pod sandbox (and with them their containers). Panics on error.
pub async fn remove_all_pods(socket: &Path) {
    try_remove_all_pods(socket)
        .await
        .unwrap_or_else(|e| panic!("remove_all_pods via {}: {e}", socket.display()))
}

/// `remove_all_pods` returning the first error (NotFound from a concurrent removal is ignored).
pub async fn try_remove_all_pods(socket: &Path) -> Result<(), Status> {
    let mut runtime = cri::runtime_client(socket);
    let pods = runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await?
        .into_inner()
        .items;
    let ignore_not_found = |r: Result<(), Status>| match r {
        Err(e) if e.code() != tonic::Code::NotFound => Err(e),
        _ => Ok(()),
    };
    for pod in pods {
        let id = pod.id;
        ignore_not_found(
            runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .map(drop),
        )?;
        ignore_not_found(
            runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .map(drop),
        )?;
    }
    Ok(())
}
