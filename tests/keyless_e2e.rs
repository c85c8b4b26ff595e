//! A real cosign keyless signature (Fulcio certificate, Rekor bundle; vector
//! `fulcio-rekor-valid` of `../shared/testdata/cosign-real`) served by a real registry where
//! cosign puts it, verified by the `cri-guard verify` binary offline: trust from PEM files or
//! from a sigstore trusted_root.json, and refused for another identity, another issuer, a
//! wrong Rekor key, or without the transparency log.
//!
//! The image itself can't be pulled (the vector has its manifest but not its layers), so the
//! decision is asked for the digest: the same verifier path a PullImage takes.

mod shared;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use support::TestBed;
use support::sign;

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");
const DIGEST: &str = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a";
const REPO: &str = "cosign-signed/fulcio-rekor-1";

fn vectors() -> Option<PathBuf> {
    let dir = shared::dir("testdata/cosign-real");
    if dir.is_none() {
        eprintln!("notice: shared/testdata/cosign-real is absent; keyless end-to-end test skipped");
    }
    dir
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Pushes the vector's signature layer (payload, signature, certificate, chain, bundle) as
/// the `.sig` attachment of `REPO@DIGEST`.
fn push_keyless_signature(bed: &TestBed, v: &Path) {
    let d = "derived/fulcio-rekor-valid";
    let payload = std::fs::read(v.join(format!("{d}/payload.json"))).unwrap();
    let annotations = json!({
        "dev.cosignproject.cosign/signature": read(v, &format!("{d}/signature.b64")),
        "dev.sigstore.cosign/certificate": read(v, &format!("{d}/certificate.pem")),
        "dev.sigstore.cosign/chain": read(v, &format!("{d}/chain.pem")),
        "dev.sigstore.cosign/bundle": read(v, &format!("{d}/bundle.json")),
    });
    sign::push_attachment(
        bed.registry.addr(),
        None,
        REPO,
        DIGEST,
        "sig",
        &[(sign::SIMPLESIGNING, &payload, annotations)],
    );
}

/// A policy for the bed's registry with one keyless attestor (`attestor` is its TOML body).
/// The signature names the registry it was made for, so the identity is remapped.
fn policy(bed: &TestBed, name: &str, attestor: &str) -> PathBuf {
    let reg = bed.registry.addr();
    let path = bed.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "hostsDir = \"{}\"\n[[rules]]\nname = \"keyless\"\nimageReferences = [\"{reg}/*\"]\n\
             signedIdentity = {{ remapPrefix = \"{reg}/cosign-signed\", signedPrefix = \"192.168.64.2:5000/cosign-signed\" }}\n\
             [[rules.attestors]]\nname = \"mitr\"\n{attestor}\n",
            bed.containerd.certs_dir().display()
        ),
    )
    .unwrap();
    path
}

fn verify(policy: &Path, image: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("verify")
        .arg("--policy")
        .arg(policy)
        .arg(image)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_keyless_signature_offline() {
    let Some(v) = vectors() else { return };
    let bed = TestBed::start().await;
    push_keyless_signature(&bed, &v);
    let image = format!("{}/{REPO}@{DIGEST}", bed.registry.addr());
    let trust = |f: &str| v.join("trust").join(f).display().to_string();
    let keyless = |subject: &str, issuer: &str, roots: &str| {
        format!(
            "keyless = {{ subject = \"{subject}\", issuer = \"{issuer}\", roots = \"{roots}\" }}\nrekorKey = \"{}\"",
            trust("rekor.pub")
        )
    };
    const ISSUER: &str = "https://github.com/login/oauth";

    // PEM trust: the Fulcio root; the intermediate comes from the signature's chain.
    let p = policy(
        &bed,
        "pem",
        &keyless("mitr@redhat.com", ISSUER, &trust("fulcio_v1.crt.pem")),
    );
    let (ok, out) = verify(&p, &image);
    assert!(ok, "{out}");
    assert!(out.starts_with("ALLOW"), "{out}");
    assert!(
        out.contains("signed by mitr as mitr@redhat.com (issuer https://github.com/login/oauth)"),
        "{out}"
    );

    // The same trust from a sigstore trusted_root.json (Fulcio CAs and Rekor keys), regex identity.
    let p = policy(
        &bed,
        "trusted-root",
        &format!(
            "keyless = {{ subjectRegExp = \"^mitr@redhat\\\\.com$\", issuerRegExp = \"^https://github\\\\.com/\", trustedRoot = \"{}\" }}",
            trust("trusted_root_pgi.json")
        ),
    );
    let (ok, out) = verify(&p, &image);
    assert!(ok, "{out}");

    // Refusals, each with its reason.
    let cases = [
        (
            "identity",
            keyless("someone@example.com", ISSUER, &trust("fulcio_v1.crt.pem")),
            "someone@example.com",
        ),
        (
            "issuer",
            keyless(
                "mitr@redhat.com",
                "https://accounts.google.com",
                &trust("fulcio_v1.crt.pem"),
            ),
            "https://accounts.google.com",
        ),
        (
            "rekor-key",
            format!(
                "keyless = {{ subject = \"mitr@redhat.com\", issuer = \"{ISSUER}\", roots = \"{}\" }}\nrekorKey = \"{}\"",
                trust("fulcio_v1.crt.pem"),
                v.join("keys/cosign.pub").display()
            ),
            "not a trusted Rekor log",
        ),
        (
            "no-tlog",
            format!(
                "keyless = {{ subject = \"mitr@redhat.com\", issuer = \"{ISSUER}\", roots = \"{}\" }}\nignoreTlog = true",
                trust("fulcio_v1.crt.pem")
            ),
            "expired",
        ),
    ];
    for (name, attestor, reason) in cases {
        let p = policy(&bed, name, &attestor);
        let (ok, out) = verify(&p, &image);
        assert!(!ok, "{name}: {out}");
        assert!(out.starts_with("DENY"), "{name}: {out}");
        assert!(
            out.contains(reason),
            "{name}: {out:?} does not say {reason:?}"
        );
    }
}
