//! `cri-guard audit` of registries through the real binary: a real registry (docker-registry
//! 2.8 with basic auth) holding a few hundred images, walked page by page with credentials from
//! a docker config. (`--node`: tests/audit_node.rs.)

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::Registry;
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

/// image -> verdict of every row.
fn verdicts(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["image"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A manifest of the test image that differs from it (and from every other `n`) only by an
/// annotation: a distinct image digest over the same blobs, so hundreds of images cost one
/// blob upload per repository.
fn variant_manifest(base: &serde_json::Value, n: usize) -> Vec<u8> {
    let mut m = base.clone();
    m["annotations"] = serde_json::json!({ "cri-guard.test/n": n.to_string() });
    serde_json::to_vec(&m).unwrap()
}

fn docker_config(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    let path = dir.join("docker-config.json");
    let auth = support::util::base64(format!("{user}:{password}").as_bytes());
    std::fs::write(
        &path,
        serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string(),
    )
    .unwrap();
    path
}

/// A registry with 300 images under `team/` (12 repositories x 25 tags) and one outside it,
/// behind basic auth: walked with `n=7` (the registry pages its catalog by it), with the
/// credentials of a docker config. Every image under the prefix is decided exactly once, with
/// the verdict its signature calls for; cosign's `.sig` tags and the image outside the prefix
/// are not rows; the exit code says some failed; the password never appears in the output.
#[test]
fn audit_walks_a_registry_with_hundreds_of_images() {
    support::util::require_root();
    let dir = support::util::short_tempdir("cga");
    let (user, password) = ("auditor", "s3cret-audit-pw");
    let reg = Registry::with_htpasswd(&dir.path().join("registry"), user, password);
    let addr = reg.addr().to_string();
    let auth = Some((user, password));
    let release = TestKey::p256();
    let stranger = TestKey::p256();
    let key_path = release.write_public(dir.path(), "release");

    // What each image should come out as, built while pushing.
    let mut expected: BTreeMap<String, &str> = BTreeMap::new();
    for r in 0..12 {
        let repo = format!("team/app{r:02}");
        let (_, base_digest) = reg.push(&repo, "base", None);
        let (media, base) = reg.manifest(&repo, &base_digest).expect("base manifest");
        let base: serde_json::Value = serde_json::from_slice(&base).unwrap();
        for t in 0..25 {
            let tag = if t == 0 {
                "base".to_string()
            } else {
                format!("v{t}")
            };
            let digest = if t == 0 {
                base_digest.clone()
            } else {
                sign::push_manifest(
                    &addr,
                    auth,
                    &repo,
                    &tag,
                    &media,
                    &variant_manifest(&base, r * 100 + t),
                )
            };
            // Every third image signed by the release key, every fifth (of the rest) by a
            // stranger, the others not at all.
            let verdict = if t % 3 == 0 {
                sign::sign_image(&addr, auth, &repo, &digest, &release);
                "pass"
            } else if t % 5 == 0 {
                sign::sign_image(&addr, auth, &repo, &digest, &stranger);
                "fail"
            } else {
                "fail"
            };
            expected.insert(format!("{addr}/{repo}:{tag}"), verdict);
        }
    }
    // Outside the prefix (`team-signed` merely starts with it): not walked; every tag signed.
    reg.push("elsewhere/app", "v1", None);
    let (_, d) = reg.push("team-signed/app", "a", None);
    sign::sign_image(&addr, auth, "team-signed/app", &d, &release);
    let (media, base) = reg.manifest("team-signed/app", &d).expect("manifest");
    let base: serde_json::Value = serde_json::from_slice(&base).unwrap();
    for (n, tag) in ["b", "c"].into_iter().enumerate() {
        let m = variant_manifest(&base, 10_000 + n);
        let d = sign::push_manifest(&addr, auth, "team-signed/app", tag, &media, &m);
        sign::sign_image(&addr, auth, "team-signed/app", &d, &release);
    }

    // The registry really pages its catalog by `n`, so the walk has to follow its links.
    let authz = format!(
        "Basic {}",
        support::util::base64(format!("{user}:{password}").as_bytes())
    );
    let page = support::util::http(
        &addr,
        "GET",
        "/v2/_catalog?n=7",
        &[("Authorization", &authz)],
        b"",
    )
    .unwrap();
    assert!(page.header("Link").is_some(), "{}", page.text());
    let first: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(first["repositories"].as_array().unwrap().len(), 7);

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "default = \"enforce\"\n[registries.\"{addr}\"]\ninsecure = true\n\
             [[rules]]\nname = \"team\"\nimageReferences = [\"{addr}/team/*\", \"{addr}/team-signed/*\"]\n\
             [[rules.attestors]]\nname = \"release\"\nkey = \"{}\"\n",
            key_path.display()
        ),
    )
    .unwrap();
    let config = docker_config(dir.path(), &addr, user, password);
    let target = format!("{addr}/team");
    let (code, report, stderr) = audit_json(&[
        "--policy",
        policy.to_str().unwrap(),
        "--docker-config",
        config.to_str().unwrap(),
        "--page-size",
        "7",
        "--concurrency",
        "8",
        &target,
    ]);
    let got = verdicts(&report);
    let want: BTreeMap<String, String> = expected
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    assert_eq!(got.len(), 300, "{stderr}");
    assert_eq!(got, want);
    let summary = &report["summary"];
    assert_eq!(summary["total"], 300);
    assert_eq!(summary["pass"], 12 * 9);
    assert_eq!(summary["complete"], true, "{report}");
    assert_eq!(code, 1, "some images fail: exit 1");
    // Who signed, and why the others fail.
    let rows = report["rows"].as_array().unwrap();
    let row = |image: &str| rows.iter().find(|r| r["image"] == image).unwrap().clone();
    let signed = row(&format!("{addr}/team/app00:v3"));
    assert_eq!(signed["signed_by"], serde_json::json!(["release"]));
    assert!(
        signed["digest"].as_str().unwrap().starts_with("sha256:"),
        "{signed}"
    );
    let stranger_signed = row(&format!("{addr}/team/app00:v5"));
    assert!(
        stranger_signed["reason"]
            .as_str()
            .unwrap()
            .contains("no valid signature"),
        "{stranger_signed}"
    );
    let unsigned = row(&format!("{addr}/team/app00:v1"));
    assert!(
        unsigned["reason"]
            .as_str()
            .unwrap()
            .contains("no signature found"),
        "{unsigned}"
    );
    let text = report.to_string();
    assert!(!text.contains(password) && !stderr.contains(password));

    // Without the credentials the catalog is refused: nothing is audited, and the exit code
    // says the audit is incomplete (2), not that images failed.
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let (code, report, _) = audit_json(&[
        "--policy",
        policy.to_str().unwrap(),
        "--docker-config",
        empty.to_str().unwrap(),
        &target,
    ]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["summary"]["total"], 0);
    assert!(
        report["incomplete"][0]
            .as_str()
            .unwrap()
            .contains("cannot list the repositories"),
        "{report}"
    );

    // A repository list instead of the catalog, in the table form: one repository of the walk
    // (9 of 25 pass: exit 1), then the one whose images are all signed (exit 0).
    let table = |repo: &str| {
        let out = Command::new(BIN)
            .args(["audit", "--policy", policy.to_str().unwrap()])
            .args(["--docker-config", config.to_str().unwrap()])
            .args(["--repository", repo])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.code(), text)
    };
    let (code, text) = table(&format!("{addr}/team/app03"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("25 images: 9 pass, 0 skip, 16 fail"),
        "{text}"
    );
    assert!(text.lines().next().unwrap().starts_with("IMAGE"), "{text}");
    let (code, text) = table(&format!("{addr}/team-signed/app"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("3 images: 3 pass, 0 skip, 0 fail"), "{text}");
}
