//! Test images: one OCI layout per process, built with umoci from busybox-static, and a tiny
//! registry client that pushes a tag of it (blobs + manifest) over HTTP.
//!
//! Why not `skopeo copy`: run as root, skopeo writes its blob-info cache to
//! `/var/lib/containers/cache` and has no option to move it; the test bed must leave nothing under
//! /var. Pushing from the layout ourselves is a few HTTP requests and much faster than a process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::util::{base64, http, path_str, require_bin, require_static_busybox, run};

/// Env var (and label `cri-guard.test.variant`) that distinguishes image variants.
pub const VARIANT_ENV: &str = "CRI_GUARD_VARIANT";

/// The per-process OCI layout with tags `base` (busybox, cmd `sh`), `pause` (the sandbox image:
/// `tail -f /dev/null`, deliberately not `sleep`) and `v<hex>` per variant.
pub struct Layout {
    pub dir: PathBuf,
    /// Tags already created; also serialises umoci runs (they rewrite index.json).
    tags: Mutex<HashSet<String>>,
}

static LAYOUT: OnceLock<Layout> = OnceLock::new();

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

unsafe extern "C" {
    fn atexit(cb: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn remove_layout_at_exit() {
    if let Some(l) = LAYOUT.get() {
        let _ = std::fs::remove_dir_all(&l.dir);
    }
}

/// The process-wide layout, built on first use (about 0.1 s).
pub fn layout() -> &'static Layout {
    LAYOUT.get_or_init(|| {
        sweep_stale_layouts();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cgimg{}.", std::process::id()))
            .tempdir_in("/tmp")
            .expect("temp dir for the OCI layout")
            .keep();
        // A static is never dropped: remove the layout when the process exits normally.
        // SAFETY: registering a plain extern "C" fn with libc's atexit.
        unsafe { atexit(remove_layout_at_exit) };
        build_layout(&dir);
        Layout {
            dir,
            tags: Mutex::new(["base".into(), "pause".into()].into()),
        }
    })
}

/// Removes layouts left by test processes that died without running atexit handlers.
fn sweep_stale_layouts() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("cgimg").and_then(|r| r.split('.').next()) else {
            continue;
        };
        if let Ok(pid) = pid.parse::<u32>() {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn umoci() -> Command {
    Command::new(require_bin("umoci", "umoci"))
}

fn build_layout(dir: &Path) {
    let busybox = require_static_busybox();
    let lay = dir.join("oci");
    let bundle = dir.join("bundle");
    let image = |tag: &str| format!("{}:{tag}", path_str(&lay));
    run(umoci().args(["init", "--layout", path_str(&lay)]));
    run(umoci().args(["new", "--image", &image("base")]));
    run(umoci().args(["unpack", "--image", &image("base"), path_str(&bundle)]));
    let rootfs = bundle.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["tmp", "etc", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(&busybox, bin.join("busybox")).unwrap();
    let list = run(Command::new(&busybox).arg("--list"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    run(umoci().args(["repack", "--image", &image("base"), path_str(&bundle)]));
    let _ = std::fs::remove_dir_all(&bundle);
    run(umoci().args(["config", "--image", &image("base")]).args([
        "--config.env",
        PATH_ENV,
        "--config.cmd",
        "sh",
        "--config.workingdir",
        "/",
    ]));
    run(umoci()
        .args(["config", "--image", &image("base"), "--tag", "pause"])
        .args([
            "--config.entrypoint",
            "/bin/tail",
            "--config.entrypoint",
            "-f",
            "--config.entrypoint",
            "/dev/null",
            "--clear=config.cmd",
        ]));
}

/// The layout tag for `variant` (None: the plain busybox image), created on first use.
pub fn layout_tag(variant: Option<&str>) -> String {
    let l = layout();
    let Some(variant) = variant else {
        return "base".into();
    };
    let tag: String = std::iter::once("v".to_string())
        .chain(variant.bytes().map(|b| format!("{b:02x}")))
        .collect();
    let mut tags = l.tags.lock().unwrap_or_else(|e| e.into_inner());
    if !tags.contains(&tag) {
        let image = format!("{}:base", path_str(&l.dir.join("oci")));
        run(umoci()
            .args(["config", "--image", &image, "--tag", &tag])
            .args([
                "--config.env".to_string(),
                format!("{VARIANT_ENV}={variant}"),
                "--config.label".to_string(),
                format!("cri-guard.test.variant={variant}"),
            ]));
        tags.insert(tag.clone());
    }
    tag
}

/// An OCI archive (for `ctr image import`) holding only the layout tag of `variant` (made on
/// first use): an image no registry has, e.g. one built or imported on the node.
pub fn archive(variant: &str, dest: &Path) -> PathBuf {
    archive_of_tag(&layout_tag(Some(variant)), dest)
}

/// An OCI archive holding only layout tag `tag` (`base`, `pause`, `v<hex>`). Its index is
/// read under the layout's lock, so a variant being added at the same time cannot tear it.
pub fn archive_of_tag(tag: &str, dest: &Path) -> PathBuf {
    let tag = tag.to_string();
    let l = layout();
    let index = {
        let _guard = l.tags.lock().unwrap_or_else(|e| e.into_inner());
        read_json(&l.dir.join("oci/index.json"))
    };
    let desc = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag.as_str())
        .unwrap_or_else(|| panic!("tag {tag} not in the OCI layout"))
        .clone();
    let work = dest.with_extension("layout");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(l.dir.join("oci/oci-layout"), work.join("oci-layout")).unwrap();
    let one = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
    std::fs::write(work.join("index.json"), one.to_string()).unwrap();
    run(Command::new("tar")
        .arg("-cf")
        .arg(dest)
        .arg("-C")
        .arg(&work)
        .args(["oci-layout", "index.json"])
        .arg("-C")
        .arg(l.dir.join("oci"))
        .arg("blobs"));
    let _ = std::fs::remove_dir_all(&work);
    dest.to_path_buf()
}

fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("digest alg:hex");
    layout.join("oci/blobs").join(alg).join(hex)
}

/// The manifest digest, manifest bytes and media type of a layout tag.
fn manifest_of(layout_tag: &str) -> (String, Vec<u8>, String) {
    let l = layout();
    let index = {
        let _guard = l.tags.lock().unwrap_or_else(|e| e.into_inner());
        read_json(&l.dir.join("oci/index.json"))
    };
    let desc = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == layout_tag)
        .unwrap_or_else(|| panic!("tag {layout_tag} not in the OCI layout"));
    let digest = desc["digest"].as_str().unwrap().to_string();
    let media = desc["mediaType"].as_str().unwrap().to_string();
    let bytes = std::fs::read(blob_path(&l.dir, &digest)).unwrap();
    (digest, bytes, media)
}

/// Pushes layout tag `layout_tag` to `registry` (host:port) as `name:tag`; returns
/// (`host:port/name:tag`, manifest digest). `auth` is basic-auth user and password.
pub fn push(
    registry: &str,
    auth: Option<(&str, &str)>,
    layout_tag: &str,
    name: &str,
    tag: &str,
) -> (String, String) {
    let l = layout();
    let (digest, manifest, media) = manifest_of(layout_tag);
    let parsed: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let blobs = std::iter::once(&parsed["config"])
        .chain(parsed["layers"].as_array().into_iter().flatten())
        .map(|d| d["digest"].as_str().unwrap().to_string());
    let authz = auth.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
    let mut hdrs: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &authz {
        hdrs.push(("Authorization", a));
    }
    let req = |method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]| {
        let all: Vec<(&str, &str)> = hdrs.iter().chain(extra).copied().collect();
        http(registry, method, path, &all, body)
            .unwrap_or_else(|e| panic!("registry {registry}: {method} {path}: {e}"))
    };
    for blob in blobs {
        let head = req("HEAD", &format!("/v2/{name}/blobs/{blob}"), &[], b"");
        if head.status == 200 {
            continue;
        }
        let data = std::fs::read(blob_path(&l.dir, &blob)).unwrap();
        let start = req("POST", &format!("/v2/{name}/blobs/uploads/"), &[], b"");
        assert_eq!(
            start.status,
            202,
            "start upload to {registry}/{name}: {}",
            start.text()
        );
        let location = start
            .header("Location")
            .expect("upload Location")
            .to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", blob.replace(':', "%3A"));
        let put = req(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            &data,
        );
        assert_eq!(
            put.status,
            201,
            "upload {blob} to {registry}/{name}: {}",
            put.text()
        );
    }
    let put = req(
        "PUT",
        &format!("/v2/{name}/manifests/{tag}"),
        &[("Content-Type", &media)],
        &manifest,
    );
    assert_eq!(
        put.status,
        201,
        "push manifest {registry}/{name}:{tag}: {}",
        put.text()
    );
    if let Some(d) = put.header("Docker-Content-Digest") {
        assert_eq!(d, digest, "registry computed another manifest digest");
    }
    (format!("{registry}/{name}:{tag}"), digest)
}
