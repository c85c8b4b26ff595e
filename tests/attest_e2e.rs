//! Required attestations end to end: a private containerd and registry per test, the verifier
//! in front of containerd, attestations made here with the sigstore crate's signer (DSSE over
//! in-toto statements, pushed where `cosign attest` puts them). Outcomes are what containerd
//! holds afterwards and the status the kubelet would get.

mod fakes;
mod guarded;
mod support;

use std::process::Command;

use guarded::{Guarded, assert_denied};
use serde_json::json;
use support::sign::{self, TestKey};

const SPDX: &str = "https://spdx.dev/Document";
const SLSA: &str = "https://slsa.dev/provenance/v0.2";
const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

fn sbom(name: &str) -> serde_json::Value {
    json!({ "spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": name, "packages": [] })
}

fn provenance(builder: &str) -> serde_json::Value {
    json!({ "builder": { "id": builder }, "buildType": "https://example.com/build@v1" })
}

/// The bed's registry, images signed by `test-key`, and a signed SBOM (`spdxjson`) required.
fn sbom_rules(bed: &support::TestBed, key: &std::path::Path) -> String {
    format!(
        "{}[[rules.attestations]]\npredicateType = \"spdxjson\"\n",
        guarded::enforce_rule(bed, key)
    )
}

/// An image with a signed SBOM pulls. The same image without one, with one signed by an
/// untrusted key, with only another predicate type, or with an SBOM about another digest is
/// denied with a reason naming the predicate type, and containerd never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sbom_attestation_required() {
    let g = Guarded::start(sbom_rules).await;
    let reg = g.bed.registry.addr().to_string();
    let untrusted = TestKey::p256();

    let (attested, d) = g.push_signed("attested", "v1");
    sign::attest_image(&reg, "attested", &d, &[(&g.key, SPDX, sbom("attested"))]);
    g.pull(&attested, "default")
        .await
        .expect("attested image pulls");
    assert!(g.in_store(&attested).await);

    let (bare, _) = g.push_signed("bare", "v1");
    assert_denied(g.pull(&bare, "default").await, &bare, SPDX);
    assert!(!g.in_store(&bare).await);

    let (foreign, d) = g.push_signed("foreign", "v1");
    sign::attest_image(&reg, "foreign", &d, &[(&untrusted, SPDX, sbom("foreign"))]);
    let err = g.pull(&foreign, "default").await;
    assert_denied(err.clone(), &foreign, SPDX);
    assert_denied(err, &foreign, "not signed by a trusted attestor");
    assert!(!g.in_store(&foreign).await);

    let (other_type, d) = g.push_signed("other-type", "v1");
    sign::attest_image(
        &reg,
        "other-type",
        &d,
        &[(&g.key, SLSA, provenance("https://ci.example.com"))],
    );
    assert_denied(
        g.pull(&other_type, "default").await,
        &other_type,
        &format!("missing attestation {SPDX}"),
    );
    assert!(!g.in_store(&other_type).await);

    // An SBOM about another image (another digest), attached to this one: the subject decides.
    let (moved, d) = g.bed.registry.push("moved", "v1", Some("moved"));
    sign::sign_image(&reg, None, "moved", &d, &g.key);
    let (_, other_digest) = g.bed.registry.push("moved-src", "v1", Some("moved-src"));
    let st = sign::statement(SPDX, &format!("{reg}/moved"), &other_digest, sbom("moved"));
    let envelope = g.key.envelope(&st);
    sign::push_attachment(
        &reg,
        None,
        "moved",
        &d,
        "att",
        &[(
            sign::DSSE,
            &envelope,
            json!({ "dev.cosignproject.cosign/signature": "", "predicateType": SPDX }),
        )],
    );
    assert_denied(g.pull(&moved, "default").await, &moved, SPDX);
    assert!(!g.in_store(&moved).await);
}

/// A provenance condition: builder.id must be the trusted CI. Met: pulls; not met: denied
/// naming the predicate type and the condition's path. Also `cri-guard verify` lists the
/// attestations it found and why each counted or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provenance_condition_and_verify_listing() {
    let g = Guarded::start(|bed, key| {
        format!(
            "{}[[rules.attestations]]\npredicateType = \"slsaprovenance\"\n\
             [[rules.attestations.conditions]]\npath = \"builder.id\"\nequals = \"https://ci.example.com/trusted\"\n",
            guarded::enforce_rule(bed, key)
        )
    })
    .await;
    let reg = g.bed.registry.addr().to_string();

    let (good, d) = g.bed.registry.push("built-good", "v1", Some("good"));
    sign::sign_image(&reg, None, "built-good", &d, &g.key);
    sign::attest_image(
        &reg,
        "built-good",
        &d,
        &[
            (&g.key, SPDX, sbom("good")),
            (&g.key, SLSA, provenance("https://ci.example.com/trusted")),
        ],
    );
    g.pull(&good, "default").await.expect("trusted build pulls");
    assert!(g.in_store(&good).await);

    let (bad, d) = g.bed.registry.push("built-bad", "v1", Some("bad"));
    sign::sign_image(&reg, None, "built-bad", &d, &g.key);
    sign::attest_image(
        &reg,
        "built-bad",
        &d,
        &[(&g.key, SLSA, provenance("https://laptop.example.com"))],
    );
    let err = g.pull(&bad, "default").await;
    assert_denied(err.clone(), &bad, SLSA);
    assert_denied(err, &bad, "builder.id");
    assert!(!g.in_store(&bad).await);

    let out = Command::new(BIN)
        .arg("verify")
        .arg("--policy")
        .arg(&g.policy_path)
        .args([&good, &bad])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = |image: &str| {
        lines
            .iter()
            .position(|l| l.contains(image))
            .unwrap_or_else(|| panic!("{image} not in {text}"))
    };
    let (g_at, b_at) = (at(&good), at(&bad));
    assert!(lines[g_at].starts_with("ALLOW"), "{text}");
    let good_block = &lines[g_at + 1..b_at];
    assert!(
        good_block
            .iter()
            .any(|l| l.contains(&format!("attestation {SLSA}: accepted"))),
        "{text}"
    );
    assert!(
        good_block
            .iter()
            .any(|l| l.contains(&format!("attestation {SPDX}: not counted"))),
        "{text}"
    );
    assert!(lines[b_at].starts_with("DENY"), "{text}");
    assert!(
        lines[b_at + 1..]
            .iter()
            .any(|l| l.contains(&format!("attestation {SLSA}: not counted"))),
        "{text}"
    );
}
