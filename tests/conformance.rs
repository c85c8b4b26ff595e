//! The Sigstore community's client conformance cases (`../shared/testdata/sigstore-conformance`,
//! 47 bundle-verification cases with `cases.json`) through the real binary's
//! `cri-guard verify-bundle`, the suite's client protocol: every case, with the artifact given
//! as a path and as `sha256:<hex>`, must give the result the case expects. Expected results
//! are read from `cases.json`, never written here.
//!
//! A rejection must be a verification failure (exit 1), except for the cases whose input is
//! unusable by design and is refused before any bundle is read (exit 64): a trusted root
//! missing a required field, and a malformed key. So a case cannot pass because the trusted
//! root or key failed to load.
//!
//! Without the folder (e.g. outside this workspace) the test prints a notice and passes.

mod shared;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

/// Cases whose input (not the bundle) is unusable; they are refused with exit 64.
const UNUSABLE_INPUT: [&str; 2] = [
    // The trusted root's tlog has a validFor without `start` (a required field).
    "trust-root-tlog-missing-validity-start_fail",
    // The key's PEM body is not base64.
    "managed-key-wrong-key_fail",
];

fn s<'a>(case: &'a Value, field: &str) -> Option<&'a str> {
    case.get(field).and_then(Value::as_str)
}

/// Runs `verify-bundle` for one case; returns the exit code and the output.
fn run(dir: &Path, case: &Value, artifact: &str) -> (i32, String) {
    let path = |field: &str| dir.join(s(case, field).unwrap_or_else(|| panic!("{field}")));
    let mut cmd = Command::new(BIN);
    cmd.arg("verify-bundle")
        .arg("--bundle")
        .arg(path("bundle"))
        .arg("--trusted-root")
        .arg(path("trusted_root"));
    match (s(case, "key"), s(case, "identity"), s(case, "issuer")) {
        (Some(_), _, _) => {
            cmd.arg("--key").arg(path("key"));
        }
        (None, Some(identity), Some(issuer)) => {
            cmd.args([
                "--certificate-identity",
                identity,
                "--certificate-oidc-issuer",
                issuer,
            ]);
        }
        _ => panic!("case without key or identity: {case}"),
    }
    let out = cmd.arg(artifact).output().expect("run cri-guard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text.trim().to_owned())
}

/// Every conformance case, artifact as a path and as a digest, gives its expected result;
/// a rejection is a verification failure unless the case's input is unusable by design.
#[test]
fn sigstore_conformance_cases() {
    let Some(dir) = shared::dir("testdata/sigstore-conformance") else {
        eprintln!(
            "notice: shared/testdata/sigstore-conformance is absent; conformance test skipped"
        );
        return;
    };
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let cases: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases = cases["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 47, "the folder holds 47 cases");
    let mut wrong = Vec::new();
    let mut runs = 0;
    for case in cases {
        let name = s(case, "name").expect("name");
        let verified = match s(case, "expect") {
            Some("verified") => true,
            Some("rejected") => false,
            other => panic!("{name}: expect is {other:?}"),
        };
        let artifact_path = dir.join(s(case, "artifact").expect("artifact"));
        let bytes = std::fs::read(&artifact_path).expect("artifact");
        let digest = format!(
            "sha256:{}",
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        for (form, artifact) in [
            ("path", artifact_path.to_str().unwrap().to_owned()),
            ("digest", digest),
        ] {
            runs += 1;
            let (code, out) = run(&dir, case, &artifact);
            let expected_code = match (verified, UNUSABLE_INPUT.contains(&name)) {
                (true, _) => 0,
                (false, true) => 64,
                (false, false) => 1,
            };
            println!("{name} ({form}): exit {code}: {out}");
            if code != expected_code {
                wrong.push(format!(
                    "{name} ({form}): expected exit {expected_code}, got {code}: {out}"
                ));
            }
            // One line, whatever the outcome.
            if out.lines().count() != 1 {
                wrong.push(format!("{name} ({form}): not one line: {out:?}"));
            }
        }
    }
    println!(
        "conformance: {}/{runs} runs right ({} cases x path and digest)",
        runs - wrong.len(),
        cases.len()
    );
    assert!(
        wrong.is_empty(),
        "conformance failures:\n{}",
        wrong.join("\n")
    );
}
