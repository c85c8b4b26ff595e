//! Metrics and the decision log of the real binary in front of a real containerd and registry:
//! /metrics read before and after real calls moves by exactly what the calls did; every
//! intercepted call writes one decision line (denials at WARN, audit-mode would-be denials at
//! WARN with `audit`), never a credential; reload state, runtime health and /readyz follow what
//! happens; and the dashboard and alert rules in deploy/ name only metrics this scrape lists.

mod fakes;
mod guarded;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cri_guard::cri;
use guarded::pull_via;
use support::TestBed;
use support::sign::{self, TestKey};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");
const PASSWORD: &str = "hunter2-metrics-secret";

struct Served {
    child: Child,
    socket: PathBuf,
    metrics: String,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(bed: &TestBed, policy: &Path) -> Served {
    let socket = bed.dir.path().join("guard.sock");
    let metrics = format!("127.0.0.1:{}", support::util::free_port());
    let log = bed.dir.path().join("guard.log");
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--listen")
        .arg(&socket)
        .arg("--upstream")
        .arg(bed.containerd_socket())
        .arg("--policy")
        .arg(policy)
        .args(["--metrics-listen", &metrics, "--log-format", "json"])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let s = Served {
        child,
        socket,
        metrics,
        log,
    };
    let ok = support::util::poll_until(Duration::from_secs(10), Duration::from_millis(5), || {
        std::os::unix::net::UnixStream::connect(&s.socket).is_ok()
            && support::util::http(&s.metrics, "GET", "/healthz", &[], b"").is_ok()
    });
    assert!(
        ok,
        "cri-guard did not start: {}",
        std::fs::read_to_string(&s.log).unwrap_or_default()
    );
    s
}

/// Samples of a scrape: `name{labels}` -> value.
fn scrape(addr: &str) -> (String, BTreeMap<String, f64>) {
    let r = support::util::http(addr, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let text = r.text();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse::<f64>().ok()?))
        })
        .collect();
    (text, samples)
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    s.get(key).copied().unwrap_or(0.0)
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    value(after, key) - value(before, key)
}

fn decisions(method: &str, rule: &str, result: &str, reason: &str) -> String {
    format!(
        "cri_guard_decisions_total{{method=\"{method}\",rule=\"{rule}\",result=\"{result}\",reason=\"{reason}\"}}"
    )
}

/// The decision lines of the log (JSON, one object per line).
fn decision_lines(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "decision")
        .collect()
}

/// Every sample name a scrape can contain, from its `# TYPE` lines.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for rest in exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// The `cri_guard_*` names in a PromQL expression.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("cri_guard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn exprs_of_deploy() -> Vec<(String, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let rules = std::fs::read_to_string(repo.join("deploy/prometheus-rules.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&rules).unwrap();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            out.push((
                rule["alert"].as_str().unwrap().to_string(),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    fn walk(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("expr", Some(e)) => out.push(("dashboard".into(), e.to_string())),
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    walk(&dashboard, &mut out);
    out
}

/// Real calls move the metrics by exactly what they did; one decision line per intercepted
/// call; the dashboard and alert rules name only what this scrape exports; reloads and the
/// runtime's health show in the metrics and in /readyz.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_decision_log_follow_real_calls() {
    let bed = TestBed::start().await;
    let reg = bed.registry.addr().to_string();
    let key = TestKey::p256();
    let key_path = key.write_public(bed.dir.path(), "release");
    let (signed, signed_digest) = bed.registry.push("app/signed", "v1", None);
    sign::sign_image(&reg, None, "app/signed", &signed_digest, &key);
    let (unsigned, _) = bed.registry.push("app/unsigned", "v1", Some("unsigned"));
    let (audited, _) = bed.registry.push("audit/unsigned", "v1", Some("audited"));
    // A registry the policy names that is not there: 127.0.0.1:9 (discard) refuses connections.
    let down = "127.0.0.1:9/down/app:v1";
    let policy_text = |extra: &str| {
        format!(
            "default = \"enforce\"\nhostsDir = \"{}\"\n\
             [sandbox]\nimage = \"{pause}\"\n\
             [registries.\"127.0.0.1:9\"]\ninsecure = true\n\
             [[rules]]\nname = \"pause\"\nimageReferences = [\"{}\"]\nmode = \"skip\"\n\
             [[rules]]\nname = \"audit-team\"\nimageReferences = [\"{reg}/audit/*\"]\nmode = \"audit\"\n\
             [[rules.attestors]]\nname = \"release\"\nkey = \"{k}\"\n\
             [[rules]]\nname = \"down\"\nimageReferences = [\"127.0.0.1:9/*\"]\n\
             [[rules.attestors]]\nname = \"release\"\nkey = \"{k}\"\n\
             [[rules]]\nname = \"app\"\nimageReferences = [\"{reg}/app/*\"]\n\
             [[rules.attestors]]\nname = \"release\"\nkey = \"{k}\"\n{extra}",
            bed.containerd.certs_dir().display(),
            bed.pause_image,
            k = key_path.display(),
            pause = bed.pause_image
        )
    };
    let policy = bed.dir.path().join("policy.toml");
    std::fs::write(&policy, policy_text("")).unwrap();
    let s = serve(&bed, &policy);
    let (_, before) = scrape(&s.metrics);
    let generation = value(&before, "cri_guard_policy_generation");
    assert!(generation > 0.0);
    assert_eq!(value(&before, "cri_guard_policy_loaded"), 1.0);

    // The calls, through cri-guard.
    let mut rt = cri::runtime_client(&s.socket);
    for _ in 0..5 {
        rt.version(cri::VersionRequest::default()).await.unwrap();
    }
    let secret = cri::AuthConfig {
        username: "ci-bot".into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    pull_via(&s.socket, &signed, "team-a", Some(secret))
        .await
        .unwrap();
    pull_via(&s.socket, &signed, "team-a", None).await.unwrap(); // a cache hit
    let denied = pull_via(&s.socket, &unsigned, "team-a", None).await;
    assert!(denied.is_err());
    pull_via(&s.socket, &audited, "team-a", None)
        .await
        .expect("an audit rule lets it through");
    let unavailable = pull_via(&s.socket, down, "team-a", None).await.unwrap_err();
    assert!(
        unavailable.message().starts_with("RegistryUnavailable: "),
        "{unavailable:?}"
    );
    let pod = support::run_pod(&s.socket, &signed, "team-a").await; // sandbox, pull, create

    let (text, after) = scrape(&s.metrics);
    let d = |k: &str| delta(&before, &after, k);
    assert_eq!(d("cri_guard_relayed_calls_total{method=\"Version\"}"), 5.0);
    assert_eq!(d("cri_guard_relayed_errors_total{method=\"Version\"}"), 0.0);
    assert_eq!(
        d("cri_guard_relayed_calls_total{method=\"StartContainer\"}"),
        1.0
    );
    assert_eq!(
        d(&decisions("PullImage", "app", "allow", "verified")),
        3.0,
        "{text}"
    );
    assert_eq!(
        d(&decisions("PullImage", "app", "deny", "unsigned")),
        1.0,
        "{text}"
    );
    assert_eq!(
        d(&decisions(
            "PullImage",
            "audit-team",
            "would_deny",
            "unsigned"
        )),
        1.0,
        "{text}"
    );
    assert_eq!(
        d(&decisions(
            "PullImage",
            "down",
            "deny",
            "registry_unavailable"
        )),
        1.0,
        "{text}"
    );
    assert_eq!(
        d(&decisions("CreateContainer", "app", "allow", "verified")),
        1.0,
        "{text}"
    );
    assert_eq!(
        d(&decisions("RunPodSandbox", "pause", "allow", "skipped")),
        1.0,
        "{text}"
    );
    // Three digests verified once each (signed, unsigned, audited); the rest are cache hits.
    assert_eq!(d("cri_guard_cache_misses_total"), 3.0, "{text}");
    assert_eq!(d("cri_guard_cache_hits_total"), 3.0, "{text}");
    assert_eq!(
        d("cri_guard_verification_duration_seconds_count{result=\"verified\"}"),
        1.0
    );
    assert_eq!(
        d("cri_guard_verification_duration_seconds_count{result=\"denied\"}"),
        2.0
    );
    assert_eq!(
        d("cri_guard_decision_duration_seconds_count{method=\"PullImage\"}"),
        6.0
    );
    assert!(
        d(&format!(
            "cri_guard_registry_requests_total{{registry=\"{reg}\"}}"
        )) >= 3.0
    );
    assert!(
        d("cri_guard_registry_errors_total{registry=\"127.0.0.1:9\",kind=\"unreachable\"}") >= 1.0,
        "{text}"
    );
    assert!(value(&after, "cri_guard_cache_entries") >= 1.0);
    assert!(d("cri_guard_upstream_connects_total") >= 1.0);
    assert_eq!(value(&after, "cri_guard_upstream_up"), 1.0);
    assert!(!text.contains(PASSWORD) && !text.contains("team-a"));

    // One decision line per intercepted call: 6 pulls, 1 sandbox, 1 create.
    let lines = decision_lines(&s.log);
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(!log.contains(PASSWORD), "a credential reached the log");
    for l in &lines {
        for field in [
            "method",
            "image",
            "digest",
            "namespace",
            "pod",
            "rule",
            "mode",
            "result",
            "reason",
            "reason_class",
            "cached",
            "micros",
        ] {
            assert!(!l[field].is_null(), "{field} missing in {l}");
        }
        let want = match l["result"].as_str().unwrap() {
            "allow" => "INFO",
            _ => "WARN",
        };
        assert_eq!(l["level"], want, "{l}");
        assert_eq!(l["audit"] == true, l["result"] == "would_deny", "{l}");
    }
    let create = lines
        .iter()
        .find(|l| l["method"] == "CreateContainer")
        .unwrap();
    assert_eq!(create["pod"], pod.pod_name.as_str(), "the runtime's record");
    assert_eq!(create["namespace"], "team-a");
    assert_eq!(create["digest"], signed_digest.as_str());
    assert_eq!(
        lines.iter().filter(|l| l["cached"] == true).count(),
        3,
        "{lines:#?}"
    );

    // Every metric the dashboard and the alert rules name is in this scrape.
    let exported = exported_names(&text);
    for (what, expr) in exprs_of_deploy() {
        let used = names_in(&expr);
        assert!(!used.is_empty(), "{what}: {expr}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "{what} uses {unknown:?}, not exported");
    }
    assert!(!names_in("cri_guard_decision_total").is_subset(&exported));

    // A policy with a problem is refused; the old one stays and the metrics say so.
    std::fs::write(&policy, policy_text("[[rules]]\nname = 3\n")).unwrap();
    let refused =
        support::util::poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            let (_, m) = scrape(&s.metrics);
            value(&m, "cri_guard_policy_last_reload_success") == 0.0
        });
    assert!(refused, "{}", std::fs::read_to_string(&s.log).unwrap());
    let (_, m) = scrape(&s.metrics);
    assert_eq!(
        value(&m, "cri_guard_policy_reloads_total{result=\"failure\"}"),
        1.0
    );
    assert_eq!(value(&m, "cri_guard_policy_generation"), generation);
    assert!(value(&m, "cri_guard_policy_last_reload_timestamp_seconds") > 1.7e9);
    // Fixed: a new generation, and the last reload succeeded.
    std::fs::write(&policy, policy_text("")).unwrap();
    let reloaded =
        support::util::poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
            let (_, m) = scrape(&s.metrics);
            value(&m, "cri_guard_policy_last_reload_success") == 1.0
        });
    assert!(reloaded);
    let (_, m) = scrape(&s.metrics);
    assert!(value(&m, "cri_guard_policy_generation") != generation);
    assert_eq!(
        value(&m, "cri_guard_policy_reloads_total{result=\"success\"}"),
        1.0
    );

    // The runtime goes away: /readyz and upstream_up say so, and calls count as errors.
    let mut bed = bed;
    tokio::task::block_in_place(|| bed.containerd.kill());
    let errors_before = value(&m, "cri_guard_relayed_errors_total{method=\"Version\"}");
    assert!(rt.version(cri::VersionRequest::default()).await.is_err());
    std::thread::sleep(Duration::from_millis(1100));
    let r = support::util::http(&s.metrics, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let (_, m) = scrape(&s.metrics);
    assert_eq!(value(&m, "cri_guard_upstream_up"), 0.0);
    assert_eq!(
        value(&m, "cri_guard_relayed_errors_total{method=\"Version\"}") - errors_before,
        1.0
    );
    assert!(value(&m, "cri_guard_upstream_connect_failures_total") >= 1.0);
    tokio::task::block_in_place(|| bed.containerd.start_again());
    let back =
        support::util::poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            support::util::http(&s.metrics, "GET", "/readyz", &[], b"")
                .is_ok_and(|r| r.status == 200)
        });
    assert!(back);
    let started = Instant::now();
    drop(s);
    assert!(started.elapsed() < Duration::from_secs(5));
}
