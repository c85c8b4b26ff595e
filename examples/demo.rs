//! The cri-guard demo: a real containerd and registry in a temp dir, the real `cri-guard` binary
//! in front of containerd, and a pod run through it the way a kubelet would, printing each step.
//! Run it with `scripts/demo.sh` (as root), which installs the packages and builds first.
//!
//! Every capability cri-guard gains shows up here: so far the transparent proxy, and signature
//! verification of pulls against a policy, and of container creation from images already on the
//! node.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_guard::cri;
use support::sign::{self, TestKey};

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
    fn start(bin: &Path, dir: &Path, upstream: &Path, policy: &Path) -> Guard {
        let socket = dir.join("cri-guard.sock");
        let config = dir.join("cri-guard.toml");
        let log = dir.join("cri-guard.log");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}\"\nupstream = \"{}\"\nsocket_mode = \"0660\"\npolicy = \"{}\"\n\n[log]\nformat = \"text\"\nlevel = \"info\"\n",
                socket.display(),
                upstream.display(),
                policy.display()
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
        let status = self.terminate();
        println!(
            "\n-- cri-guard's log --\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        status
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait cri-guard")
    }
}

impl Drop for Guard {
    /// If the demo fails half-way, cri-guard must not outlive it.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
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
    let reg = bed.registry.addr().to_string();
    ok(format!(
        "registry at {reg}, containerd at {}",
        bed.containerd_socket().display()
    ));
    let release = TestKey::p256();
    let key_path = release.write_public(bed.dir.path(), "release");
    let (image, digest) = bed.registry.push("demo/app", "v1", None);
    sign::sign_image(&reg, None, "demo/app", &digest, &release);
    ok(format!(
        "pushed {image} and signed it with the release key (cosign format, at demo/app:sha256-<hex>.sig)"
    ));
    let (unsigned, _) = bed.registry.push("demo/unsigned", "v1", Some("unsigned"));
    ok(format!("pushed {unsigned}, not signed"));
    let (forged, forged_digest) = bed.registry.push("demo/forged", "v1", Some("forged"));
    sign::sign_image(&reg, None, "demo/forged", &forged_digest, &TestKey::p256());
    ok(format!("pushed {forged}, signed with some other key"));
    let (with_sbom, sbom_digest) = bed.registry.push("sbom/app", "v1", Some("sbom"));
    sign::sign_image(&reg, None, "sbom/app", &sbom_digest, &release);
    let spdx = serde_json::json!({ "spdxVersion": "SPDX-2.3", "name": "sbom/app", "packages": [] });
    sign::attest_image(
        &reg,
        "sbom/app",
        &sbom_digest,
        &[(&release, "https://spdx.dev/Document", spdx.clone())],
    );
    ok(format!(
        "pushed {with_sbom}, signed, with an SPDX SBOM attestation signed by the release key (at sbom/app:sha256-<hex>.att)"
    ));
    let (no_sbom, no_sbom_digest) = bed.registry.push("sbom/bare", "v1", Some("bare"));
    sign::sign_image(&reg, None, "sbom/bare", &no_sbom_digest, &release);
    ok(format!("pushed {no_sbom}, signed, without an SBOM"));
    let (stranger_sbom, stranger_digest) =
        bed.registry.push("sbom/stranger", "v1", Some("stranger"));
    sign::sign_image(&reg, None, "sbom/stranger", &stranger_digest, &release);
    sign::attest_image(
        &reg,
        "sbom/stranger",
        &stranger_digest,
        &[(&TestKey::p256(), "https://spdx.dev/Document", spdx)],
    );
    ok(format!(
        "pushed {stranger_sbom}, signed, with an SBOM attestation signed by some other key"
    ));
    let policy = bed.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "default = \"enforce\"\nhostsDir = \"{}\"\n\n[[rules]]\nname = \"pause\"\nimageReferences = [\"{}\"]\nmode = \"skip\"\n\n[[rules]]\nname = \"demo\"\nimageReferences = [\"{reg}/demo/*\"]\nmode = \"enforce\"\n[[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n\n[[rules]]\nname = \"sbom-required\"\nimageReferences = [\"{reg}/sbom/*\"]\n[[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n[[rules.attestations]]\npredicateType = \"spdxjson\"\n",
            bed.containerd.certs_dir().display(),
            bed.pause_image,
            key_path.display(),
            key_path.display()
        ),
    )
    .expect("write policy");
    println!(
        "\n-- policy.toml --\n{}",
        std::fs::read_to_string(&policy).unwrap_or_default()
    );

    step(
        "2. cri-guard in front of containerd (the kubelet would use containerRuntimeEndpoint=unix://<this socket>)",
    );
    let guard = Guard::start(&bin, bed.dir.path(), &bed.containerd_socket(), &policy);
    let socket = guard.socket.clone();
    let mut rt = cri::runtime_client(&socket);
    let mut img = cri::image_client(&socket);

    step("3. A pod with the signed image, through cri-guard, as the kubelet runs it");
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

    step("4. Images that fail the policy never reach containerd");
    for bad in [&unsigned, &forged] {
        let denied = pull(&mut img, bad).await.expect_err("must be denied");
        ok(format!(
            "PullImage {bad} -> {:?}: {}",
            denied.code(),
            denied.message()
        ));
        let present = cri::image_client(bed.containerd_socket())
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: bad.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
            .is_some();
        assert!(!present, "{bad} reached containerd");
        ok(format!("containerd's own store has no {bad}"));
    }
    show_verify(&bin, &policy, &[&image, &unsigned]);

    step("5. A rule can require a signed SBOM attestation (cosign attest --type spdxjson)");
    for (what, image, allowed) in [
        ("with a signed SBOM", &with_sbom, true),
        ("without an SBOM", &no_sbom, false),
        ("with an SBOM from an untrusted key", &stranger_sbom, false),
    ] {
        match pull(&mut img, image).await {
            Ok(image_ref) => {
                assert!(allowed, "{image} must be denied");
                ok(format!("PullImage {what} -> {image_ref}"));
            }
            Err(e) => {
                assert!(!allowed, "{image} must pull: {e:?}");
                ok(format!(
                    "PullImage {what} -> {:?}: {}",
                    e.code(),
                    e.message()
                ));
            }
        }
    }
    show_verify(&bin, &policy, &[&with_sbom, &stranger_sbom]);

    step(
        "6. Keyless: a real cosign keyless signature (Fulcio certificate + Rekor bundle), offline",
    );
    keyless(&bin, &bed);

    step("7. Images already on the node are checked when a container is created");
    let direct = bed.containerd_socket();
    let sneaked = cri::image_client(&direct)
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: unsigned.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("direct pull")
        .into_inner()
        .image_ref;
    ok(format!(
        "pulled {unsigned} straight from containerd's socket, bypassing cri-guard -> {sneaked}"
    ));
    let mut sneaky = support::container_config("sneaky", &sneaked, &["/bin/sleep", "3600"]);
    sneaky.image.as_mut().expect("image").user_specified_image = unsigned.clone();
    let refused = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(sneaky),
            sandbox_config: Some(support::sandbox_config(&name, "default")),
        })
        .await
        .expect_err("must be denied");
    ok(format!(
        "CreateContainer from it through cri-guard -> {:?}: {}",
        refused.code(),
        refused.message()
    ));
    let count = cri::runtime_client(&direct)
        .list_containers(cri::ListContainersRequest::default())
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len();
    ok(format!(
        "containerd has {count} container(s): only the signed app's"
    ));

    step("8. Side doors are closed: the deprecated runtime.v1alpha2 API is refused");
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

    step("9. containerd restarts under cri-guard: calls fail fast, then recover by themselves");
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

    step("10. Clean up through cri-guard, then SIGTERM it");
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

/// PullImage of `image` through `img` for a new pod in `default`, as the kubelet sends it.
async fn pull(
    img: &mut cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    image: &str,
) -> Result<String, tonic::Status> {
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: Some(support::sandbox_config(
            &support::unique_name("demo"),
            "default",
        )),
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

/// Runs `cri-guard verify --policy POLICY IMAGES...`, prints the command and its output, and
/// returns whether it allowed every image (exit 0).
fn show_verify(bin: &Path, policy: &Path, images: &[&str]) -> bool {
    let out = Command::new(bin)
        .arg("verify")
        .arg("--policy")
        .arg(policy)
        .args(images)
        .output()
        .expect("verify");
    println!(
        "   $ cri-guard verify --policy {} {}   (exit {})",
        policy.file_name().unwrap_or_default().to_string_lossy(),
        images.join(" "),
        out.status.code().unwrap_or(-1)
    );
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("     {line}");
    }
    out.status.success()
}

/// Step 6: the real cosign keyless vector `fulcio-rekor-valid` (../shared/testdata/cosign-real)
/// pushed where cosign puts it, checked by `cri-guard verify` against a keyless attestor with
/// the Fulcio root and Rekor key from files: allowed for the signer's identity, denied for
/// another. Its certificate expired in 2023; it is checked at the Rekor integration time.
fn keyless(bin: &Path, bed: &support::TestBed) {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/cosign-real");
    if !v.join("vectors.json").exists() {
        println!("   skip  {} is absent", v.display());
        return;
    }
    let read = |rel: &str| std::fs::read_to_string(v.join(rel)).expect("vector file");
    let d = "derived/fulcio-rekor-valid";
    let digest = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a";
    let repo = "cosign-signed/fulcio-rekor-1";
    let payload = std::fs::read(v.join(format!("{d}/payload.json"))).expect("payload");
    sign::push_attachment(
        bed.registry.addr(),
        None,
        repo,
        digest,
        "sig",
        &[(
            sign::SIMPLESIGNING,
            &payload,
            serde_json::json!({
                "dev.cosignproject.cosign/signature": read(&format!("{d}/signature.b64")),
                "dev.sigstore.cosign/certificate": read(&format!("{d}/certificate.pem")),
                "dev.sigstore.cosign/chain": read(&format!("{d}/chain.pem")),
                "dev.sigstore.cosign/bundle": read(&format!("{d}/bundle.json")),
            }),
        )],
    );
    let reg = bed.registry.addr();
    let image = format!("{reg}/{repo}@{digest}");
    ok(format!(
        "pushed the keyless signature of {repo} (made by cosign in January 2023) to {reg}"
    ));
    for (name, subject) in [
        ("keyless", "mitr@redhat.com"),
        ("keyless-other", "someone@example.com"),
    ] {
        let policy = bed.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "hostsDir = \"{}\"\n[[rules]]\nname = \"keyless\"\nimageReferences = [\"{reg}/*\"]\nsignedIdentity = {{ remapPrefix = \"{reg}/cosign-signed\", signedPrefix = \"192.168.64.2:5000/cosign-signed\" }}\n[[rules.attestors]]\nname = \"github-user\"\nkeyless = {{ subject = \"{subject}\", issuer = \"https://github.com/login/oauth\", roots = \"{}\" }}\nrekorKey = \"{}\"\n",
            bed.containerd.certs_dir().display(),
            v.join("trust/fulcio_v1.crt.pem").display(),
            v.join("trust/rekor.pub").display()
        );
        std::fs::write(&policy, &text).expect("write policy");
        if name == "keyless" {
            println!("\n-- {name}.toml --\n{text}");
        }
        let allowed = show_verify(bin, &policy, &[&image]);
        assert_eq!(allowed, name == "keyless", "keyless decision");
    }
}
