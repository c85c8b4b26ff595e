//! `cri-guard audit --node` through the real binary against a real containerd holding images
//! and running containers that reached it in every way: pulled around cri-guard, imported,
//! run under an older policy.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use support::TestBed;
use support::sign::{self, TestKey};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

/// Runs `cri-guard audit ARGS --output json`; returns (exit code, the JSON report, stderr).
fn audit_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(BIN)
        .arg("audit")
        .args(args)
        .args(["--output", "json"])
        .output()
        .expect("run cri-guard audit");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("audit output is not JSON ({e}):\n{stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// `audit --node` on a real containerd: the signed image and the container running it pass;
/// an unsigned image pulled straight from containerd, and one imported with `ctr`, fail; under
/// a new policy that trusts another key the running container (admitted under the old one)
/// fails too. The runtime itself is not changed by the audit.
#[tokio::test]
async fn audit_node_lists_what_would_now_be_refused() {
    let bed = TestBed::start().await;
    let reg = bed.registry.addr().to_string();
    let release = TestKey::p256();
    let key_path = release.write_public(bed.dir.path(), "release");
    let (signed, signed_digest) = bed.registry.push("node/signed", "v1", None);
    sign::sign_image(&reg, None, "node/signed", &signed_digest, &release);
    let (unsigned, _) = bed.registry.push("node/unsigned", "v1", Some("unsigned"));
    let sock = bed.containerd_socket();

    // Around cri-guard: a pod with the signed image, a pull of the unsigned one, an import.
    let pod = support::run_pod(&sock, &signed, "team-a").await;
    cri_guard::cri::image_client(&sock)
        .pull_image(cri_guard::cri::PullImageRequest {
            image: Some(cri_guard::cri::ImageSpec {
                image: unsigned.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("direct pull");
    let archive = support::image::archive("imported", &bed.dir.path().join("image.tar"));
    let imported = bed.ctr_import(&archive, &format!("{reg}/node/imported"));

    let policy = |name: &str, key: &Path| {
        let path = bed.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "default = \"enforce\"\nhostsDir = \"{}\"\n\
                 [[rules]]\nname = \"pause\"\nimageReferences = [\"{}\"]\nmode = \"skip\"\n\
                 [[rules]]\nname = \"node\"\nimageReferences = [\"{reg}/node/*\"]\n\
                 [[rules.attestors]]\nname = \"{name}\"\nkey = \"{}\"\n",
                bed.containerd.certs_dir().display(),
                bed.pause_image,
                key.display()
            ),
        )
        .unwrap();
        path
    };
    let images_before = bed.ctr(&["image", "ls", "-q"]).stdout;
    let old = policy("release", &key_path);
    let sock_arg = sock.to_str().unwrap().to_string();
    let (code, report, stderr) = audit_json(&[
        "--policy",
        old.to_str().unwrap(),
        "--node",
        "--runtime",
        &sock_arg,
    ]);
    let rows = report["rows"].as_array().expect("rows").clone();
    let find = |kind: &str, image: &str| {
        rows.iter()
            .find(|r| {
                r["kind"] == kind
                    && (r["image"] == image
                        || r["names"]
                            .as_array()
                            .is_some_and(|n| n.iter().any(|x| x == image)))
            })
            .unwrap_or_else(|| panic!("no {kind} row for {image} in {report}\n{stderr}"))
            .clone()
    };
    assert_eq!(find("image", &signed)["verdict"], "pass");
    assert_eq!(find("image", &unsigned)["verdict"], "fail");
    let imp = find("image", &imported[0]);
    assert_eq!(imp["verdict"], "fail");
    assert!(
        imp["reason"]
            .as_str()
            .unwrap()
            .contains("has no registry digest"),
        "{imp}"
    );
    assert_eq!(find("image", &bed.pause_image)["verdict"], "skip");
    let running = find("container", &signed);
    assert_eq!(running["verdict"], "pass", "{running}");
    assert_eq!(
        running["container"],
        format!("team-a/{}/main", pod.pod_name),
        "{running}"
    );
    assert_eq!(code, 1, "{report}");

    // The policy moves to another key: the running container would now be refused.
    let other = TestKey::p256().write_public(bed.dir.path(), "other");
    let new = policy("other", &other);
    let (code, report, _) = audit_json(&[
        "--policy",
        new.to_str().unwrap(),
        "--node",
        "--runtime",
        &sock_arg,
    ]);
    let running = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "container")
        .unwrap()
        .clone();
    assert_eq!(running["verdict"], "fail", "{running}");
    assert!(
        running["reason"]
            .as_str()
            .unwrap()
            .contains("no valid signature"),
        "{running}"
    );
    assert_eq!(code, 1);
    // An audit only reads: the store holds what it held.
    assert_eq!(bed.ctr(&["image", "ls", "-q"]).stdout, images_before);
    let listed: BTreeSet<String> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, BTreeSet::from(["image".into(), "container".into()]));
}
