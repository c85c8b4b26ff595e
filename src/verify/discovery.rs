//! Where an image's signatures and attestations are found, in the repository of the image or
//! the rule's `signaturesRepository`:
//!
//! - tag-based (cosign 2.x, `--new-bundle-format=false`): the manifests at the tags
//!   `sha256-<hex>.sig` and `sha256-<hex>.att` ([`Attached`]);
//! - Sigstore bundles (cosign 3's default), stored as OCI artifacts whose `subject` is the
//!   image: listed by the referrers API (`GET /v2/<name>/referrers/<digest>`), or, on
//!   registries without it (distribution 2.8), by the referrers tag schema (tag `sha256-<hex>`
//!   holding an OCI index that clients maintain) ([`Referrers`]).
//!
//! Round trips: the first round asks for all of these at once (`.sig`, `.att` when the rule
//! requires attestations, the referrers API and the referrers tag); the referrers' manifests
//! are fetched in one more round and only when needed (the tag-based signatures did not
//! already satisfy the rule, or attestations are required); their bundle blobs in one more.
//! So a digest reference takes 2 rounds in the old format and 3 in the new one; a tag
//! reference one more, for the tag.
//!
//! Nothing listed is trusted to be what it claims: the listing's `artifactType` only excludes
//! other kinds of artifacts (ggcr reports a bundle's as the empty config type, so that one
//! passes); each referrer's manifest must name this image as its `subject` and carry a layer
//! whose media type is a Sigstore bundle; the manifest annotation
//! `dev.sigstore.bundle.predicateType` only decides which blobs are worth fetching for
//! signatures or for attestations (a wrong one can hide a bundle, never admit one: the verified
//! statement's predicate type decides). Every response is bounded (manifest, signature and
//! attestation sizes, `fetch.maxReferrers`, pages); a listing that fails or is oversized is
//! reported with the decision, and what verified elsewhere still counts.

use std::collections::{BTreeMap, HashMap};

use futures_util::future::join_all;
use oci_client::Reference;
use serde::Deserialize;

use super::cosign::SigLayer;
use super::cosign::bundle::{BUNDLE_MEDIA_TYPE_PREFIX, SIGN_PREDICATE_TYPE};
use super::{Denial, State};
use crate::registry::{Auth, Descriptor, RegistryError, valid_digest};

/// Most layers a signature manifest may have before we refuse to look at it.
pub(super) const MAX_SIGNATURE_LAYERS: usize = 64;
/// How many referrer manifests or bundles are fetched at once.
const CONCURRENT_FETCHES: usize = 8;
/// Media type of an OCI image manifest (what a referrer holding a bundle is).
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the OCI empty descriptor (the config of an artifact manifest; ggcr reports it
/// as the `artifactType` of bundle referrers).
const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Manifest annotation cosign writes with a bundle's predicate type (unverified).
pub(super) const PREDICATE_TYPE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";

#[derive(Deserialize)]
struct OciManifest {
    #[serde(default)]
    layers: Vec<OciDescriptor>,
    #[serde(default)]
    subject: Option<OciDescriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One cosign attachment of an image (`sha256-<hex>.sig` or `.att`): the layers of the wanted
/// media type, and a description of what else was there.
pub(super) struct Attached {
    /// `registry/repository:tag`, for messages.
    pub place: String,
    /// Whether a manifest is there at all.
    pub found: bool,
    pub layers: Vec<SigLayer>,
    pub skipped: Vec<String>,
}

/// The tag cosign attaches `suffix` (`sig`, `att`) of `digest` under.
pub(super) fn attachment_tag(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replace(':', "-"))
}

/// Fetches the attachment at `tag` of `repo` (`found: false` when there is none). Layers of
/// other media types or over `max` bytes are skipped (and described), never fetched.
pub(super) async fn fetch_attached(
    state: &State,
    repo: &Reference,
    tag: &str,
    media_type: &str,
    max: usize,
    auth: &Auth,
) -> Result<Attached, Denial> {
    let mut attached = Attached {
        place: format!("{}/{}:{tag}", repo.registry(), repo.repository()),
        found: false,
        layers: Vec::new(),
        skipped: Vec::new(),
    };
    let place = &attached.place;
    let manifest = match state.registry.manifest_at(repo, tag, auth).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(attached),
        Err(e) => return Err(Denial::registry(&e, &format!("cannot fetch {place}"))),
    };
    let parsed: OciManifest = serde_json::from_slice(&manifest.body)
        .map_err(|e| Denial::new(format!("the manifest at {place} is malformed: {e}")))?;
    if parsed.layers.len() > MAX_SIGNATURE_LAYERS {
        return Err(Denial::new(format!(
            "the manifest at {place} has {} layers (limit {MAX_SIGNATURE_LAYERS})",
            parsed.layers.len()
        )));
    }
    let mut layers = Vec::new();
    let mut skipped = Vec::new();
    for l in &parsed.layers {
        if l.media_type != media_type {
            skipped.push(crate::proxy::grpc::bounded(&l.media_type, 120));
            continue;
        }
        if l.size < 0 || l.size as usize > max {
            skipped.push(format!("a {}-byte layer over the {max}-byte limit", l.size));
            continue;
        }
        match state.registry.blob(repo, &l.digest, max, auth).await {
            Ok(payload) => layers.push(SigLayer {
                media_type: l.media_type.clone(),
                payload: payload.to_vec(),
                annotations: l.annotations.clone(),
            }),
            Err(e) => {
                return Err(Denial::registry(
                    &e,
                    &format!("cannot fetch a layer of {place}"),
                ));
            }
        }
    }
    // Name the first few skipped layers and count the rest: the registry picks their number.
    if skipped.len() > 5 {
        let more = skipped.len() - 5;
        skipped.truncate(5);
        skipped.push(format!("{more} more"));
    }
    attached.found = true;
    attached.layers = layers;
    attached.skipped = skipped;
    Ok(attached)
}

/// What a bundle is wanted for; decides which blobs are fetched (by the manifest's unverified
/// predicate-type annotation) and their size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// `cosign sign` bundles (predicate type `sign/v1`).
    Signatures,
    /// `cosign attest` bundles (any other predicate type).
    Attestations,
}

/// A Sigstore bundle found among the referrers.
pub(super) struct FoundBundle {
    /// `registry/repository@<manifest digest>`, for messages.
    pub place: String,
    /// The manifest's predicate-type annotation (unverified; messages and fetch selection).
    pub claimed: Option<String>,
    /// The bundle's bytes, or why they could not be had.
    pub bytes: Result<Vec<u8>, String>,
}

/// A referrer manifest that carries Sigstore bundle layers.
struct BundleManifest {
    place: String,
    claimed: Option<String>,
    /// (layer digest, size) of each bundle layer.
    layers: Vec<(String, i64)>,
}

/// The referrers of an image and what became of them.
pub(super) struct Referrers {
    /// Where they were listed, for messages.
    pub place: String,
    /// Why the listing could not be used, if it could not.
    pub error: Option<Denial>,
    /// Listed entries that may hold a bundle (manifest digests).
    candidates: Vec<Descriptor>,
    /// What was listed or found but is not a bundle referrer of this image.
    pub skipped: Vec<String>,
    /// The candidates' manifests, once fetched.
    manifests: Option<Vec<BundleManifest>>,
    /// Bundle blobs fetched so far, by layer digest.
    blobs: HashMap<String, Result<Vec<u8>, String>>,
    /// A fetch that failed because the registry was unavailable (for the denial's kind).
    pub unavailable: Option<Denial>,
}

/// What discovery found for one image.
pub(super) struct Found {
    /// The `.sig` attachment.
    pub sig: Result<Attached, Denial>,
    /// The `.att` attachment, when the rule requires attestations.
    pub att: Option<Result<Attached, Denial>>,
    pub referrers: Referrers,
}

/// First round: `.sig`, `.att` (when `attestations`), the referrers API and the referrers tag,
/// all at once. `repo` is where signatures live (the image's repository or the rule's
/// signatures repository).
pub(super) async fn discover(
    state: &State,
    repo: &Reference,
    digest: &str,
    attestations: bool,
    auth: &Auth,
) -> Found {
    let fetch = &state.policy.fetch;
    let max_referrers = fetch.max_referrers;
    let sig_tag = attachment_tag(digest, "sig");
    let att_tag = attachment_tag(digest, "att");
    let sig = fetch_attached(
        state,
        repo,
        &sig_tag,
        super::SIMPLESIGNING,
        fetch.max_signature_size,
        auth,
    );
    let att = async {
        if attestations {
            Some(
                fetch_attached(
                    state,
                    repo,
                    &att_tag,
                    super::cosign::DSSE_MEDIA_TYPE,
                    fetch.max_attestation_size,
                    auth,
                )
                .await,
            )
        } else {
            None
        }
    };
    let api = state
        .registry
        .referrers_api(repo, digest, max_referrers, auth);
    let tag = state
        .registry
        .referrers_tag(repo, digest, max_referrers, auth);
    let (sig, att, api, tag) = tokio::join!(sig, att, api, tag);

    let name = format!("{}/{}", repo.registry(), repo.repository());
    let (place, listed) = match api {
        Ok(Some(list)) => (format!("the referrers of {name}@{digest}"), Ok(list)),
        Ok(None) => (
            format!(
                "{name}:{} (referrers tag; the registry has no referrers API)",
                crate::registry::referrers_tag(digest)
            ),
            tag.map(Option::unwrap_or_default),
        ),
        Err(e) => (format!("the referrers of {name}@{digest}"), Err(e)),
    };
    let mut referrers = Referrers {
        place,
        error: None,
        candidates: Vec::new(),
        skipped: Vec::new(),
        manifests: None,
        blobs: HashMap::new(),
        unavailable: None,
    };
    match listed {
        Ok(list) => {
            for d in list {
                match candidate(&d, fetch.max_manifest_size) {
                    Ok(()) => referrers.candidates.push(d),
                    Err(why) => referrers.skipped.push(why),
                }
            }
        }
        Err(e) => {
            let denial = Denial::registry(&e, &format!("cannot list {}", referrers.place));
            if denial.unavailable {
                referrers.unavailable = Some(denial.clone());
            }
            referrers.error = Some(denial);
        }
    }
    Found {
        sig,
        att,
        referrers,
    }
}

/// Whether a listed referrer may hold a Sigstore bundle (see the module documentation).
fn candidate(d: &Descriptor, max_manifest: usize) -> Result<(), String> {
    if d.media_type != OCI_MANIFEST {
        return Err(format!("a referrer of media type {}", shown(&d.media_type)));
    }
    if let Some(t) = d.artifact_type.as_deref() {
        if !t.is_empty() && t != OCI_EMPTY && !t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
            return Err(format!("an artifact of type {}", shown(t)));
        }
    }
    if !valid_digest(&d.digest) {
        return Err(format!("a referrer with digest {}", shown(&d.digest)));
    }
    if d.size < 0 || d.size as usize > max_manifest {
        return Err(format!(
            "a {}-byte referrer manifest over the {max_manifest}-byte limit",
            d.size
        ));
    }
    Ok(())
}

/// Text from a registry, bounded and escaped for a message.
fn shown(s: &str) -> String {
    crate::proxy::grpc::bounded(s, 128)
}

impl Referrers {
    /// For messages: `no Sigstore <what> among <place>`, and what was skipped there (at most
    /// three, then a count).
    pub(super) fn nothing(&self, what: &str) -> String {
        let mut s = format!("no Sigstore {what} among {}", self.place);
        if !self.skipped.is_empty() {
            let mut shown: Vec<String> = self.skipped.iter().take(3).cloned().collect();
            if self.skipped.len() > 3 {
                shown.push(format!("and {} more", self.skipped.len() - 3));
            }
            s.push_str(&format!(" (skipped: {})", shown.join("; ")));
        }
        s
    }

    /// The bundles wanted for any of `wants`, fetching (once) the candidates' manifests and
    /// then the wanted blobs, each round at most [`CONCURRENT_FETCHES`] at a time.
    pub(super) async fn bundles(
        &mut self,
        state: &State,
        repo: &Reference,
        digest: &str,
        wants: &[Want],
        auth: &Auth,
    ) -> Vec<FoundBundle> {
        if self.manifests.is_none() {
            self.fetch_manifests(state, repo, digest, auth).await;
        }
        let fetch = &state.policy.fetch;
        let manifests = self.manifests.as_deref().unwrap_or_default();
        // (layer digest, limit) of every wanted blob not fetched yet.
        let mut to_fetch: Vec<(String, usize)> = Vec::new();
        for m in manifests {
            let Some(limit) = wanted(m.claimed.as_deref(), wants, fetch) else {
                continue;
            };
            for (layer, size) in &m.layers {
                if self.blobs.contains_key(layer) || to_fetch.iter().any(|(l, _)| l == layer) {
                    continue;
                }
                if *size < 0 || *size as usize > limit {
                    self.blobs.insert(
                        layer.clone(),
                        Err(format!(
                            "the bundle is {size} bytes, over the {limit}-byte limit (fetch.maxSignatureSize / fetch.maxAttestationSize)"
                        )),
                    );
                    continue;
                }
                to_fetch.push((layer.clone(), limit));
            }
        }
        for chunk in to_fetch.chunks(CONCURRENT_FETCHES) {
            let results = join_all(
                chunk
                    .iter()
                    .map(|(layer, limit)| state.registry.blob(repo, layer, *limit, auth)),
            )
            .await;
            for ((layer, _), r) in chunk.iter().zip(results) {
                let r = r.map(|b| b.to_vec()).map_err(|e| {
                    self.note_unavailable(&e, "cannot fetch a Sigstore bundle");
                    format!("cannot fetch the bundle: {e}")
                });
                self.blobs.insert(layer.clone(), r);
            }
        }
        let mut out = Vec::new();
        for m in self.manifests.as_deref().unwrap_or_default() {
            if wanted(m.claimed.as_deref(), wants, fetch).is_none() {
                continue;
            }
            for (layer, _) in &m.layers {
                if let Some(r) = self.blobs.get(layer) {
                    out.push(FoundBundle {
                        place: m.place.clone(),
                        claimed: m.claimed.clone(),
                        bytes: r.clone(),
                    });
                }
            }
        }
        out
    }

    fn note_unavailable(&mut self, e: &RegistryError, what: &str) {
        if e.is_unavailable() && self.unavailable.is_none() {
            self.unavailable = Some(Denial::registry(e, what));
        }
    }

    /// Fetches every candidate's manifest and keeps those that are bundle referrers of
    /// `digest`; the others are described in `skipped`.
    async fn fetch_manifests(
        &mut self,
        state: &State,
        repo: &Reference,
        digest: &str,
        auth: &Auth,
    ) {
        let name = format!("{}/{}", repo.registry(), repo.repository());
        let mut manifests = Vec::new();
        let candidates = std::mem::take(&mut self.candidates);
        for chunk in candidates.chunks(CONCURRENT_FETCHES) {
            let results = join_all(
                chunk
                    .iter()
                    .map(|d| state.registry.manifest_at(repo, &d.digest, auth)),
            )
            .await;
            for (d, r) in chunk.iter().zip(results) {
                let place = format!("{name}@{}", d.digest);
                match r {
                    Ok(Some(m)) => match bundle_manifest(&m.body, digest) {
                        Ok((claimed, layers)) => manifests.push(BundleManifest {
                            place,
                            claimed,
                            layers,
                        }),
                        Err(why) => self.skipped.push(format!("{place}: {why}")),
                    },
                    Ok(None) => self
                        .skipped
                        .push(format!("{place}: listed, but not in the registry")),
                    Err(e) => {
                        self.note_unavailable(&e, &format!("cannot fetch {place}"));
                        self.skipped.push(format!("{place}: {e}"));
                    }
                }
            }
        }
        self.manifests = Some(manifests);
    }
}

/// The size limit for a bundle claimed to be of `claimed` predicate type, if it is wanted.
fn wanted(
    claimed: Option<&str>,
    wants: &[Want],
    fetch: &super::policy::FetchSettings,
) -> Option<usize> {
    let sign = claimed == Some(SIGN_PREDICATE_TYPE);
    let unknown = claimed.is_none();
    let for_signatures = wants.contains(&Want::Signatures) && (sign || unknown);
    let for_attestations = wants.contains(&Want::Attestations) && !sign;
    match (for_signatures, for_attestations) {
        (_, true) => Some(fetch.max_attestation_size.max(fetch.max_signature_size)),
        (true, false) => Some(fetch.max_signature_size),
        (false, false) => None,
    }
}

/// A referrer manifest's predicate-type annotation and bundle layers, if it is a bundle
/// referrer of `digest`.
#[allow(clippy::type_complexity)]
fn bundle_manifest(
    body: &[u8],
    digest: &str,
) -> Result<(Option<String>, Vec<(String, i64)>), String> {
    let m: OciManifest =
        serde_json::from_slice(body).map_err(|e| format!("not an OCI manifest: {e}"))?;
    match &m.subject {
        Some(s) if s.digest == digest => {}
        Some(s) => {
            return Err(format!(
                "a referrer of another image ({})",
                shown(&s.digest)
            ));
        }
        None => return Err("a manifest without subject, not a referrer".into()),
    }
    if m.layers.len() > MAX_SIGNATURE_LAYERS {
        return Err(format!(
            "{} layers (limit {MAX_SIGNATURE_LAYERS})",
            m.layers.len()
        ));
    }
    let layers: Vec<(String, i64)> = m
        .layers
        .iter()
        .filter(|l| l.media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) && valid_digest(&l.digest))
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    if layers.is_empty() {
        return Err(format!(
            "not a Sigstore bundle (layers: {})",
            m.layers
                .iter()
                .take(4)
                .map(|l| shown(&l.media_type))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let claimed = m.annotations.get(PREDICATE_TYPE_ANNOTATION).cloned();
    Ok((claimed, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:1e4d730332095d38037c0da185cd8bbfc8bf3a130602fd952d59037baad6ae1a";

    fn descriptor(media_type: &str, artifact_type: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 800,
            artifact_type: artifact_type.map(Into::into),
            annotations: BTreeMap::new(),
        }
    }

    /// The listing only excludes what is clearly something else: bundles listed with the
    /// empty config type (ggcr), with no artifactType, or with the bundle type pass.
    #[test]
    fn listed_candidates() {
        for t in [
            None,
            Some(OCI_EMPTY),
            Some("application/vnd.dev.sigstore.bundle.v0.3+json"),
        ] {
            assert_eq!(
                candidate(&descriptor(OCI_MANIFEST, t), 4096),
                Ok(()),
                "{t:?}"
            );
        }
        assert!(
            candidate(
                &descriptor(OCI_MANIFEST, Some("application/spdx+json")),
                4096
            )
            .unwrap_err()
            .contains("an artifact of type application/spdx+json")
        );
        assert!(candidate(&descriptor(crate::registry::OCI_INDEX, None), 4096).is_err());
        let mut big = descriptor(OCI_MANIFEST, None);
        big.size = 5000;
        assert!(
            candidate(&big, 4096)
                .unwrap_err()
                .contains("over the 4096-byte limit")
        );
        let mut bad = descriptor(OCI_MANIFEST, None);
        bad.digest = "sha256:../x".into();
        assert!(candidate(&bad, 4096).is_err());
    }

    /// A referrer must name this image as subject and carry a bundle layer; cosign 3's real
    /// manifest does.
    #[test]
    fn bundle_manifests() {
        let real = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json",
            "config":{{"mediaType":"{OCI_EMPTY}","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}},
            "layers":[{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","size":659,"digest":"sha256:0bb20e504afee2deb4c50bfdc7bdfbf95274ad272bc119b0340257102b6d2203"}}],
            "annotations":{{"dev.sigstore.bundle.content":"dsse-envelope","dev.sigstore.bundle.predicateType":"https://sigstore.dev/cosign/sign/v1"}},
            "subject":{{"mediaType":"{OCI_MANIFEST}","size":401,"digest":"{DIGEST}"}}}}"#
        );
        let (claimed, layers) = bundle_manifest(real.as_bytes(), DIGEST).unwrap();
        assert_eq!(claimed.as_deref(), Some(SIGN_PREDICATE_TYPE));
        assert_eq!(layers.len(), 1);
        let other = format!("sha256:{}", "b".repeat(64));
        assert!(
            bundle_manifest(real.as_bytes(), &other)
                .unwrap_err()
                .starts_with("a referrer of another image")
        );
        let not_bundle = real.replace(
            "\"mediaType\":\"application/vnd.dev.sigstore.bundle.v0.3+json\",\"size\":659",
            "\"mediaType\":\"application/spdx+json\",\"size\":659",
        );
        assert!(
            bundle_manifest(not_bundle.as_bytes(), DIGEST)
                .unwrap_err()
                .starts_with("not a Sigstore bundle (layers: application/spdx+json")
        );
        assert!(bundle_manifest(b"[]", DIGEST).is_err());
        let no_subject = format!(r#"{{"layers":[],"mediaType":"{OCI_MANIFEST}"}}"#);
        assert!(bundle_manifest(no_subject.as_bytes(), DIGEST).is_err());
    }

    /// Which blobs are fetched for what: sign bundles for signatures, the others for
    /// attestations, unannotated ones for both.
    #[test]
    fn wanted_blobs() {
        let f = super::super::policy::FetchSettings::default();
        let sig = [Want::Signatures];
        let att = [Want::Attestations];
        assert_eq!(
            wanted(Some(SIGN_PREDICATE_TYPE), &sig, &f),
            Some(f.max_signature_size)
        );
        assert_eq!(wanted(Some("https://spdx.dev/Document"), &sig, &f), None);
        assert_eq!(wanted(Some(SIGN_PREDICATE_TYPE), &att, &f), None);
        assert!(wanted(Some("https://spdx.dev/Document"), &att, &f).is_some());
        assert!(wanted(None, &sig, &f).is_some() && wanted(None, &att, &f).is_some());
    }
}
