//! Seed inputs for every target, built at run time from the real vectors in `../shared`
//! (cosign-made signatures, cosign 3 samples, sigstore conformance bundles) and from real CRI
//! requests; nothing is copied into the repository.

use prost::Message;

use super::{SEP, h2, join, shared};

fn read(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(shared().join(rel)).ok()
}

fn read_or_empty(rel: &str) -> Vec<u8> {
    read(rel).unwrap_or_default()
}

fn files_under(rel: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![shared().join(rel)];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                let name = p
                    .strip_prefix(shared())
                    .unwrap_or(&p)
                    .display()
                    .to_string()
                    .replace('/', "_");
                out.push((name, b));
            }
        }
    }
    out
}

/// The cosign-real cases: (name, payload, signature, certificate, chain, bundle, reference, digest).
fn cases() -> Vec<[Vec<u8>; 8]> {
    let Some(text) = read("testdata/cosign-real/vectors.json") else {
        return vec![];
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return vec![];
    };
    let mut out = Vec::new();
    for c in v["cases"].as_array().into_iter().flatten() {
        let s = |f: &str| c.get(f).and_then(|x| x.as_str()).map(str::to_string);
        let file = |f: &str| s(f).map(|p| read_or_empty(&format!("testdata/cosign-real/{p}")));
        let payload = file("payload_file").unwrap_or_default();
        let signature = s("signature_b64")
            .map(String::into_bytes)
            .or_else(|| file("signature_file"))
            .unwrap_or_default();
        let dir = s("payload_file")
            .and_then(|p| p.rsplit_once('/').map(|(d, _)| d.to_string()))
            .unwrap_or_default();
        let sib = |n: &str| read_or_empty(&format!("testdata/cosign-real/{dir}/{n}"));
        out.push([
            s("name").unwrap_or_default().into_bytes(),
            payload,
            signature,
            sib("certificate.pem"),
            sib("chain.pem"),
            sib("bundle.json"),
            s("claimed_docker_reference")
                .unwrap_or_default()
                .into_bytes(),
            s("claimed_digest").unwrap_or_default().into_bytes(),
        ]);
    }
    out
}

/// Seeds for `target`, as (file name, bytes).
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    match target {
        "reference" => {
            let refs = [
                "busybox",
                "docker.io/library/busybox:1.36",
                "index.docker.io/library/nginx@sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00",
                "GHCR.IO:443/org/app:release-1@sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00",
                "localhost:5000/x@sha256:1e4d730332095d38037c0da185cd8bbfc8bf3a130602fd952d59037baad6ae1a",
                "evil-registry/x.corp.example/app",
                "registry.k8s.io/pause:3.10",
                "[::1]:5000/a/b/c:tag",
                "a.corp.example/team/app:v1\n*.corp.example/*",
                "ghcr.io/org/app:release-1\nghcr.io/org/app:release-*",
                "127.0.0.1:5300/x\nlocalhost:5300/*",
            ];
            for (i, r) in refs.iter().enumerate() {
                out.push((format!("ref{i}"), r.as_bytes().to_vec()));
            }
            for (i, c) in cases().iter().enumerate() {
                out.push((format!("vector{i}"), c[6].clone()));
            }
        }
        "policy" => {
            for rel in ["../../deploy/policy.toml", "../../deploy/cri-guard.toml"] {
                let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
                if let Ok(b) = std::fs::read(p) {
                    out.push((rel.replace(['.', '/'], "_"), b));
                }
            }
            out.push(("keyed".into(), br#"default = "enforce"
hostsDir = "/nonexistent"
[registries."r.example:5000"]
insecure = true
tokenHosts = ["auth.r.example"]
[sandbox]
mode = "enforce"
image = "registry.k8s.io/pause:3.10"
[[rules]]
name = "k"
imageReferences = ["r.example:5000/*", "ghcr.io/org/*:v*"]
namespaces = ["team-*"]
count = 1
signedIdentity = { remapPrefix = "r.example:5000", signedPrefix = "ghcr.io" }
[[rules.attestors]]
name = "release"
key = "keys/cosign.pub"
rekorKey = "trust/rekor.pub"
[[rules.attestors]]
name = "fulcio"
keyless = { issuer = "https://github.com/login/oauth", subjectRegExp = "^.*@redhat\\.com$", roots = "trust/fulcio_v1.crt.pem" }
rekorKey = "trust/rekor.pub"
[[rules.attestors]]
name = "corp"
certificates = { roots = "trust/pki_root_crts.pem", intermediates = "trust/pki_intermediate_crts.pem", subject = "build@corp.example" }
[[rules.attestations]]
predicateType = "slsaprovenance"
conditions = [{ path = "builder.id", equals = "https://github.com/actions/runner" }]
[cache]
size = 100
ttl = "1h"
negativeTtl = "10s"
[fetch]
timeout = "10s"
maxManifestSize = "4MiB"
maxVerificationBlobs = 128
"#.to_vec()));
            out.push(("config".into(), b"listen = \"/run/x.sock\"\nupstream = \"/run/y.sock\"\nworkers = 2\nsocket_mode = \"0660\"\nconnect_timeout = \"2s\"\n[log]\nformat = \"json\"\nlevel = \"cri_guard=debug,info\"\n".to_vec()));
        }
        "sig_layer" => {
            for c in cases() {
                let name = String::from_utf8_lossy(&c[0]).to_string();
                for sel in 0u8..4 {
                    out.push((
                        format!("{name}-{sel}"),
                        join(&[&c[1], &c[2], &c[3], &c[4], &c[5], &[sel], &c[6], &c[7]]),
                    ));
                }
            }
        }
        "rekor" => {
            for c in cases() {
                if !c[5].is_empty() {
                    out.push((String::from_utf8_lossy(&c[0]).to_string(), c[5].clone()));
                }
            }
        }
        "dsse" => {
            for dir in ["5500-old", "5501-old", "5502-old"] {
                let base = format!("reference/cosign3/samples/{dir}");
                let Some(env) = read(&format!("{base}/att.layer0.raw")) else {
                    continue;
                };
                let digest = read_or_empty(&format!("{base}/subject-image.manifest.json"));
                let digest = super::sha256_digest(&digest).into_bytes();
                out.push((dir.into(), join(&[&env, b"", b"", b"", &digest])));
            }
            for (name, b) in files_under("testdata/cosign-real/cosign/blob-attestation") {
                if name.ends_with(".dsse.json") {
                    out.push((name, b));
                }
            }
        }
        "bundle" => {
            for (name, b) in files_under("testdata/sigstore-conformance/cases") {
                if name.ends_with(".json") {
                    out.push((name, b));
                }
            }
            for (name, b) in files_under("reference/cosign3/samples") {
                if name.contains("bundle.layer0.raw") {
                    out.push((name, b));
                }
            }
            if let Some(b) = read("testdata/cosign-real/cosign/oci-attestation.sigstore.json") {
                out.push(("oci-attestation".into(), b));
            }
        }
        "certificate" => {
            for (name, b) in files_under("testdata/cosign-real/trust")
                .into_iter()
                .chain(files_under("testdata/cosign-real/keys"))
                .chain(files_under("testdata/sigstore-conformance/trust"))
                .chain(files_under("testdata/cosign-real/derived/pki-valid"))
                .chain(files_under(
                    "testdata/cosign-real/derived/fulcio-rekor-valid",
                ))
            {
                for sel in 0u8..6 {
                    let mut s = vec![sel];
                    s.extend_from_slice(&b);
                    out.push((format!("{sel}-{name}"), s));
                }
            }
        }
        "registry" => registry_seeds(&mut out),
        "proxy" => proxy_seeds(&mut out),
        _ => {}
    }
    let _ = SEP;
    out
}

fn registry_seeds(out: &mut Vec<(String, Vec<u8>)>) {
    // cosign 3 samples with the old format: `.sig` and `.att` manifests with their layers.
    for dir in ["5500-old", "5501-old", "5502-old"] {
        let base = format!("reference/cosign3/samples/{dir}");
        let sig = read_or_empty(&format!("{base}/sig.manifest.json"));
        let att = read_or_empty(&format!("{base}/att.manifest.json"));
        let referrers = read_or_empty(&format!("{base}/referrers-api.body"));
        let l0 = read_or_empty(&format!("{base}/sig.layer0.raw"));
        let a0 = read_or_empty(&format!("{base}/att.layer0.raw"));
        for ctl in [16u8, 16 | 8, 16 | 1, 16 | 8 | 1, 16 | 2] {
            out.push((
                format!("{dir}-{ctl}"),
                join(&[&[ctl], &sig, &att, &referrers, &l0, &a0]),
            ));
        }
    }
    // New format: the referrers listing and the bundle manifests.
    for dir in ["5500-new", "5501-new", "5502-new"] {
        let base = format!("reference/cosign3/samples/{dir}");
        let referrers = read_or_empty(&format!("{base}/referrers-api.body"));
        let sign = read_or_empty(&format!("{base}/sign-bundle.manifest.json"));
        let attest = read_or_empty(&format!("{base}/attest-bundle.manifest.json"));
        let l0 = read_or_empty(&format!("{base}/sign-bundle.layer0.raw"));
        let a0 = read_or_empty(&format!("{base}/attest-bundle.layer0.raw"));
        for ctl in [16u8, 16 | 1, 16 | 8] {
            out.push((
                format!("{dir}-{ctl}"),
                join(&[&[ctl], &sign, &attest, &referrers, &l0, &a0]),
            ));
        }
    }
    // cosign-real key signatures: a one-layer `.sig` manifest around each derived layer.
    for c in cases() {
        let name = String::from_utf8_lossy(&c[0]).to_string();
        let Some(layer) = read(&format!("testdata/cosign-real/derived/{name}/layer.json")) else {
            continue;
        };
        let Ok(layer) = serde_json::from_slice::<serde_json::Value>(&layer) else {
            continue;
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                       "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
            "layers": [layer],
        });
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        out.push((
            format!("real-{name}"),
            join(&[&[1], &manifest, b"", b"", &c[1]]),
        ));
    }
}

fn proxy_seeds(out: &mut Vec<(String, Vec<u8>)>) {
    use cri_guard::cri;
    let sandbox = |ns: &str| cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "p".into(),
            uid: "u".into(),
            namespace: ns.into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    let image = |s: &str| cri::ImageSpec {
        image: s.into(),
        ..Default::default()
    };
    let pulls = [
        "skip.invalid/app:1",
        "127.0.0.1:1/app@sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00",
        "127.0.0.1:1/app:v1",
        "unmatched.invalid/x",
        "not a reference\n",
    ];
    for (i, p) in pulls.iter().enumerate() {
        let req = cri::PullImageRequest {
            image: Some(image(p)),
            auth: Some(cri::AuthConfig {
                username: "u".into(),
                password: "p".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox("default")),
        };
        out.push((
            format!("pull{i}"),
            h2::call(
                1,
                "/runtime.v1.ImageService/PullImage",
                &req.encode_to_vec(),
            ),
        ));
    }
    let create = cri::CreateContainerRequest {
        pod_sandbox_id: "sb".into(),
        config: Some(cri::ContainerConfig {
            image: Some(cri::ImageSpec {
                image: "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
                    .into(),
                user_specified_image: "skip.invalid/app:1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: Some(sandbox("kube-system")),
    };
    out.push((
        "create".into(),
        h2::call(
            1,
            "/runtime.v1.RuntimeService/CreateContainer",
            &create.encode_to_vec(),
        ),
    ));
    let run = cri::RunPodSandboxRequest {
        config: Some(sandbox("default")),
        runtime_handler: String::new(),
    };
    out.push((
        "runpodsandbox".into(),
        h2::call(
            1,
            "/runtime.v1.RuntimeService/RunPodSandbox",
            &run.encode_to_vec(),
        ),
    ));
    let version = cri::VersionRequest {
        version: "v1".into(),
    };
    for (name, path) in [
        ("version", "/runtime.v1.RuntimeService/Version"),
        ("unknown", "/runtime.v1.RuntimeService/SomethingNew"),
        ("v1alpha2", "/runtime.v1alpha2.ImageService/PullImage"),
        ("other", "/grpc.health.v1.Health/Check"),
    ] {
        out.push((name.into(), h2::call(1, path, &version.encode_to_vec())));
    }
    // Two calls on one connection, and a call whose body spans several DATA frames.
    let mut two = h2::call(
        1,
        "/runtime.v1.RuntimeService/Version",
        &version.encode_to_vec(),
    );
    two.extend(h2::call_frames(
        3,
        "/runtime.v1.ImageService/PullImage",
        &cri::PullImageRequest {
            image: Some(image("skip.invalid/a:b")),
            ..Default::default()
        }
        .encode_to_vec(),
    ));
    out.push(("two".into(), two));
    let msg = create.encode_to_vec();
    let mut split = h2::frame(4, 0, 0, &[]);
    let headers = h2::hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/CreateContainer"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
    ]);
    split.extend(h2::frame(1, 4, 1, &headers));
    let mut body = vec![0];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    let (a, b) = body.split_at(body.len() / 2);
    split.extend(h2::frame(0, 0, 1, a));
    split.extend(h2::frame(0, 1, 1, b));
    out.push(("split".into(), split));
}
