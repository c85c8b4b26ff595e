//! The cri-guard tutorial in one command: a real containerd and registry in a temp dir, real
//! cosign 3, the node installer against a temp root, the real `cri-guard` binary in front of
//! containerd, and pods run through it the way the kubelet runs them. Run it with
//! `scripts/demo.sh` (as root), which installs the packages and builds first.
//!
//! Steps: 1-2 sign images with cosign (the new bundle format and the old one) and verify them
//! (`cosign verify`, `cri-guard verify`); 3 generate an SBOM, attest it (`cosign attest`) and
//! require it; 4 install the guard (the installer on a temp root: the kubelet's endpoint change
//! as a diff) and start it; 5 audit every image in the registry; 6 a pod with the unsigned
//! image (refused at pull, with the kubelet's reason); 7 a pod with the signed image (runs);
//! 8 an unsigned image imported straight into containerd (refused at CreateContainer; `audit
//! --node` lists it); 9 metrics and 10 the decision log; 11 a policy update reloaded by the
//! running guard (a broken one refused, the old one kept); then keyless verified offline, the
//! `runtime.v1alpha2` API refused, containerd restarted under cri-guard, and SIGTERM.
//!
//! Each check prints `ok` or `FAIL` with what was seen; the demo goes on after a failure and
//! exits 1 at the end if any outcome differed from the expected one. Everything is cleaned up:
//! processes are stopped by PID, the temp dir is removed, nothing is left under /var.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_guard::cri;
use sha2::{Digest as _, Sha256};
use support::cosign::Format;

/// Outcomes seen so far.
#[derive(Default)]
struct Demo {
    checks: usize,
    failed: Vec<String>,
}

impl Demo {
    fn step(&self, title: &str) {
        println!("\n== {title}");
    }

    /// Records one expected outcome.
    fn check(&mut self, ok: bool, what: impl std::fmt::Display) -> bool {
        self.checks += 1;
        if ok {
            println!("   ok    {what}");
        } else {
            println!("   FAIL  {what}");
            self.failed.push(what.to_string());
        }
        ok
    }

    fn note(&self, what: impl std::fmt::Display) {
        println!("         {what}");
    }
}

/// Prints a command the way a user would type it (paths shortened to the demo dir).
fn show_cmd(dir: &Path, args: &[&str]) {
    let d = dir.display().to_string();
    let line = args.join(" ").replace(&d, "$DEMO");
    println!("   $ {line}");
}

/// Prints output lines indented, at most `max` of them.
fn show_output(text: &str, max: usize) {
    let lines: Vec<&str> = text.lines().collect();
    for l in lines.iter().take(max) {
        println!("     {l}");
    }
    if lines.len() > max {
        println!("     ... ({} more lines)", lines.len() - max);
    }
}

/// Runs a command; returns (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cri-guard binary serving with a config file; stopped with SIGTERM by PID when dropped.
struct Guard {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    metrics: String,
}

impl Guard {
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = nix_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Guard {
    /// If the demo stops half-way, cri-guard must not outlive it.
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn nix_kill(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    match support::util::http(addr, "GET", path, &[], b"") {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// An SPDX 2.3 document generated from the image's content: every regular file of its layers
/// with its SHA-256, and the busybox package it was built from.
fn generate_sbom(bed: &support::TestBed, name: &str, digest: &str, out: &Path) -> (usize, PathBuf) {
    let manifest = bed
        .registry
        .manifest_json(name, digest)
        .expect("image manifest");
    let work = out.with_extension("rootfs");
    std::fs::create_dir_all(&work).unwrap();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let d = layer["digest"].as_str().unwrap();
        let blob = bed.registry.blob(name, d).expect("layer blob");
        let tarball = work.with_extension("layer.tar.gz");
        std::fs::write(&tarball, blob).unwrap();
        let (code, _, err) = run(Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&work));
        assert_eq!(code, 0, "unpack layer: {err}");
        let _ = std::fs::remove_file(&tarball);
    }
    let mut files = Vec::new();
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(root, &p, files);
            } else if meta.is_file() {
                let hash = hex(&Sha256::digest(std::fs::read(&p).unwrap()));
                let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
                files.push((rel, hash));
            }
        }
    }
    walk(&work, &work, &mut files);
    let _ = std::fs::remove_dir_all(&work);
    let (_, busybox_version, _) =
        run(Command::new("dpkg-query").args(["-W", "-f=${Version}", "busybox-static"]));
    let doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}/{name}@{digest}", bed.registry.addr()),
        "documentNamespace": format!("https://cri-guard.example/spdx/{}", &digest[7..19]),
        "creationInfo": {
            "created": "2026-01-01T00:00:00Z",
            "creators": ["Tool: cri-guard-demo"]
        },
        "packages": [{
            "SPDXID": "SPDXRef-Package-busybox",
            "name": "busybox-static",
            "versionInfo": busybox_version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "licenseConcluded": "GPL-2.0-only",
            "filesAnalyzed": true,
            "hasFiles": (0..files.len()).map(|i| format!("SPDXRef-File-{i}")).collect::<Vec<_>>(),
        }],
        "files": files.iter().enumerate().map(|(i, (f, h))| serde_json::json!({
            "SPDXID": format!("SPDXRef-File-{i}"),
            "fileName": f,
            "checksums": [{ "algorithm": "SHA256", "checksumValue": h }],
        })).collect::<Vec<_>>(),
        "relationships": [{
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Package-busybox"
        }]
    });
    std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    (files.len(), out.to_path_buf())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn short(digest: &str) -> String {
    digest.chars().take(19).collect()
}

/// Whether containerd's own store holds `image`.
async fn in_store(socket: &Path, image: &str) -> bool {
    cri::image_client(socket)
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .is_ok_and(|r| r.into_inner().image.is_some())
}

/// What `kubectl describe pod` shows for a pull the kubelet saw denied (the kubelet reads the
/// message prefix of a status `Unknown`, design.md section 3).
fn kubelet_view(image: &str, status: &tonic::Status) -> String {
    let m = status.message();
    if let Some(reason) = m.strip_prefix("SignatureValidationFailed: ") {
        format!(
            "Failed to pull image \"{image}\": image pull failed for {image} because the signature validation failed: {}",
            reason.strip_prefix(&format!("{image}: ")).unwrap_or(reason)
        )
    } else {
        format!("Failed to pull image \"{image}\": {m}")
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = PathBuf::from(
        std::env::var("CRI_GUARD_BIN").unwrap_or_else(|_| "target/debug/cri-guard".into()),
    );
    if !bin.exists() {
        eprintln!(
            "{} not found: build it with `cargo build` or set CRI_GUARD_BIN",
            bin.display()
        );
        std::process::exit(2);
    }
    let bin = bin.canonicalize().expect("binary path");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let mut demo = Demo::default();

    demo.step("0. A private containerd and a local registry in a temp dir");
    let mut bed = support::TestBed::start().await;
    let reg = bed.registry.addr().to_string();
    let dir = bed.dir.path().to_path_buf();
    println!(
        "   containerd {} at {}, registry (distribution 2.8) at {reg}, all under {}",
        bed.containerd_version().label(),
        bed.containerd_socket().display(),
        dir.display()
    );
    let sock = bed.containerd_socket();

    // ------------------------------------------------------------------------------ 1-2
    demo.step("1. Sign images with cosign 3: the new bundle format (its default) and the old one");
    let cosign = bed.cosign("release");
    let key = cosign.public_key_path().to_path_buf();
    demo.note(format!(
        "key pair: cosign generate-key-pair -> {}",
        cosign.key_path().display()
    ));
    let (_, app_digest) = bed.registry.push("demo/app", "v1", Some("app"));
    let (_, legacy_digest) = bed.registry.push("demo/legacy", "v1", Some("legacy"));
    let (_, nosbom_digest) = bed.registry.push("demo/nosbom", "v1", Some("nosbom"));
    let (unsigned, _) = bed.registry.push("demo/unsigned", "v1", Some("unsigned"));
    let app = format!("{reg}/demo/app:v1");
    let app_ref = format!("{reg}/demo/app@{app_digest}");
    let legacy = format!("{reg}/demo/legacy:v1");
    let legacy_ref = format!("{reg}/demo/legacy@{legacy_digest}");
    let nosbom = format!("{reg}/demo/nosbom:v1");
    let nosbom_ref = format!("{reg}/demo/nosbom@{nosbom_digest}");
    for (what, image, format) in [
        ("demo/app, new bundle format", &app_ref, Format::New),
        ("demo/legacy, old format", &legacy_ref, Format::Old),
        ("demo/nosbom, old format", &nosbom_ref, Format::Old),
    ] {
        let flag = match format {
            Format::New => "",
            Format::Old => " --new-bundle-format=false",
        };
        show_cmd(
            &dir,
            &[&format!(
                "cosign sign --key cosign.key{flag} --tlog-upload=false --use-signing-config=false {image}"
            )],
        );
        let r = cosign.try_sign(image, format);
        demo.check(r.is_ok(), format!("signed {what}"));
        if let Err(e) = r {
            demo.note(e);
        }
    }
    let tags = bed.registry.tags("demo/app");
    demo.check(
        tags.iter().any(|t| t == &app_digest.replace(':', "-")),
        format!(
            "the new format is a Sigstore bundle found through the referrers tag: demo/app tags {tags:?}"
        ),
    );
    let tags = bed.registry.tags("demo/legacy");
    demo.check(
        tags.iter().any(|t| t.ends_with(".sig")),
        format!("the old format is the .sig tag: demo/legacy tags {tags:?}"),
    );
    demo.note(format!("{unsigned} is not signed"));

    demo.step("2. Verify them: cosign verify, then cri-guard verify with a policy");
    for (image, signed) in [(&app, true), (&legacy, true), (&unsigned, false)] {
        show_cmd(
            &dir,
            &[&format!(
                "cosign verify --key cosign.pub --insecure-ignore-tlog {image}"
            )],
        );
        let r = cosign.verify(image);
        demo.check(
            r.is_ok() == signed,
            format!(
                "cosign verify {image}: {}",
                match &r {
                    Ok(_) => "verified".to_string(),
                    Err(e) => e
                        .lines()
                        .find(|l| l.contains("Error"))
                        .unwrap_or("failed")
                        .to_string(),
                }
            ),
        );
    }
    let sign_policy = dir.join("policy-signed.toml");
    let header = format!(
        "default = \"enforce\"\nhostsDir = \"{}\"\n\n[sandbox]\nimage = \"{pause}\"\n\n[[rules]]\nname = \"pause\"\nimageReferences = [\"{pause}\"]\nmode = \"skip\"\n",
        bed.containerd.certs_dir().display(),
        pause = bed.pause_image
    );
    std::fs::write(
        &sign_policy,
        format!(
            "{header}\n[[rules]]\nname = \"demo\"\nimageReferences = [\"{reg}/demo/*\"]\n[[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n",
            key.display()
        ),
    )
    .unwrap();
    println!(
        "\n   -- policy-signed.toml --\n{}",
        std::fs::read_to_string(&sign_policy)
            .unwrap()
            .lines()
            .map(|l| format!("     {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (image, allowed, note) in [
        (&app, true, " (Sigstore bundle)"),
        (&legacy, true, ""),
        (&unsigned, false, ""),
    ] {
        let args = [
            bin.to_str().unwrap(),
            "verify",
            "--policy",
            sign_policy.to_str().unwrap(),
            image,
        ];
        show_cmd(
            &dir,
            &["cri-guard verify --policy policy-signed.toml", image],
        );
        let (code, out, err) = run(Command::new(args[0]).args(&args[1..]));
        show_output(&out, 6);
        demo.check(
            (code == 0) == allowed,
            format!(
                "cri-guard verify {image}: exit {code}, {}{note}",
                if code == 0 { "allowed" } else { "denied" }
            ),
        );
        if code != 0 && allowed {
            show_output(&err, 4);
        }
    }

    // -------------------------------------------------------------------------------- 3
    demo.step("3. Generate an SBOM from the image, attest it with cosign, and require it");
    let mut sboms = Vec::new();
    for (name, digest) in [("demo/app", &app_digest), ("demo/legacy", &legacy_digest)] {
        let out = dir.join(format!("{}.spdx.json", name.replace('/', "-")));
        let (files, path) = generate_sbom(&bed, name, digest, &out);
        demo.check(
            files > 0,
            format!(
                "SPDX 2.3 SBOM of {name}@{}: {files} files with SHA-256, package busybox-static -> {}",
                short(digest),
                path.file_name().unwrap().to_string_lossy()
            ),
        );
        sboms.push(path);
    }
    for ((image, format), sbom) in [(&app_ref, Format::New), (&legacy_ref, Format::Old)]
        .into_iter()
        .zip(&sboms)
    {
        let flag = match format {
            Format::New => "",
            Format::Old => " --new-bundle-format=false",
        };
        show_cmd(
            &dir,
            &[&format!(
                "cosign attest --key cosign.key --type spdxjson --predicate {}{flag} --tlog-upload=false {image}",
                sbom.file_name().unwrap().to_string_lossy()
            )],
        );
        let r = cosign.try_attest(image, "spdxjson", sbom, format);
        demo.check(r.is_ok(), format!("attested the SBOM of {image}"));
        if let Err(e) = r {
            demo.note(e);
        }
        let v = cosign.verify_attestation(image, "spdxjson");
        demo.check(
            v.is_ok(),
            format!("cosign verify-attestation --type spdxjson {image}"),
        );
    }
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "{header}\n[[rules]]\nname = \"demo\"\nimageReferences = [\"{reg}/demo/*\"]\n[[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n[[rules.attestations]]\npredicateType = \"spdxjson\"\n",
            key.display()
        ),
    )
    .unwrap();
    demo.note("policy.toml: policy-signed.toml plus, for demo/*, a signed SPDX SBOM:");
    demo.note("  [[rules.attestations]]  predicateType = \"spdxjson\"");
    for (image, allowed, note) in [
        (&app, true, " (Sigstore bundle)"),
        (&legacy, true, ""),
        (&nosbom, false, ""),
    ] {
        show_cmd(&dir, &["cri-guard verify --policy policy.toml", image]);
        let (code, out, _) = run(Command::new(&bin)
            .args(["verify", "--policy"])
            .arg(&policy)
            .arg(image));
        show_output(&out, 6);
        demo.check(
            (code == 0) == allowed,
            format!(
                "cri-guard verify {image}: {}{note}",
                if code == 0 { "allowed" } else { "denied" }
            ),
        );
    }

    // -------------------------------------------------------------------------------- 4
    demo.step("4. Install the guard on a node (the DaemonSet's installer, on a temp root)");
    let root = dir.join("node-root");
    for d in [
        "var/lib/kubelet",
        "usr/lib/systemd/system",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for unit in ["kubelet", "containerd"] {
        std::fs::write(
            root.join(format!("usr/lib/systemd/system/{unit}.service")),
            format!("[Unit]\nDescription={unit}\n[Service]\nExecStart=/usr/bin/{unit}\n[Install]\nWantedBy=multi-user.target\n"),
        )
        .unwrap();
    }
    std::fs::write(
        root.join("var/lib/kubelet/config.yaml"),
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n",
    )
    .unwrap();
    let src = dir.join("installer-src");
    std::fs::create_dir_all(src.join("policy")).unwrap();
    std::fs::copy(&key, src.join("policy/release.pub")).unwrap();
    let node_policy = std::fs::read_to_string(&policy)
        .unwrap()
        .replace(&key.display().to_string(), "release.pub");
    std::fs::write(src.join("policy/policy.toml"), node_policy).unwrap();
    std::fs::write(
        src.join("cri-guard.toml"),
        "policy = \"/etc/cri-guard/policy/policy.toml\"\n[metrics]\nlisten = \"127.0.0.1:9478\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    show_cmd(
        &dir,
        &[
            "CRI_GUARD_SET_KUBELET_ENDPOINT=true deploy/installer/cri-guard-node.sh --root $DEMO/node-root --offline install",
        ],
    );
    let (code, out, err) = run(Command::new("bash")
        .arg(repo.join("deploy/installer/cri-guard-node.sh"))
        .arg("--root")
        .arg(&root)
        .args(["--offline", "install"])
        .env("CRI_GUARD_SRC_BIN", &bin)
        .env("CRI_GUARD_SRC_UNIT", repo.join("systemd/cri-guard.service"))
        .env("CRI_GUARD_SRC_CONFIG", src.join("cri-guard.toml"))
        .env("CRI_GUARD_SRC_POLICY", src.join("policy"))
        .env("CRI_GUARD_SET_KUBELET_ENDPOINT", "true")
        .env("TMPDIR", &dir));
    show_output(&out, 40);
    show_output(&err, 10);
    demo.check(code == 0, format!("installer exit {code}"));
    let kubelet = std::fs::read_to_string(root.join("var/lib/kubelet/config.yaml")).unwrap();
    demo.check(
        kubelet.contains("containerRuntimeEndpoint: unix:///run/cri-guard/cri-guard.sock")
            && kubelet.contains("imageServiceEndpoint: unix:///run/cri-guard/cri-guard.sock"),
        "the kubelet's runtime and image endpoints point at cri-guard (original backed up)",
    );
    demo.check(
        root.join("etc/systemd/system/cri-guard.service").is_file()
            && std::fs::symlink_metadata(
                root.join("etc/systemd/system/kubelet.service.wants/cri-guard.service"),
            )
            .is_ok()
            && root.join("etc/cri-guard/policy/policy.toml").is_file(),
        "unit installed and enabled before the kubelet; policy in /etc/cri-guard/policy",
    );

    println!("\n   Start it as the unit would, in front of this demo's containerd:");
    let guard_sock = dir.join("cri-guard.sock");
    let metrics_addr = format!("127.0.0.1:{}", support::util::free_port());
    let config = dir.join("cri-guard.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{}\"\nupstream = \"{}\"\npolicy = \"{}\"\n\n[metrics]\nlisten = \"{metrics_addr}\"\n\n[log]\nformat = \"json\"\n",
            guard_sock.display(),
            sock.display(),
            policy.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(Command::new(&bin).arg("check-config").arg(&config));
    show_cmd(&dir, &["cri-guard check-config $DEMO/cri-guard.toml"]);
    show_output(&out, 4);
    show_output(&err, 8);
    demo.check(code == 0, "configuration and policy valid");
    let log = dir.join("cri-guard.log");
    let t0 = Instant::now();
    let child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start cri-guard");
    let mut guard = Guard {
        child,
        socket: guard_sock.clone(),
        log: log.clone(),
        metrics: metrics_addr.clone(),
    };
    let up = support::util::poll_until(Duration::from_secs(10), Duration::from_micros(500), || {
        std::os::unix::net::UnixStream::connect(&guard.socket).is_ok()
    });
    demo.check(
        up,
        format!(
            "cri-guard serving on {} after {:?} (the kubelet's containerRuntimeEndpoint)",
            guard.socket.display(),
            t0.elapsed()
        ),
    );
    support::util::poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
        http_get(&guard.metrics, "/healthz").0 == 200
    });
    let (status, body) = http_get(&guard.metrics, "/readyz");
    demo.check(
        status == 200,
        format!(
            "GET http://{}/readyz -> {status} {}",
            guard.metrics,
            body.trim()
        ),
    );
    let mut rt = cri::runtime_client(&guard_sock);
    let img = cri::image_client(&guard_sock);
    // Calls that go through the guard's decision (for the decision log check below).
    let mut intercepted = 0usize;

    // -------------------------------------------------------------------------------- 5
    demo.step("5. Audit every image in the registry against the policy");
    show_cmd(&dir, &["cri-guard audit --policy policy.toml", &reg]);
    let (code, out, err) = run(Command::new(&bin)
        .args(["audit", "--policy"])
        .arg(&policy)
        .arg(&reg));
    show_output(&out, 20);
    show_output(&err, 5);
    let line_for = |image: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{image} ")))
            .unwrap_or("")
            .to_string()
    };
    demo.check(
        code == 1,
        format!("exit {code}: some images would be refused"),
    );
    demo.check(
        line_for(&legacy).contains(" pass "),
        "demo/legacy passes (old-format signature and SBOM)",
    );
    demo.check(
        line_for(&app).contains(" pass "),
        "demo/app passes (Sigstore bundle signature and SBOM attestation)",
    );
    demo.check(
        line_for(&unsigned).contains(" FAIL ") && line_for(&nosbom).contains(" FAIL "),
        "demo/unsigned and demo/nosbom FAIL",
    );

    // -------------------------------------------------------------------------------- 6
    demo.step("6. A pod with the unsigned image, through cri-guard as the kubelet runs it");
    let pod_name = support::unique_name("web");
    let sandbox_config = support::sandbox_config(&pod_name, "default");
    intercepted += 1;
    let sandbox = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id);
    let sandbox_id = match &sandbox {
        Ok(id) => id.clone(),
        Err(e) => {
            demo.check(false, format!("RunPodSandbox: {e:?}"));
            String::new()
        }
    };
    demo.check(
        !sandbox_id.is_empty(),
        format!(
            "RunPodSandbox default/{pod_name} -> {} (the pause image: a `skip` rule)",
            short(&sandbox_id)
        ),
    );
    let pull = |image: String| {
        let mut img = img.clone();
        let config = sandbox_config.clone();
        async move {
            img.pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image,
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: Some(config),
            })
            .await
            .map(|r| r.into_inner().image_ref)
        }
    };
    intercepted += 1;
    match pull(unsigned.clone()).await {
        Ok(r) => {
            demo.check(false, format!("PullImage {unsigned} was allowed: {r}"));
        }
        Err(e) => {
            demo.check(
                e.code() == tonic::Code::Unknown
                    && e.message().starts_with("SignatureValidationFailed: "),
                format!("PullImage {unsigned} -> {:?}: {}", e.code(), e.message()),
            );
            demo.note(format!(
                "kubectl describe pod: {}",
                kubelet_view(&unsigned, &e)
            ));
        }
    }
    demo.check(
        !in_store(&sock, &unsigned).await,
        "containerd's own store has no demo/unsigned: nothing reached it",
    );

    // -------------------------------------------------------------------------------- 7
    demo.step("7. A pod with the signed image: it runs");
    let mut container_id = String::new();
    intercepted += 1;
    match pull(app.clone()).await {
        Ok(image_ref) => {
            demo.check(true, format!("PullImage {app} -> {}", short(&image_ref)));
            let mut config = support::container_config("app", &image_ref, &["/bin/sleep", "3600"]);
            config.image.as_mut().unwrap().user_specified_image = app.clone();
            intercepted += 1;
            match rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sandbox_id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config.clone()),
                })
                .await
            {
                Ok(r) => {
                    container_id = r.into_inner().container_id;
                    demo.check(true, format!("CreateContainer -> {}", short(&container_id)));
                }
                Err(e) => {
                    demo.check(
                        false,
                        format!("CreateContainer: {:?} {}", e.code(), e.message()),
                    );
                }
            }
        }
        Err(e) => {
            demo.check(
                false,
                format!("PullImage {app} -> {:?}: {}", e.code(), e.message()),
            );
        }
    }
    if !container_id.is_empty() {
        let started_ok = rt
            .start_container(cri::StartContainerRequest {
                container_id: container_id.clone(),
            })
            .await
            .is_ok();
        demo.check(started_ok, "StartContainer");
        let exec = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: container_id.clone(),
                cmd: vec![
                    "echo".into(),
                    "hello from a signed pod behind cri-guard".into(),
                ],
                timeout: 10,
            })
            .await
            .map(|r| {
                String::from_utf8_lossy(&r.into_inner().stdout)
                    .trim()
                    .to_string()
            });
        demo.check(
            exec.as_deref().ok() == Some("hello from a signed pod behind cri-guard"),
            format!("ExecSync -> {exec:?}"),
        );
    }

    // -------------------------------------------------------------------------------- 8
    demo.step("8. An unsigned image imported straight into containerd (around cri-guard)");
    let archive = support::image::archive("sneaked", &dir.join("sneaked.tar"));
    let imported = format!("{reg}/demo/sneaked");
    show_cmd(
        &dir,
        &[
            "ctr -n k8s.io image import --base-name",
            &imported,
            "sneaked.tar",
        ],
    );
    let names = tokio::task::block_in_place(|| bed.ctr_import(&archive, &imported));
    demo.check(
        in_store(&sock, &names[0]).await,
        format!("containerd holds {}", names[0]),
    );
    let mut config = support::container_config("sneaky", &names[0], &["/bin/sleep", "3600"]);
    config.image.as_mut().unwrap().user_specified_image = names[0].clone();
    intercepted += 1;
    let refused = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await;
    match refused {
        Ok(_) => {
            demo.check(false, "CreateContainer from the imported image was allowed");
        }
        Err(e) => {
            demo.check(
                e.message().contains("has no registry digest"),
                format!("CreateContainer from it -> {:?}: {}", e.code(), e.message()),
            );
        }
    }
    let count = cri::runtime_client(&sock)
        .list_containers(cri::ListContainersRequest::default())
        .await
        .map(|r| r.into_inner().containers.len())
        .unwrap_or(usize::MAX);
    demo.check(
        count == usize::from(!container_id.is_empty()),
        format!("containerd has {count} container(s): only the signed app's"),
    );
    show_cmd(
        &dir,
        &[
            "cri-guard audit --policy policy.toml --node --runtime",
            &sock.display().to_string(),
        ],
    );
    let (code, out, _) = run(Command::new(&bin)
        .args(["audit", "--policy"])
        .arg(&policy)
        .arg("--node")
        .arg("--runtime")
        .arg(&sock));
    show_output(&out, 20);
    demo.check(
        code == 1
            && out
                .lines()
                .any(|l| l.contains("demo/sneaked") && l.contains(" FAIL ")),
        "audit --node lists the imported image as one that would now be refused",
    );

    // -------------------------------------------------------------------------------- 9
    demo.step("9. Metrics (Prometheus, on the listener of [metrics] listen)");
    let (status, text) = http_get(&guard.metrics, "/metrics");
    show_cmd(
        &dir,
        &[&format!(
            "curl -s http://{}/metrics | grep -E '^cri_guard_(decisions|cache_(hits|misses)|upstream_up|policy_generation)'",
            guard.metrics
        )],
    );
    let shown: Vec<&str> = text
        .lines()
        .filter(|l| {
            [
                "cri_guard_decisions_total",
                "cri_guard_cache_hits_total",
                "cri_guard_cache_misses_total",
                "cri_guard_upstream_up",
                "cri_guard_policy_generation",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .collect();
    show_output(&shown.join("\n"), 30);
    let denials: f64 = text
        .lines()
        .filter(|l| l.starts_with("cri_guard_decisions_total{") && l.contains("result=\"deny\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    demo.check(
        status == 200 && denials >= 2.0,
        format!("{denials} denials counted (the unsigned pull, the imported image's create)"),
    );
    demo.check(
        text.contains("cri_guard_upstream_up 1"),
        "the runtime answers (cri_guard_upstream_up 1)",
    );

    // ------------------------------------------------------------------------------- 10
    demo.step("10. The decision log: one JSON line per intercepted call");
    let logged = std::fs::read_to_string(&guard.log).unwrap_or_default();
    let decisions: Vec<serde_json::Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "decision")
        .collect();
    for d in &decisions {
        let f = d;
        println!(
            "     {:<5} {:<15} {:<55} {:<10} {}",
            d["level"].as_str().unwrap_or(""),
            f["method"].as_str().unwrap_or(""),
            f["image"].as_str().unwrap_or(""),
            f["result"].as_str().unwrap_or(""),
            f["reason"].as_str().unwrap_or("")
        );
    }
    if let Some(first) = decisions.iter().find(|d| d["result"] == "deny") {
        println!("     one line in full:\n     {first}");
    }
    demo.check(
        decisions.len() == intercepted,
        format!(
            "{} decision lines for {intercepted} intercepted calls",
            decisions.len()
        ),
    );

    // ------------------------------------------------------------------------------- 11
    demo.step("11. A policy update reaches the running guard: reloaded on file change, no restart");
    let metric = |name: &str| -> Option<f64> {
        let (_, text) = http_get(&guard.metrics, "/metrics");
        text.lines()
            .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    // As an editor or a ConfigMap update does it: a new file renamed over the old one.
    let replace = |text: &str| {
        let tmp = dir.join(".policy.toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &policy).unwrap();
    };
    let before = metric("cri_guard_policy_generation").unwrap_or(-1.0);
    show_cmd(
        &dir,
        &["printf '[[rules]\\nname = \"broken\\n' > $DEMO/policy.toml   # a broken edit"],
    );
    replace("[[rules]\nname = \"broken\n");
    let refused =
        support::util::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            metric("cri_guard_policy_last_reload_success") == Some(0.0)
        });
    let (_, ready) = http_get(&guard.metrics, "/readyz");
    demo.check(
        refused && metric("cri_guard_policy_generation") == Some(before),
        format!(
            "the broken policy is refused (cri_guard_policy_last_reload_success 0); generation {before} stays in force: /readyz -> {}",
            ready.trim()
        ),
    );
    demo.check(
        pull(nosbom.clone()).await.is_err(),
        format!("PullImage {nosbom} still refused under the policy in force (no SBOM)"),
    );
    demo.note("policy.toml <- policy-signed.toml: the SBOM requirement dropped for demo/*");
    replace(&std::fs::read_to_string(&sign_policy).unwrap());
    let reloaded =
        support::util::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            metric("cri_guard_policy_generation").is_some_and(|g| g > before)
                && metric("cri_guard_policy_last_reload_success") == Some(1.0)
        });
    let generation = metric("cri_guard_policy_generation").unwrap_or(-1.0);
    let success = metric("cri_guard_policy_last_reload_success").unwrap_or(-1.0);
    demo.check(
        reloaded,
        format!(
            "reloaded without a restart: cri_guard_policy_generation {generation}, cri_guard_policy_last_reload_success {success}"
        ),
    );
    match pull(nosbom.clone()).await {
        Ok(r) => demo.check(
            true,
            format!(
                "PullImage {nosbom} -> {} (signed; no SBOM needed now)",
                short(&r)
            ),
        ),
        Err(e) => demo.check(false, format!("PullImage {nosbom} after the reload: {e:?}")),
    };

    // ------------------------------------------------------------------------------- more
    demo.step(
        "12. Keyless: a real cosign keyless signature (Fulcio certificate + Rekor bundle), offline",
    );
    keyless(&mut demo, &bin, &bed);

    demo.step("13. Side doors are closed: the deprecated runtime.v1alpha2 API is refused");
    let mut grpc = tonic::client::Grpc::new(cri::channel(&guard_sock));
    let alpha = match grpc.ready().await {
        Ok(()) => {
            let codec =
                tonic_prost::ProstCodec::<cri::VersionRequest, cri::VersionResponse>::default();
            let path =
                http::uri::PathAndQuery::from_static("/runtime.v1alpha2.RuntimeService/Version");
            grpc.unary(
                tonic::Request::new(cri::VersionRequest::default()),
                path,
                codec,
            )
            .await
        }
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    match alpha {
        Err(s) => demo.check(
            s.code() == tonic::Code::Unimplemented,
            format!(
                "runtime.v1alpha2 Version -> {:?}: {}",
                s.code(),
                s.message()
            ),
        ),
        Ok(_) => demo.check(false, "runtime.v1alpha2 was answered"),
    };

    demo.step(
        "14. containerd restarts under cri-guard: calls fail fast, then recover by themselves",
    );
    tokio::task::block_in_place(|| bed.containerd.kill());
    let err = rt.version(cri::VersionRequest::default()).await;
    demo.check(
        matches!(&err, Err(e) if e.code() == tonic::Code::Unavailable),
        format!(
            "containerd killed -> {}",
            match &err {
                Err(e) => format!("{:?}: {}", e.code(), e.message()),
                Ok(_) => "answered".into(),
            }
        ),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = http_get(&guard.metrics, "/readyz");
    demo.check(
        status == 503,
        format!("/readyz -> {status} {}", body.trim()),
    );
    tokio::task::block_in_place(|| bed.containerd.start_again());
    let v = rt.version(cri::VersionRequest::default()).await;
    demo.check(
        v.is_ok(),
        format!(
            "containerd back -> Version: {}",
            v.map(|v| {
                let v = v.into_inner();
                format!("{} {}", v.runtime_name, v.runtime_version)
            })
            .unwrap_or_else(|e| e.message().to_string())
        ),
    );
    std::thread::sleep(Duration::from_millis(1100));
    let (status, _) = http_get(&guard.metrics, "/readyz");
    demo.check(status == 200, format!("/readyz -> {status} again"));

    demo.step("15. Clean up through cri-guard, then SIGTERM it");
    if !sandbox_id.is_empty() {
        let _ = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sandbox_id.clone(),
            })
            .await;
        let removed = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: sandbox_id,
            })
            .await;
        demo.check(removed.is_ok(), "pod removed");
    }
    drop((rt, img));
    let status = guard.terminate();
    demo.check(
        status.is_some_and(|s| s.success()) && !guard_sock.exists(),
        format!("cri-guard exited on SIGTERM ({status:?}) and removed its socket"),
    );
    let pids = bed.pids();
    drop(bed);
    let alive: Vec<u32> = [pids.containerd, pids.registry]
        .into_iter()
        .flatten()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    demo.check(
        alive.is_empty() && !dir.exists(),
        "containerd, registry and shims stopped by PID; the temp dir is gone",
    );

    println!(
        "\n{} checks, {} failed, in {:.0?}",
        demo.checks,
        demo.failed.len(),
        started.elapsed()
    );
    if !demo.failed.is_empty() {
        println!("Outcomes that differed from the expected ones:");
        for f in &demo.failed {
            println!("  - {f}");
        }
        std::process::exit(1);
    }
    println!("Demo finished: every outcome as expected.");
}

/// The real cosign keyless vector `fulcio-rekor-valid` (../shared/testdata/cosign-real) pushed
/// where cosign puts it, checked by `cri-guard verify` against a keyless attestor with the
/// Fulcio root and Rekor key from files: allowed for the signer's identity, denied for another.
/// Its certificate expired in 2023; it is checked at the Rekor integration time.
fn keyless(demo: &mut Demo, bin: &Path, bed: &support::TestBed) {
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
    support::sign::push_attachment(
        bed.registry.addr(),
        None,
        repo,
        digest,
        "sig",
        &[(
            support::sign::SIMPLESIGNING,
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
    demo.note(format!(
        "pushed the keyless signature of {repo} (made by cosign in January 2023)"
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
        let (code, out, _) = run(Command::new(bin)
            .args(["verify", "--policy"])
            .arg(&policy)
            .arg(&image));
        show_cmd(
            bed.dir.path(),
            &[&format!("cri-guard verify --policy {name}.toml"), &image],
        );
        show_output(&out, 4);
        let want_allowed = name == "keyless";
        demo.check(
            (code == 0) == want_allowed,
            format!(
                "keyless signer {subject}: {}",
                if code == 0 { "allowed" } else { "denied" }
            ),
        );
    }
}
