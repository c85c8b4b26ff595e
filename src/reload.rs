//! Policy reload: on SIGHUP and when the policy file changes, load it again and swap it in
//! without touching the connections; a policy that does not load is refused and the one in force
//! stays.
//!
//! ```text
//! SIGHUP ───────────────┐
//! inotify on the policy ├─> debounce ─> load (read, parse, keys) ─> apply (Verifier::reload:
//! file's directories    │   (quiet 100 ms,    │                     new generation, new cache, I5)
//! safety-net poll (30 s)┘    at most 1 s)     └─ error: one log line, old policy stays
//!                                              └─> PolicyStatus (generation, last result) for metrics
//! ```
//!
//! What counts as a change: the file's content or the file it finally resolves to (its
//! canonical path). The directories watched are the one that holds the configured path and the
//! one that holds its resolved target, so all three ways a file gets replaced are seen:
//! - a ConfigMap-style swap: `policy.toml -> ..data/policy.toml`, `..data -> ..2025_01_01_..`,
//!   and an update renames a new `..data` link over the old one (a new canonical path);
//! - an editor writing the file in place (close-after-write);
//! - a new file renamed over the old one (vim, `mv`, most configuration tools).
//!
//! A file that changed but did not load is remembered, so it is reported once, not at every
//! event or poll; SIGHUP always loads again (key files referenced by the policy are not
//! watched: change them with a new policy version or send SIGHUP). Loading runs on the blocking
//! pool, so reading keys and building the registry client never stalls the proxy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::config::ConfigErrors;
use crate::notify::Notifier;
use crate::verify::policy::Policy;

/// After an event, wait until the directory has been quiet this long before loading...
const QUIET: Duration = Duration::from_millis(100);
/// ...but never longer than this after the first event.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Compare the file with the one in force this often even without events (a missed event, an
/// exhausted inotify watch limit, a directory that was replaced).
const POLL_EVERY: Duration = Duration::from_secs(30);

/// What identifies the policy file's content as loaded: the file it resolves to and a SHA-256
/// of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The configured path with every symlink resolved.
    pub resolved: PathBuf,
    /// SHA-256 of the text.
    pub digest: [u8; 32],
}

/// A policy read from disk, with what it was read from.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub fingerprint: Fingerprint,
}

/// Reads and validates the policy at `path` (relative key paths from `path`'s directory, as
/// [`Policy::load`] does), with the fingerprint of what was read.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let (fingerprint, text) = read(path)?;
    let policy = parse(path, &text)?;
    Ok(Loaded {
        policy,
        fingerprint,
    })
}

fn parse(path: &Path, text: &str) -> Result<Policy, ConfigErrors> {
    let base = path.parent().unwrap_or(Path::new("/"));
    Policy::parse(&path.display().to_string(), text, base)
}

fn read(path: &Path) -> Result<(Fingerprint, String), ConfigErrors> {
    let cannot = |e: std::io::Error| ConfigErrors {
        source: path.display().to_string(),
        problems: vec![format!(
            "cannot read the policy file: {e} (check the `policy` path)"
        )],
    };
    let resolved = std::fs::canonicalize(path).map_err(cannot)?;
    let text = std::fs::read_to_string(path).map_err(cannot)?;
    let fingerprint = Fingerprint {
        resolved,
        digest: Sha256::digest(text.as_bytes()).into(),
    };
    Ok((fingerprint, text))
}

/// What set off a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (`systemctl reload cri-guard`).
    Signal,
    /// The policy file or its directory changed.
    FileChange,
    /// The periodic comparison found a change no event reported.
    Poll,
}

impl Trigger {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::FileChange => "file_change",
            Trigger::Poll => "poll",
        }
    }
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new policy is in force under this generation.
    Reloaded { generation: u64 },
    /// The new policy was refused; the previous one stays in force.
    Refused { reason: String },
}

/// One reload attempt.
#[derive(Debug, Clone)]
pub struct ReloadAttempt {
    pub at: SystemTime,
    pub trigger: Trigger,
    pub outcome: ReloadOutcome,
}

/// The policy in force and how reloading has gone, as metrics and health checks read it.
#[derive(Debug, Clone)]
pub struct ReloadSnapshot {
    /// Generation of the policy in force (part of every cache key, invariant I5).
    pub generation: u64,
    /// When the policy in force was loaded.
    pub loaded_at: SystemTime,
    /// Reloads that put a new policy in force since start.
    pub reloads: u64,
    /// Reloads refused since start.
    pub failures: u64,
    /// The latest attempt, if any.
    pub last: Option<ReloadAttempt>,
}

impl ReloadSnapshot {
    /// Whether the latest attempt (if any) succeeded: what a "last reload ok" gauge shows.
    pub fn last_ok(&self) -> bool {
        !matches!(
            self.last,
            Some(ReloadAttempt {
                outcome: ReloadOutcome::Refused { .. },
                ..
            })
        )
    }
}

/// Shared, cheaply readable reload state.
#[derive(Debug)]
pub struct PolicyStatus {
    inner: Mutex<ReloadSnapshot>,
}

impl PolicyStatus {
    /// The state right after the policy with `generation` was loaded at start.
    pub fn new(generation: u64) -> PolicyStatus {
        PolicyStatus {
            inner: Mutex::new(ReloadSnapshot {
                generation,
                loaded_at: SystemTime::now(),
                reloads: 0,
                failures: 0,
                last: None,
            }),
        }
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> ReloadSnapshot {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, trigger: Trigger, outcome: ReloadOutcome) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let at = SystemTime::now();
        match &outcome {
            ReloadOutcome::Reloaded { generation } => {
                s.generation = *generation;
                s.loaded_at = at;
                s.reloads += 1;
            }
            ReloadOutcome::Refused { .. } => s.failures += 1,
        }
        s.last = Some(ReloadAttempt {
            at,
            trigger,
            outcome,
        });
    }
}

/// Puts a loaded policy in force (e.g. [`crate::verify::Verifier::reload`]); an error refuses it.
pub type Apply = Arc<dyn Fn(Policy) -> Result<(), String> + Send + Sync>;

/// Watches the policy file and the signal and reloads; see the module docs.
pub struct Reloader {
    path: PathBuf,
    apply: Apply,
    status: Arc<PolicyStatus>,
    notifier: Arc<Notifier>,
    /// The last version tried (in force, or refused): no retry until it changes.
    seen: Option<Fingerprint>,
    /// Why the last attempt on an unreadable file failed: said once, not at every check.
    unreadable: Option<String>,
}

impl Reloader {
    /// A reloader for the policy at `path`, whose version `in_force` is already applied.
    pub fn new(
        path: PathBuf,
        in_force: Fingerprint,
        apply: Apply,
        status: Arc<PolicyStatus>,
        notifier: Arc<Notifier>,
    ) -> Reloader {
        Reloader {
            path,
            apply,
            status,
            notifier,
            seen: Some(in_force),
            unreadable: None,
        }
    }

    /// Runs until the process ends: reloads on SIGHUP, and on file changes when `watch`.
    pub async fn run(mut self, watch: bool) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reload by signal disabled");
                None
            }
        };
        let mut watcher = if watch {
            Watcher::new(&self.path)
        } else {
            None
        };
        let mut poll =
            tokio::time::interval_at(tokio::time::Instant::now() + POLL_EVERY, POLL_EVERY);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = recv_signal(&mut hup) => match got {
                    Some(()) => {
                        info!(policy = %self.path.display(), "SIGHUP: loading the policy again");
                        self.attempt(Trigger::Signal, true).await;
                    }
                    None => hup = None,
                },
                got = next_change(&mut watcher) => match got {
                    Some(()) => {
                        debounce(&mut watcher).await;
                        self.attempt(Trigger::FileChange, false).await;
                        if let Some(w) = &mut watcher {
                            w.rewatch();
                        }
                    }
                    // The event stream failed: the periodic check carries on alone.
                    None => watcher = None,
                },
                _ = poll.tick(), if watch => {
                    if let Some(w) = &mut watcher {
                        w.rewatch();
                    }
                    self.attempt(Trigger::Poll, false).await;
                }
            }
        }
    }

    /// Loads the policy and applies it, unless (`force` false) it is the version already tried.
    pub async fn attempt(&mut self, trigger: Trigger, force: bool) {
        let path = self.path.clone();
        let apply = self.apply.clone();
        let seen = if force { None } else { self.seen.clone() };
        let result = tokio::task::spawn_blocking(move || -> Attempt {
            // The file's fingerprint first: a version already in force or already refused is
            // not parsed again (a parse reads key files and trust roots).
            let (fingerprint, text) = match read(&path) {
                Ok(r) => r,
                Err(e) => return Attempt::Refused(None, e.problems.join("; ")),
            };
            if seen.as_ref() == Some(&fingerprint) {
                return Attempt::Unchanged;
            }
            let policy = match parse(&path, &text) {
                Ok(p) => p,
                Err(e) => return Attempt::Refused(Some(fingerprint), e.problems.join("; ")),
            };
            let generation = policy.generation;
            match apply(policy) {
                Ok(()) => Attempt::Reloaded(fingerprint, generation),
                Err(e) => Attempt::Refused(Some(fingerprint), e),
            }
        })
        .await;
        let path = self.path.display();
        match result {
            Ok(Attempt::Unchanged) => {}
            Ok(Attempt::Refused(None, reason))
                if !force && self.unreadable.as_ref() == Some(&reason) => {}
            Ok(Attempt::Reloaded(fingerprint, generation)) => {
                self.unreadable = None;
                info!(policy = %path, generation, trigger = trigger.as_str(), "policy reloaded; cached decisions dropped");
                self.seen = Some(fingerprint);
                self.status
                    .record(trigger, ReloadOutcome::Reloaded { generation });
                self.notifier.status(&format!(
                    "serving; policy {path} generation {generation} in force"
                ));
            }
            Ok(Attempt::Refused(fingerprint, reason)) => {
                error!(policy = %path, trigger = trigger.as_str(), problems = %reason,
                    "policy reload refused; the previous policy stays in force");
                if fingerprint.is_none() {
                    self.unreadable = Some(reason.clone());
                }
                self.seen = fingerprint;
                self.status.record(
                    trigger,
                    ReloadOutcome::Refused {
                        reason: reason.clone(),
                    },
                );
                self.notifier.status(&format!(
                    "serving; policy reload refused, previous policy in force: {reason}"
                ));
            }
            Err(e) => {
                error!(policy = %path, error = %e, "policy reload failed; the previous policy stays in force");
                self.status.record(
                    trigger,
                    ReloadOutcome::Refused {
                        reason: e.to_string(),
                    },
                );
            }
        }
    }

    /// The state metrics read.
    pub fn status(&self) -> Arc<PolicyStatus> {
        self.status.clone()
    }
}

enum Attempt {
    Unchanged,
    Reloaded(Fingerprint, u64),
    Refused(Option<Fingerprint>, String),
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_change(w: &mut Option<Watcher>) -> Option<()> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Waits until no event came for [`QUIET`], or [`MAX_DELAY`] after the first.
async fn debounce(w: &mut Option<Watcher>) {
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tokio::time::sleep(QUIET) => return,
            more = next_change(w) => if more.is_none() { return },
        }
    }
}

/// inotify watches on the directories that hold the policy file and its resolved target.
struct Watcher {
    path: PathBuf,
    stream: inotify::EventStream<Vec<u8>>,
    watches: Vec<(PathBuf, inotify::WatchDescriptor)>,
}

impl Watcher {
    fn new(path: &Path) -> Option<Watcher> {
        let made = inotify::Inotify::init().and_then(|i| i.into_event_stream(vec![0u8; 8192]));
        match made {
            Ok(stream) => {
                let mut w = Watcher {
                    path: path.to_path_buf(),
                    stream,
                    watches: Vec::new(),
                };
                w.rewatch();
                Some(w)
            }
            Err(e) => {
                warn!(error = %e, "cannot watch the policy file (inotify); changes are found by a check every {POLL_EVERY:?} and on SIGHUP");
                None
            }
        }
    }

    /// The directories that should be watched now.
    fn wanted(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(p) = self.path.parent() {
            dirs.push(p.to_path_buf());
        }
        if let Some(p) = std::fs::canonicalize(&self.path)
            .ok()
            .and_then(|r| r.parent().map(Path::to_path_buf))
        {
            if !dirs.contains(&p) {
                dirs.push(p);
            }
        }
        dirs
    }

    /// Brings the watches in line with where the file now resolves to.
    fn rewatch(&mut self) {
        let wanted = self.wanted();
        let mut handle = self.stream.watches();
        self.watches.retain(|(dir, wd)| {
            let keep = wanted.contains(dir);
            if !keep {
                // Fails harmlessly when the directory (e.g. an old `..2025_...`) is gone.
                let _ = handle.remove(wd.clone());
            }
            keep
        });
        use inotify::WatchMask as M;
        let mask = M::CREATE
            | M::CLOSE_WRITE
            | M::MOVED_TO
            | M::MOVED_FROM
            | M::DELETE
            | M::ATTRIB
            | M::DELETE_SELF
            | M::MOVE_SELF;
        for dir in wanted {
            if self.watches.iter().any(|(d, _)| *d == dir) {
                continue;
            }
            // Adding a watch that exists returns the same descriptor; a missing directory
            // is retried at the next event or poll.
            match handle.add(&dir, mask) {
                Ok(wd) => self.watches.push((dir, wd)),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch the policy's directory; retrying at the next check")
                }
            }
        }
    }

    /// The next event (any event in a watched directory counts; the fingerprint decides).
    async fn next(&mut self) -> Option<()> {
        match self.stream.next().await {
            Some(Ok(ev)) => {
                if ev.mask.contains(inotify::EventMask::IGNORED) {
                    // A watched directory went away (e.g. a replaced `..2025_...` dir).
                    let wd = ev.wd;
                    self.watches.retain(|(_, w)| *w != wd);
                }
                Some(())
            }
            Some(Err(e)) => {
                warn!(error = %e, "reading policy file events failed; falling back to the periodic check");
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const GOOD_A: &str = "default = \"enforce\"\n";
    const GOOD_B: &str = "default = \"audit\"\n";
    const BAD: &str = "default = \"sometimes\"\n";

    /// A reloader whose apply records the `default` mode of each policy put in force.
    fn reloader(path: &Path) -> (Reloader, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
        let loaded = load(path).unwrap();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let (a, c) = (applied.clone(), calls.clone());
        let apply: Apply = Arc::new(move |p: Policy| {
            c.fetch_add(1, Ordering::SeqCst);
            a.lock().unwrap().push(p.default.as_str().to_string());
            Ok(())
        });
        let r = Reloader::new(
            path.to_path_buf(),
            loaded.fingerprint,
            apply,
            Arc::new(PolicyStatus::new(loaded.policy.generation)),
            Arc::new(Notifier::disabled()),
        );
        (r, applied, calls)
    }

    /// Lays out `dir` as the kubelet writes a ConfigMap volume, with `text` as policy.toml.
    fn configmap_write(dir: &Path, text: &str, n: u32) {
        let ts = format!("..2025_01_01_00_00_0{n}.000000001");
        std::fs::create_dir(dir.join(&ts)).unwrap();
        std::fs::write(dir.join(&ts).join("policy.toml"), text).unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        let old = std::fs::read_link(dir.join("..data")).ok();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if !dir.join("policy.toml").exists() {
            std::os::unix::fs::symlink("..data/policy.toml", dir.join("policy.toml")).unwrap();
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).unwrap();
        }
    }

    /// Unchanged content is not reloaded; changed content is; a refused version is tried once;
    /// a forced attempt (SIGHUP) always loads.
    #[tokio::test]
    async fn reloads_only_changes_and_refuses_bad_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, GOOD_A).unwrap();
        let (mut r, applied, calls) = reloader(&path);
        let status = r.status();
        let first = status.snapshot().generation;

        r.attempt(Trigger::Poll, false).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "unchanged file reloaded");

        std::fs::write(&path, GOOD_B).unwrap();
        r.attempt(Trigger::FileChange, false).await;
        assert_eq!(*applied.lock().unwrap(), ["audit"]);
        let s = status.snapshot();
        assert!(s.generation > first);
        assert_eq!((s.reloads, s.failures), (1, 0));
        assert!(s.last_ok());

        std::fs::write(&path, BAD).unwrap();
        r.attempt(Trigger::FileChange, false).await;
        r.attempt(Trigger::Poll, false).await;
        let s = status.snapshot();
        assert_eq!(
            (s.reloads, s.failures),
            (1, 1),
            "a bad version is reported once"
        );
        assert!(!s.last_ok());
        match &s.last.as_ref().unwrap().outcome {
            ReloadOutcome::Refused { reason } => assert!(reason.contains("default"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a bad policy reached apply"
        );

        std::fs::write(&path, GOOD_B).unwrap();
        r.attempt(Trigger::FileChange, false).await;
        r.attempt(Trigger::Signal, true).await;
        assert_eq!(*applied.lock().unwrap(), ["audit", "audit", "audit"]);
        assert_eq!(status.snapshot().reloads, 3);
    }

    /// A policy file that disappears is reported once, not at every check; it counts again once
    /// it is back.
    #[tokio::test]
    async fn missing_file_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, GOOD_A).unwrap();
        let (mut r, applied, _) = reloader(&path);
        let status = r.status();
        std::fs::remove_file(&path).unwrap();
        r.attempt(Trigger::FileChange, false).await;
        r.attempt(Trigger::Poll, false).await;
        r.attempt(Trigger::Poll, false).await;
        assert_eq!(status.snapshot().failures, 1);
        std::fs::write(&path, GOOD_B).unwrap();
        r.attempt(Trigger::FileChange, false).await;
        assert_eq!(*applied.lock().unwrap(), ["audit"]);
        std::fs::remove_file(&path).unwrap();
        r.attempt(Trigger::Poll, false).await;
        assert_eq!(status.snapshot().failures, 2);
    }

    /// An apply that fails (e.g. the registry client cannot be built) refuses the policy.
    #[tokio::test]
    async fn failed_apply_is_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, GOOD_A).unwrap();
        let loaded = load(&path).unwrap();
        let status = Arc::new(PolicyStatus::new(loaded.policy.generation));
        let mut r = Reloader::new(
            path.clone(),
            loaded.fingerprint,
            Arc::new(|_| Err("no registry client".into())),
            status.clone(),
            Arc::new(Notifier::disabled()),
        );
        std::fs::write(&path, GOOD_B).unwrap();
        r.attempt(Trigger::FileChange, false).await;
        let s = status.snapshot();
        assert_eq!(s.generation, loaded.policy.generation);
        assert_eq!(s.failures, 1);
    }

    /// Waits (bounded) until `applied` holds `n` entries.
    async fn wait_applied(applied: &Mutex<Vec<String>>, n: usize) -> Vec<String> {
        for _ in 0..100 {
            let a = applied.lock().unwrap().clone();
            if a.len() >= n {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        applied.lock().unwrap().clone()
    }

    /// The watcher sees a ConfigMap-style `..data` swap, an in-place write and a rename over
    /// the file, each exactly once.
    #[tokio::test]
    async fn watcher_sees_every_kind_of_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        configmap_write(dir.path(), GOOD_A, 1);
        let (r, applied, _) = reloader(&path);
        let task = tokio::spawn(r.run(true));
        tokio::time::sleep(Duration::from_millis(50)).await;

        configmap_write(dir.path(), GOOD_B, 2);
        assert_eq!(wait_applied(&applied, 1).await, ["audit"]);

        // Turn the symlink into a plain file, then write it in place.
        let plain = dir.path().join("plain.toml");
        let (r2, applied2, _) = {
            std::fs::write(&plain, GOOD_A).unwrap();
            reloader(&plain)
        };
        let task2 = tokio::spawn(r2.run(true));
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::write(&plain, GOOD_B).unwrap();
        assert_eq!(wait_applied(&applied2, 1).await, ["audit"]);

        let tmp = dir.path().join(".plain.toml.new");
        std::fs::write(&tmp, GOOD_A).unwrap();
        std::fs::rename(&tmp, &plain).unwrap();
        assert_eq!(wait_applied(&applied2, 2).await, ["audit", "enforce"]);

        // Nothing else was reloaded for the other file's events.
        tokio::time::sleep(QUIET * 3).await;
        assert_eq!(applied.lock().unwrap().len(), 1);
        task.abort();
        task2.abort();
    }
}
