//! The cri-guard demo: a real containerd and registry in a temp dir, the real `cri-guard` binary
//! in front of containerd, and a pod run through it the way a kubelet would, printing each step.
//! Run it with `scripts/demo.sh` (as root), which installs the packages and builds first.
//!
//! Every capability cri-guard gains shows up here.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_guard::cri;

fn step(title: &str) {
    println!("\n== {title}");
}

fn ok(what: impl std::fmt::Display) {
    println!("   ok    {what}");
}

/// The cri-guard binary, started with a config file; stopped with SIGTERM when dropped.
struct Guard {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Guard {
    fn start(bin: &Path, dir: &Path, upstream: &Path) -> Guard {
        let socket = dir.join("cri-guard.sock");
        let config = dir.join("cri-guard.toml");
        let log = dir.join("cri-guard.log");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}\"\nupstream = \"{}\"\nsocket_mode = \"0660\"\n\n[log]\nformat = \"text\"\nlevel = \"info\"\n",
                socket.display(),
                upstream.display()
            ),
        )
        .expect("write config");
        let check = Command::new(bin)
            .arg("check-config")
            .arg(&config)
            .output()
            .expect("run check-config");
        assert!(check.status.success(), "check-config failed: {check:?}");
        ok(format!("cri-guard check-config {}", config.display()));
        let started = Instant::now();
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .spawn()
            .expect("start cri-guard");
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "cri-guard did not start; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        ok(format!(
            "cri-guard serving on {} after {:?}",
            socket.display(),
            started.elapsed()
        ));
        Guard { child, socket, log }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let status = self.child.wait().expect("wait cri-guard");
        println!(
            "\n-- cri-guard's log --\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        status
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = PathBuf::from(
        std::env::var("CRI_GUARD_BIN").unwrap_or_else(|_| "target/release/cri-guard".into()),
    );
    if !bin.exists() {
        eprintln!(
            "{} not found: build it with `cargo build --release` or set CRI_GUARD_BIN",
            bin.display()
        );
        std::process::exit(2);
    }

    step("1. Test bed: a private containerd 1.6 and a local registry in a temp dir");
    let mut bed = support::TestBed::start().await;
    ok(format!(
        "registry at {}, containerd at {}",
        bed.registry.addr(),
        bed.containerd_socket().display()
    ));
    let image = bed.push_image("demo/app", "v1");
    ok(format!("pushed {image}"));

    step(
        "2. cri-guard in front of containerd (the kubelet would use containerRuntimeEndpoint=unix://<this socket>)",
    );
    let guard = Guard::start(&bin, bed.dir.path(), &bed.containerd_socket());
    let socket = guard.socket.clone();
    let mut rt = cri::runtime_client(&socket);
    let mut img = cri::image_client(&socket);

    step("3. A pod through cri-guard, as the kubelet runs it");
    let v = rt
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    ok(format!(
        "Version: {} {} (CRI {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    ));
    let name = support::unique_name("demo");
    let sandbox = support::sandbox_config(&name, "default");
    let pulled = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .expect("PullImage")
        .into_inner();
    ok(format!("PullImage {image} -> {}", pulled.image_ref));
    let sandbox_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    ok(format!("RunPodSandbox -> {}", &sandbox_id[..12]));
    let mut config = support::container_config("app", &pulled.image_ref, &["/bin/sleep", "3600"]);
    config.image.as_mut().expect("image").user_specified_image = image.clone();
    let container_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    ok(format!("CreateContainer -> {}", &container_id[..12]));
    rt.start_container(cri::StartContainerRequest {
        container_id: container_id.clone(),
    })
    .await
    .expect("StartContainer");
    ok("StartContainer");
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: container_id.clone(),
            cmd: vec!["echo".into(), "hello from a pod behind cri-guard".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    ok(format!(
        "ExecSync -> {:?}",
        String::from_utf8_lossy(&exec.stdout).trim()
    ));

    step("4. Side doors are closed: the deprecated runtime.v1alpha2 API is refused");
    let alpha = cri::channel(&socket);
    let mut grpc = tonic::client::Grpc::new(alpha);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<cri::VersionRequest, cri::VersionResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/runtime.v1alpha2.RuntimeService/Version");
    let refused = grpc
        .unary(
            tonic::Request::new(cri::VersionRequest::default()),
            path,
            codec,
        )
        .await;
    match refused {
        Err(s) => ok(format!(
            "runtime.v1alpha2 Version -> {:?}: {}",
            s.code(),
            s.message()
        )),
        Ok(_) => panic!("runtime.v1alpha2 must be refused"),
    }

    step("5. containerd restarts under cri-guard: calls fail fast, then recover by themselves");
    tokio::task::block_in_place(|| bed.containerd.kill());
    let err = rt
        .version(cri::VersionRequest::default())
        .await
        .expect_err("containerd is down");
    ok(format!(
        "containerd killed -> {:?}: {}",
        err.code(),
        err.message()
    ));
    tokio::task::block_in_place(|| bed.containerd.start_again());
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .expect("Version after restart")
        .into_inner();
    ok(format!(
        "containerd back -> Version: {} {}",
        v.runtime_name, v.runtime_version
    ));

    step("6. Clean up through cri-guard, then SIGTERM it");
    let _ = rt
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: sandbox_id.clone(),
        })
        .await;
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id,
    })
    .await
    .expect("RemovePodSandbox");
    ok("pod removed");
    let status = guard.stop();
    assert!(status.success(), "cri-guard exited with {status:?}");
    assert!(!socket.exists(), "cri-guard left its socket behind");
    println!("   ok    cri-guard exited cleanly ({status}) and removed its socket");
    drop(bed);
    println!("\nDemo finished: containerd, registry and temp dir are gone.");
}
