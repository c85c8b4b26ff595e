//! The operator's view, checked against the real binary: the metrics listener's endpoints, the
//! exposition (linted by promtool), and deploy/'s Grafana dashboard and Prometheus alert rules
//! (valid, checked by promtool). That they name only metrics a real /metrics scrape lists is
//! checked after real calls in tests/metrics.rs.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_cri-guard");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `cri-guard serve` with a policy and a metrics listener on a free port, in front of a
/// runtime socket that does not exist; stopped when dropped.
struct Served {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Served {
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "default = \"enforce\"\n[[rules]]\nname = \"all\"\nimageReferences = [\"registry.example.com/*\"]\nmode = \"skip\"\n",
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", support::util::free_port());
    let log = dir.join("guard.log");
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--listen")
        .arg(dir.join("guard.sock"))
        .arg("--upstream")
        .arg(dir.join("no-runtime.sock"))
        .arg("--policy")
        .arg(&policy)
        .args(["--metrics-listen", &addr])
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let s = Served { child, addr, log };
    let started = Instant::now();
    while support::util::http(&s.addr, "GET", "/healthz", &[], b"").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no metrics listener: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    s
}

/// The `cri_guard_*` names a PromQL expression uses.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("cri_guard_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

fn scrape(addr: &str) -> String {
    let r = support::util::http(addr, "GET", "/metrics", &[], b"").expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("Content-Type")
            .unwrap_or_default()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.header("Content-Type")
    );
    r.text()
}

/// All `expr` strings anywhere in a JSON document.
fn json_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "expr" {
                    out.push(x.as_str().expect("expr is a string").to_string());
                } else {
                    json_exprs(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_exprs(x, out)),
        _ => {}
    }
}

fn promtool() -> Command {
    Command::new(support::tools::promtool())
}

/// The listener answers /healthz always, /readyz 503 naming the unreachable runtime, 404 for
/// other paths, 405 for other methods; /metrics is the Prometheus text format and passes
/// `promtool check metrics` (names, units, `_total` counters, help texts).
#[test]
fn metrics_listener_endpoints_and_exposition() {
    let dir = support::util::short_tempdir("cgo");
    let s = serve(dir.path());
    let get = |path: &str| support::util::http(&s.addr, "GET", path, &[], b"").unwrap();
    let health = get("/healthz");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let ready = get("/readyz");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("no-runtime.sock") && ready.text().contains("policy generation"),
        "{}",
        ready.text()
    );
    assert_eq!(get("/nope").status, 404);
    let post = support::util::http(&s.addr, "POST", "/metrics", &[], b"x").unwrap();
    assert_eq!(post.status, 405);

    let text = scrape(&s.addr);
    assert!(text.contains("cri_guard_upstream_up 0"), "{text}");
    assert!(text.contains("cri_guard_policy_loaded 1"), "{text}");
    let mut lint = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // OpenMetrics when asked for.
    let om = support::util::http(
        &s.addr,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
        b"",
    )
    .unwrap();
    assert!(om.text().ends_with("# EOF\n"), "{}", om.text());
}

/// deploy/prometheus-rules.yaml: `promtool check rules` passes; the alerts the operator needs
/// are there, each with a severity, a summary and a `for`. deploy/grafana-dashboard.json: valid
/// JSON, unique panel ids, the panels the operator needs, and every query parses as PromQL
/// (promtool, with the dashboard's variables filled in); a broken query is caught.
#[test]
fn dashboard_and_alert_rules_are_valid() {
    let dir = support::util::short_tempdir("cgo");

    let rules_path = repo("deploy/prometheus-rules.yaml");
    let out = promtool()
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(&rules_path).unwrap()).unwrap();
    let mut alerts = BTreeSet::new();
    let mut exprs = Vec::new();
    for group in docs[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            alerts.insert(name.to_string());
            assert!(rule["labels"]["severity"].as_str().is_some(), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name}");
            assert!(!matches!(rule["for"], Yaml::BadValue), "{name}: no `for`");
            exprs.push((name.to_string(), rule["expr"].as_str().unwrap().to_string()));
        }
    }
    for needed in [
        "CriGuardDenialsSpike",
        "CriGuardVerificationErrors",
        "CriGuardRuntimeUnreachable",
        "CriGuardPolicyReloadFailed",
    ] {
        assert!(alerts.contains(needed), "{needed} missing: {alerts:?}");
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids.len(),
        ids.iter().collect::<BTreeSet<_>>().len(),
        "duplicate panel ids"
    );
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needed in [
        "Denials by reason",
        "Verification time (cache misses)",
        "Decision cache hit ratio",
        "Registry errors",
        "Runtime up",
    ] {
        assert!(titles.contains(&needed), "{needed} missing: {titles:?}");
    }
    let mut dash_exprs = Vec::new();
    json_exprs(&dashboard, &mut dash_exprs);
    assert!(dash_exprs.len() >= 20, "{}", dash_exprs.len());
    for (i, e) in dash_exprs.iter().enumerate() {
        exprs.push((format!("panel query {i}"), e.clone()));
    }

    for (what, expr) in &exprs {
        assert!(
            !names_in(expr).is_empty(),
            "{what} names no cri-guard metric: {expr}"
        );
    }

    // The dashboard's queries parse as PromQL: each becomes a recording rule for promtool, with
    // the dashboard's variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in dash_exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace('\n', " ");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dashboard queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: an unbalanced query is refused.
    std::fs::write(&file, rules.replace("rate(cri_guard_", "rate((cri_guard_")).unwrap();
    let out = promtool()
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
