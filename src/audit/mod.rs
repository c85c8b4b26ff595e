//! `cri-guard audit`: what the policy says about images that already exist.
//!
//! ```text
//! registry mode: REGISTRY[/PREFIX]... and/or --repository REGISTRY/REPO...
//!   catalog (GET /v2/_catalog?n=&last=, Link pages) -> repositories under PREFIX
//!   -> tags (GET /v2/<repo>/tags/list?n=&last=, Link pages), cosign's own tags left out
//!   -> each REGISTRY/REPO:TAG decided by Verifier::check_image, the PullImage decision
//!      (both signature formats, attestations, the same cache and bounds)
//! node mode (--node): the runtime's ListImages and running containers
//!   -> each image decided by Verifier::check_stored (as CreateContainer decides on an image id)
//!   -> each running container by Verifier::check_create on the container's own sandbox and
//!      image id: exactly the decision a new CreateContainer for it would get now
//! ```
//!
//! Listing and checking run at most `concurrency` at once (and the verifier's own bounds still
//! hold); a listing stops at `max_images`. Credentials come from a docker config
//! ([`dockercfg`]) and go only to the registry they are for. The [`Report`] is a table or JSON;
//! its [`Report::exit_code`] says whether everything passed.

pub mod dockercfg;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cri;
use crate::proxy::grpc::bounded;
use crate::registry::{Auth, Registry};
use crate::verify::policy::Mode;
use crate::verify::{Decision, Outcome, Verifier, reference};
use dockercfg::DockerConfig;

/// Most bytes of a name or reason shown (registries choose them).
const MAX_SHOWN: usize = 512;
/// Most names of one image shown.
const MAX_NAMES: usize = 16;
/// How often a check refused as busy (the verifier's own bound) is tried again.
const BUSY_RETRIES: usize = 20;

/// What to audit in a registry: everything under `prefix` (all of it without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub prefix: Option<String>,
}

impl Target {
    /// Reads `REGISTRY[/PREFIX]`, e.g. `registry.example.com:5000/team`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim_end_matches('/');
        let (registry, prefix) = match s.split_once('/') {
            Some((r, p)) => (r, Some(p.to_string())),
            None => (s, None),
        };
        if registry.is_empty()
            || !(registry.contains(['.', ':']) || registry == "localhost")
            || registry.contains(['*', '@'])
        {
            return Err(format!(
                "{s:?}: expected REGISTRY[/PREFIX], a registry host such as \
                 \"registry.example.com\" or \"127.0.0.1:5000\", optionally with a repository prefix"
            ));
        }
        Ok(Target {
            registry: registry.to_ascii_lowercase(),
            prefix,
        })
    }

    fn covers(&self, repository: &str) -> bool {
        match &self.prefix {
            None => true,
            Some(p) => {
                repository == p
                    || repository
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
        }
    }
}

/// How an audit runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace the decisions are made for (namespace-scoped rules).
    pub namespace: String,
    /// Listings and checks at once.
    pub concurrency: usize,
    /// Names per listing page (`n`).
    pub page_size: usize,
    /// Most images listed; the listing stops there (and the report says so).
    pub max_images: usize,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "default".into(),
            concurrency: 8,
            page_size: 100,
            max_images: 10_000,
            progress: false,
        }
    }
}

/// The verdict of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Verified as the matching rule requires.
    Pass,
    /// The matching rule skips verification.
    Skip,
    /// Would be refused.
    Fail,
    /// Fails verification, but the matching rule is in `audit` mode (allowed and logged).
    AuditFail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Skip => "skip",
            Verdict::Fail => "FAIL",
            Verdict::AuditFail => "audit-fail",
        }
    }

    fn passed(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::Skip)
    }
}

/// One image (or running container) and what the policy says about it.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `image` or `container`.
    pub kind: &'static str,
    /// The image reference (registry mode), or the image's name in the runtime.
    pub image: String,
    /// For a container: `namespace/pod/container`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Every name the runtime holds for the image (node mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    pub digest: Option<String>,
    pub signed_by: Vec<String>,
    /// Attestations found: accepted ones by predicate type; others with why they don't count.
    pub attestations: Vec<String>,
    pub rule: String,
    pub mode: String,
    pub verdict: Verdict,
    pub reason: String,
}

impl Row {
    fn from_decision(kind: &'static str, image: String, d: &Decision) -> Row {
        let verdict = if d.mode == Mode::Skip {
            Verdict::Skip
        } else {
            match (&d.outcome, d.allowed) {
                (Some(Outcome::Verified { .. }), _) => Verdict::Pass,
                (_, true) if d.mode == Mode::Audit => Verdict::AuditFail,
                (_, true) => Verdict::Pass,
                (_, false) => Verdict::Fail,
            }
        };
        let signed_by = match &d.outcome {
            Some(Outcome::Verified { attestors, .. }) => {
                attestors.iter().map(|a| bounded(a, MAX_SHOWN)).collect()
            }
            _ => Vec::new(),
        };
        let attestations = d
            .attestations()
            .iter()
            .map(|f| {
                let t = bounded(&f.predicate_type, MAX_SHOWN);
                if f.accepted {
                    t
                } else {
                    format!("{t} (not counted)")
                }
            })
            .collect();
        Row {
            kind,
            image: bounded(&image, MAX_SHOWN),
            container: None,
            names: Vec::new(),
            digest: d.digest.clone(),
            signed_by,
            attestations,
            rule: bounded(&d.rule, MAX_SHOWN),
            mode: d.mode.as_str().into(),
            verdict,
            reason: bounded(&d.reason(), MAX_SHOWN * 4),
        }
    }

    fn refused(kind: &'static str, image: String, reason: &str) -> Row {
        Row {
            kind,
            image: bounded(&image, MAX_SHOWN),
            container: None,
            names: Vec::new(),
            digest: None,
            signed_by: Vec::new(),
            attestations: Vec::new(),
            rule: String::new(),
            mode: String::new(),
            verdict: Verdict::Fail,
            reason: bounded(reason, MAX_SHOWN * 4),
        }
    }
}

/// The result of an audit.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// What could not be listed (the audit is incomplete when there is any).
    pub incomplete: Vec<String>,
    /// Other things the operator should know (e.g. credentials that are not used).
    pub notes: Vec<String>,
}

/// Counts of a report, by verdict.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub total: usize,
    pub pass: usize,
    pub skip: usize,
    pub fail: usize,
    pub audit_fail: usize,
    pub complete: bool,
}

impl Report {
    /// Counts by verdict.
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            total: self.rows.len(),
            complete: self.incomplete.is_empty(),
            ..Summary::default()
        };
        for r in &self.rows {
            match r.verdict {
                Verdict::Pass => s.pass += 1,
                Verdict::Skip => s.skip += 1,
                Verdict::Fail => s.fail += 1,
                Verdict::AuditFail => s.audit_fail += 1,
            }
        }
        s
    }

    /// 0: everything listed passed and the listing is complete; 1: something would be refused
    /// (or fails under an audit rule); 2: nothing failed, but not everything could be listed.
    pub fn exit_code(&self) -> u8 {
        if self.rows.iter().any(|r| !r.verdict.passed()) {
            1
        } else if !self.incomplete.is_empty() {
            2
        } else {
            0
        }
    }

    /// The report as one JSON document.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct Doc<'a> {
            summary: Summary,
            rows: &'a [Row],
            incomplete: &'a [String],
            notes: &'a [String],
        }
        serde_json::to_writer_pretty(
            &mut *out,
            &Doc {
                summary: self.summary(),
                rows: &self.rows,
                incomplete: &self.incomplete,
                notes: &self.notes,
            },
        )?;
        writeln!(out)
    }

    /// The report as a table, then a summary line.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let node = self.rows.iter().any(|r| r.kind == "container");
        let mut header = vec![];
        if node {
            header.push("KIND");
        }
        header.extend([
            "IMAGE",
            "DIGEST",
            "SIGNED BY",
            "ATTESTATIONS",
            "VERDICT",
            "REASON",
        ]);
        let mut lines: Vec<Vec<String>> = Vec::new();
        for r in &self.rows {
            let mut l = Vec::new();
            if node {
                l.push(r.kind.to_string());
            }
            l.push(match &r.container {
                Some(c) => format!("{c} ({})", r.image),
                None => r.image.clone(),
            });
            l.push(short_digest(r.digest.as_deref()));
            l.push(or_dash(r.signed_by.join(", ")));
            l.push(or_dash(r.attestations.join(", ")));
            l.push(r.verdict.as_str().to_string());
            l.push(r.reason.clone());
            lines.push(l);
        }
        let cols = header.len();
        let mut width = vec![0usize; cols];
        for (i, h) in header.iter().enumerate() {
            width[i] = h.len();
        }
        for l in &lines {
            for (i, c) in l.iter().enumerate().take(cols - 1) {
                width[i] = width[i].max(c.chars().count().min(80));
            }
        }
        let print = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cols {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  ", w = width[i]));
                }
            }
            writeln!(out, "{}", s.trim_end())
        };
        print(
            out,
            &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )?;
        for l in &lines {
            print(out, l)?;
        }
        let s = self.summary();
        writeln!(
            out,
            "\n{} {}: {} pass, {} skip, {} fail, {} fail under audit rules{}",
            s.total,
            if node {
                "images and containers"
            } else {
                "images"
            },
            s.pass,
            s.skip,
            s.fail,
            s.audit_fail,
            if s.complete {
                String::new()
            } else {
                format!("; INCOMPLETE: {}", self.incomplete.join("; "))
            }
        )?;
        for n in &self.notes {
            writeln!(out, "note: {n}")?;
        }
        Ok(())
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn short_digest(d: Option<&str>) -> String {
    match d {
        Some(d) if d.len() > 19 => format!("{}…", d.get(..19).unwrap_or(d)),
        Some(d) => d.to_string(),
        None => "-".into(),
    }
}

/// A cosign attachment or referrers-tag-schema tag (`sha256-<hex>[.sig|.att|.sbom]`): not an
/// image of its own.
fn is_attachment_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let hex = rest.split('.').next().unwrap_or("");
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn progress_bar(show: bool, len: u64, what: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Lists every image (`registry/repo:tag`) under `targets`, plus every tag of `repositories`
/// (`registry/repo`), in name order. Problems go into `report.incomplete`.
pub async fn list_images(
    client: &Registry,
    targets: &[Target],
    repositories: &[String],
    creds: &DockerConfig,
    opts: &Options,
    report: &mut Report,
) -> Vec<String> {
    let mut repos: Vec<(String, String)> = Vec::new();
    let spinner = progress_bar(opts.progress, 0, "listing repositories");
    for t in targets {
        let auth = creds.auth_for(&t.registry);
        let mut last: Option<String> = None;
        let mut pages = 0usize;
        loop {
            pages += 1;
            let page = match client
                .catalog_page(&t.registry, opts.page_size, last.as_deref(), &auth)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    report.incomplete.push(format!(
                        "cannot list the repositories of {}: {} (registries that do not serve \
                         the catalog need --repository REGISTRY/REPO)",
                        t.registry,
                        bounded(&e.to_string(), MAX_SHOWN)
                    ));
                    break;
                }
            };
            for name in page.names {
                if t.covers(&name) {
                    repos.push((t.registry.clone(), name));
                }
            }
            spinner.set_message(format!("listing repositories: {}", repos.len()));
            // The next page must start after this one: a registry that sends the same `last`
            // again (or more pages than there can be images) is not followed further.
            match page.next {
                Some(n) if Some(&n) != last.as_ref() && pages <= opts.max_images => last = Some(n),
                Some(_) => {
                    report.incomplete.push(format!(
                        "{}: the catalog's pages do not advance; stopped after {pages} pages",
                        t.registry
                    ));
                    break;
                }
                None => break,
            }
            if repos.len() > opts.max_images {
                break;
            }
        }
    }
    for r in repositories {
        match reference::parse(r) {
            Ok(parsed) if parsed.tag() == Some("latest") || parsed.tag().is_none() => {
                repos.push((
                    parsed.registry().to_string(),
                    parsed.repository().to_string(),
                ));
            }
            _ => report.incomplete.push(format!(
                "--repository {}: expected REGISTRY/REPOSITORY without a tag or digest",
                bounded(r, MAX_SHOWN)
            )),
        }
    }
    repos.sort();
    repos.dedup();
    spinner.finish_and_clear();

    let bar = progress_bar(opts.progress, repos.len() as u64, "listing tags");
    // One bound for the tag listings of all repositories together (names and pages).
    let budget = AtomicUsize::new(0);
    let listed: Vec<(String, Result<Vec<String>, String>)> = stream::iter(repos)
        .map(|(registry, repo)| {
            let auth = creds.auth_for(&registry);
            let bar = bar.clone();
            let budget = &budget;
            async move {
                let r = list_tags(client, &registry, &repo, &auth, opts, budget).await;
                bar.inc(1);
                (format!("{registry}/{repo}"), r)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let mut images = Vec::new();
    for (repo, tags) in listed {
        match tags {
            Ok(tags) => images.extend(tags.into_iter().map(|t| format!("{repo}:{t}"))),
            Err(e) => report.incomplete.push(e),
        }
    }
    images.sort();
    if images.len() > opts.max_images || budget.load(Ordering::Relaxed) > opts.max_images {
        report.incomplete.push(format!(
            "listed more than {} tags; audited the first {} images by name (raise --max-images)",
            opts.max_images, opts.max_images
        ));
        images.truncate(opts.max_images);
    }
    images
}

/// The tags of one repository, page by page. `listed` is shared by all repositories' listings:
/// each page adds its names (an empty page counts one), and no page is asked for once it is
/// over `max_images`, so a registry cannot make the audit hold or request more than about
/// `max_images` names and pages in all, however many repositories it lists.
async fn list_tags(
    client: &Registry,
    registry: &str,
    repo: &str,
    auth: &Auth,
    opts: &Options,
    listed: &AtomicUsize,
) -> Result<Vec<String>, String> {
    let shown = format!("{registry}/{repo}");
    let parsed = reference::parse(&shown).map_err(|e| {
        format!(
            "{}: not a repository name cri-guard can check: {e}",
            bounded(&shown, MAX_SHOWN)
        )
    })?;
    let mut tags = Vec::new();
    let mut last: Option<String> = None;
    while listed.load(Ordering::Relaxed) <= opts.max_images {
        let page = client
            .tags_page(&parsed, opts.page_size, last.as_deref(), auth)
            .await
            .map_err(|e| {
                format!(
                    "cannot list the tags of {}: {}",
                    bounded(&shown, MAX_SHOWN),
                    bounded(&e.to_string(), MAX_SHOWN)
                )
            })?;
        listed.fetch_add(page.names.len().max(1), Ordering::Relaxed);
        tags.extend(page.names.into_iter().filter(|t| !is_attachment_tag(t)));
        match page.next {
            Some(n) if Some(&n) != last.as_ref() => last = Some(n),
            Some(_) => {
                return Err(format!(
                    "{}: the tag list's pages do not advance",
                    bounded(&shown, MAX_SHOWN)
                ));
            }
            None => return Ok(tags),
        }
    }
    Ok(tags)
}

/// Decides on `image` like PullImage, trying again while the verifier is at its bound.
async fn check_one(verifier: &Verifier, image: &str, namespace: &str, auth: &Auth) -> Decision {
    let mut d = verifier.check_image(image, namespace, auth).await;
    for _ in 0..BUSY_RETRIES {
        let busy = matches!(&d.outcome, Some(Outcome::Denied(x)) if x.busy);
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        d = verifier.check_image(image, namespace, auth).await;
    }
    d
}

/// Audits the images of registries: lists them ([`list_images`]) and decides on each.
pub async fn audit_registries(
    verifier: &Verifier,
    client: &Registry,
    targets: &[Target],
    repositories: &[String],
    creds: &DockerConfig,
    opts: &Options,
) -> Report {
    let mut report = Report::default();
    note_credentials(creds, &mut report);
    let images = list_images(client, targets, repositories, creds, opts, &mut report).await;
    let bar = progress_bar(opts.progress, images.len() as u64, "verifying");
    let mut rows: Vec<Row> = stream::iter(images)
        .map(|image| {
            let bar = bar.clone();
            async move {
                let registry = reference::parse(&image)
                    .map(|r| r.registry().to_string())
                    .unwrap_or_default();
                let auth = creds.auth_for(&registry);
                let d = check_one(verifier, &image, &opts.namespace, &auth).await;
                bar.inc(1);
                Row::from_decision("image", image, &d)
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    rows.sort_by(|a, b| a.image.cmp(&b.image));
    report.rows = rows;
    report
}

fn note_credentials(creds: &DockerConfig, report: &mut Report) {
    for (registry, why) in &creds.unsupported {
        report.notes.push(format!(
            "{}: credentials for {registry} are not used: {why}",
            creds
                .path
                .as_deref()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        ));
    }
}

/// Audits what a runtime holds: every image in its store (decided for a pod in
/// `opts.namespace`) and every running container (decided as a CreateContainer of it now).
pub async fn audit_node(
    verifier: &Verifier,
    runtime: &Path,
    creds: &DockerConfig,
    opts: &Options,
) -> Result<Report, String> {
    let mut report = Report::default();
    note_credentials(creds, &mut report);
    for (registry, auth) in &creds.auths {
        verifier.add_credentials(registry, auth);
    }
    let fail = |what: &str, e: tonic::Status| {
        format!(
            "the runtime at {} did not answer {what}: {}",
            runtime.display(),
            bounded(e.message(), MAX_SHOWN)
        )
    };
    let images = cri::image_client(runtime)
        .list_images(cri::ListImagesRequest::default())
        .await
        .map_err(|e| fail("ListImages", e))?
        .into_inner()
        .images;
    let mut rt = cri::runtime_client(runtime);
    let containers = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| fail("ListContainers", e))?
        .into_inner()
        .containers;
    let pods: BTreeMap<String, (String, String)> = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map_err(|e| fail("ListPodSandbox", e))?
        .into_inner()
        .items
        .into_iter()
        .filter_map(|p| {
            let m = p.metadata?;
            Some((p.id, (m.namespace, m.name)))
        })
        .collect();
    if images.len() + containers.len() > opts.max_images {
        report.incomplete.push(format!(
            "the runtime holds {} images and {} running containers; checked the first {} (raise --max-images)",
            images.len(),
            containers.len(),
            opts.max_images
        ));
    }
    // What the runtime calls each image id, to show containers by name.
    let names_of: BTreeMap<String, Vec<String>> = images
        .iter()
        .map(|i| {
            let names = i
                .repo_tags
                .iter()
                .chain(&i.repo_digests)
                .take(MAX_NAMES)
                .map(|n| bounded(n, MAX_SHOWN))
                .collect();
            (i.id.clone(), names)
        })
        .collect();
    let n_images = images.len().min(opts.max_images);
    let n_containers = containers.len().min(opts.max_images - n_images);
    let total = n_images + n_containers;
    let bar = progress_bar(opts.progress, total as u64, "checking");
    let names_of = &names_of;
    let image_rows = stream::iter(images.into_iter().take(n_images))
        .map(|image| {
            let bar = bar.clone();
            async move {
                let name = image
                    .repo_tags
                    .first()
                    .or(image.repo_digests.first())
                    .cloned()
                    .unwrap_or_else(|| image.id.clone());
                let mut row = match verifier.check_stored(&image, &opts.namespace).await {
                    Ok(d) => {
                        let mut row = Row::from_decision("image", name, &d);
                        row.digest = row.digest.or(Some(image.id.clone()));
                        row
                    }
                    Err(why) => {
                        let mut row = Row::refused("image", name, &why);
                        row.digest = Some(image.id.clone());
                        row
                    }
                };
                row.names = names_of.get(&image.id).cloned().unwrap_or_default();
                bar.inc(1);
                row
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    let container_rows = stream::iter(containers.into_iter().take(n_containers))
        .map(|c| {
            let bar = bar.clone();
            let pod = pods.get(&c.pod_sandbox_id).cloned().unwrap_or_default();
            let names = names_of.get(&c.image_ref).cloned().unwrap_or_default();
            async move {
                let name = c
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                let spec = c.image.clone().unwrap_or_default();
                // The name it was created with if the runtime kept it (containerd 1.6 keeps
                // only the id), else the runtime's first name for that image.
                let user = (!spec.user_specified_image.is_empty())
                    .then(|| spec.user_specified_image.clone());
                let shown = user
                    .clone()
                    .or_else(|| names.first().cloned())
                    .unwrap_or_else(|| spec.image.clone());
                // Exactly what a CreateContainer of this container would ask now: its sandbox,
                // the image id it runs, the name it was created with.
                let req = cri::CreateContainerRequest {
                    pod_sandbox_id: c.pod_sandbox_id.clone(),
                    config: Some(cri::ContainerConfig {
                        image: Some(cri::ImageSpec {
                            image: c.image_ref.clone(),
                            user_specified_image: user.unwrap_or_default(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    sandbox_config: None,
                };
                let mut row = match verifier.check_create(&req).await {
                    Ok((d, _)) => Row::from_decision("container", shown, &d),
                    Err(status) => Row::refused("container", shown, &status.message),
                };
                row.container = Some(bounded(&format!("{}/{}/{name}", pod.0, pod.1), MAX_SHOWN));
                row.names = names;
                bar.inc(1);
                row
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    let mut rows: Vec<Row> = image_rows.collect().await;
    let mut crows: Vec<Row> = container_rows.collect().await;
    bar.finish_and_clear();
    rows.sort_by(|a, b| a.image.cmp(&b.image));
    crows.sort_by(|a, b| a.container.cmp(&b.container));
    rows.extend(crows);
    report.rows = rows;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets are a registry host with an optional repository prefix; a prefix covers itself
    /// and what is below it, not names that merely start with it.
    #[test]
    fn targets() {
        let t = Target::parse("127.0.0.1:5000/team").unwrap();
        assert_eq!(t.registry, "127.0.0.1:5000");
        assert!(t.covers("team"));
        assert!(t.covers("team/app"));
        assert!(!t.covers("teammate/app"));
        assert!(Target::parse("Registry.Example.com").unwrap().covers("x"));
        for bad in ["", "nginx", "library/nginx", "*.example.com/x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// cosign's tags and the referrers tag schema's are not audited as images.
    #[test]
    fn attachment_tags() {
        let h = "a".repeat(64);
        for t in [
            format!("sha256-{h}"),
            format!("sha256-{h}.sig"),
            format!("sha256-{h}.att"),
        ] {
            assert!(is_attachment_tag(&t), "{t}");
        }
        for t in ["v1", "latest", "sha256-abc.sig", "sha256"] {
            assert!(!is_attachment_tag(t), "{t}");
        }
    }

    /// The exit code: failures first, then an incomplete listing, else 0.
    #[test]
    fn exit_codes() {
        let row = |verdict| Row {
            kind: "image",
            image: "r/x:1".into(),
            container: None,
            names: vec![],
            digest: None,
            signed_by: vec![],
            attestations: vec![],
            rule: "r".into(),
            mode: "enforce".into(),
            verdict,
            reason: String::new(),
        };
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 0);
        r.rows.push(row(Verdict::Pass));
        r.rows.push(row(Verdict::Skip));
        assert_eq!(r.exit_code(), 0);
        r.incomplete.push("x".into());
        assert_eq!(r.exit_code(), 2);
        r.rows.push(row(Verdict::AuditFail));
        assert_eq!(r.exit_code(), 1);
        let mut out = Vec::new();
        r.write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "3 images: 1 pass, 1 skip, 0 fail, 1 fail under audit rules; INCOMPLETE: x"
            ),
            "{text}"
        );
    }
}
