//! cosign-compatible signing for tests: a key pair from the sigstore crate, a simple-signing
//! payload, and the `.sig` manifest pushed to the bed's registry where cosign would put it
//! (`<repo>:sha256-<hex>.sig`, one layer per signature, signature in the layer annotation).

use std::path::{Path, PathBuf};

use sigstore::crypto::{SigStoreSigner, SigningScheme};

use super::util::{base64, http, sha256_hex};

/// Media type of cosign signature layers.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// A signing key and its public PEM.
pub struct TestKey {
    signer: SigStoreSigner,
    pub public_pem: String,
}

impl TestKey {
    pub fn new(scheme: SigningScheme) -> TestKey {
        let signer = scheme.create_signer().expect("create signer");
        let public_pem = signer
            .to_sigstore_keypair()
            .and_then(|k| k.public_key_to_pem())
            .expect("public key PEM");
        TestKey { signer, public_pem }
    }

    /// An ECDSA P-256 key (cosign's default).
    pub fn p256() -> TestKey {
        TestKey::new(SigningScheme::ECDSA_P256_SHA256_ASN1)
    }

    /// Writes the public key to `dir/name.pub`.
    pub fn write_public(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pub"));
        std::fs::write(&path, &self.public_pem).expect("write key");
        path
    }

    pub fn sign(&self, payload: &[u8]) -> String {
        base64(&self.signer.sign(payload).expect("sign"))
    }
}

/// The exact payload cosign signs for `docker_reference` at `digest`.
pub fn payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{docker_reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// One signature layer: (media type, payload, signature annotation).
pub struct Layer {
    pub media_type: String,
    pub payload: Vec<u8>,
    pub signature: String,
}

impl Layer {
    /// A layer with `key`'s signature over `payload`.
    pub fn signed(key: &TestKey, payload: Vec<u8>) -> Layer {
        Layer {
            media_type: SIMPLESIGNING.into(),
            signature: key.sign(&payload),
            payload,
        }
    }
}

/// Signs `name@digest` in `registry` with `key` (docker-reference = `registry/name`) and pushes
/// the signature.
pub fn sign_image(
    registry: &str,
    auth: Option<(&str, &str)>,
    name: &str,
    digest: &str,
    key: &TestKey,
) {
    let layer = Layer::signed(key, payload(&format!("{registry}/{name}"), digest));
    push_signature(registry, auth, name, digest, &[layer]);
}

/// Pushes `layers` as the `.sig` manifest of `name@digest`.
pub fn push_signature(
    registry: &str,
    auth: Option<(&str, &str)>,
    name: &str,
    digest: &str,
    layers: &[Layer],
) {
    let layers: Vec<(&str, &[u8], serde_json::Value)> = layers
        .iter()
        .map(|l| {
            (
                l.media_type.as_str(),
                l.payload.as_slice(),
                serde_json::json!({ "dev.cosignproject.cosign/signature": l.signature }),
            )
        })
        .collect();
    push_attachment(registry, auth, name, digest, "sig", &layers);
}

/// Pushes an OCI manifest of `layers` (media type, blob, annotations) at cosign's attachment
/// tag `sha256-<hex>.<suffix>` of `name@digest`.
pub fn push_attachment(
    registry: &str,
    auth: Option<(&str, &str)>,
    name: &str,
    digest: &str,
    suffix: &str,
    layers: &[(&str, &[u8], serde_json::Value)],
) {
    let config = br#"{"architecture":"","config":{},"created":"0001-01-01T00:00:00Z","history":[],"os":"","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(registry, auth, name, config);
    let mut descs = Vec::new();
    for (media_type, blob, annotations) in layers {
        let d = push_blob(registry, auth, name, blob);
        descs.push(serde_json::json!({
            "mediaType": media_type,
            "size": blob.len(),
            "digest": d,
            "annotations": annotations,
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest },
        "layers": descs,
    }))
    .unwrap();
    let tag = format!("{}.{suffix}", digest.replace(':', "-"));
    push_manifest(
        registry,
        auth,
        name,
        &tag,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    );
}

/// Media type of a cosign attestation layer (a DSSE envelope).
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
/// DSSE payload type of in-toto statements.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// An in-toto Statement v0.1 (what `cosign attest` writes) about `name@digest`.
pub fn statement(
    predicate_type: &str,
    name: &str,
    digest: &str,
    predicate: serde_json::Value,
) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').expect("algorithm:hex digest");
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [{ "name": name, "digest": { alg: hex } }],
        "predicate": predicate,
    }))
    .unwrap()
}

/// DSSE v1 pre-authentication encoding, written out here from the spec (not the library's).
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

impl TestKey {
    /// A DSSE envelope of `statement`, signed by this key over the PAE (as `cosign attest`).
    pub fn envelope(&self, statement: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "payloadType": IN_TOTO,
            "payload": base64(statement),
            "signatures": [{ "keyid": "", "sig": self.sign(&pae(IN_TOTO, statement)) }],
        }))
        .unwrap()
    }
}

/// Attests `name@digest` (in `registry`) with `predicate_type` and `predicate`, signed by
/// `key`, and pushes it as the `.att` attachment, layered like `cosign attest` does (empty
/// signature annotation, `predicateType` annotation).
pub fn attest_image(
    registry: &str,
    name: &str,
    digest: &str,
    attestations: &[(&TestKey, &str, serde_json::Value)],
) {
    let envelopes: Vec<(Vec<u8>, serde_json::Value)> = attestations
        .iter()
        .map(|(key, pt, predicate)| {
            let st = statement(pt, &format!("{registry}/{name}"), digest, predicate.clone());
            (
                key.envelope(&st),
                serde_json::json!({
                    "dev.cosignproject.cosign/signature": "",
                    "predicateType": pt,
                }),
            )
        })
        .collect();
    let layers: Vec<(&str, &[u8], serde_json::Value)> = envelopes
        .iter()
        .map(|(e, a)| (DSSE, e.as_slice(), a.clone()))
        .collect();
    push_attachment(registry, None, name, digest, "att", &layers);
}

fn auth_header(auth: Option<(&str, &str)>) -> Option<String> {
    auth.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
}

/// Uploads a blob; returns its digest.
pub fn push_blob(registry: &str, auth: Option<(&str, &str)>, name: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data).expect("sha256"));
    let authz = auth_header(auth);
    let hdrs: Vec<(&str, &str)> = authz
        .iter()
        .map(|a| ("Authorization", a.as_str()))
        .collect();
    let start = http(
        registry,
        "POST",
        &format!("/v2/{name}/blobs/uploads/"),
        &hdrs,
        b"",
    )
    .expect("start upload");
    assert_eq!(start.status, 202, "start upload: {}", start.text());
    let location = start.header("Location").expect("Location").to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={}", digest.replace(':', "%3A"));
    let mut h = hdrs.clone();
    h.push(("Content-Type", "application/octet-stream"));
    let put = http(registry, "PUT", &url, &h, data).expect("upload");
    assert_eq!(put.status, 201, "upload blob: {}", put.text());
    digest
}

/// Puts a manifest at `name:tag`; returns its digest.
pub fn push_manifest(
    registry: &str,
    auth: Option<(&str, &str)>,
    name: &str,
    tag: &str,
    media: &str,
    body: &[u8],
) -> String {
    let authz = auth_header(auth);
    let mut h: Vec<(&str, &str)> = authz
        .iter()
        .map(|a| ("Authorization", a.as_str()))
        .collect();
    h.push(("Content-Type", media));
    let put = http(
        registry,
        "PUT",
        &format!("/v2/{name}/manifests/{tag}"),
        &h,
        body,
    )
    .expect("put manifest");
    assert_eq!(
        put.status,
        201,
        "push manifest {name}:{tag}: {}",
        put.text()
    );
    format!("sha256:{}", sha256_hex(body).expect("sha256"))
}
