//! The one benchmark report: reads the JSON lines the benches appended in one run of
//! `scripts/bench.sh` (`CRI_GUARD_BENCH_RESULTS`), prints one table (every row with its baseline
//! from the same run and the target it meets, design.md section 7 / issue 12), and writes it
//! into `docs/benchmarks.md` between the report markers, with the machine it ran on.
//!
//! `cargo bench --bench report -- RESULTS.jsonl docs/benchmarks.md [SECONDS]`

use std::collections::BTreeMap;

use serde_json::Value;

const START: &str = "<!-- bench.sh report: start -->";
const END: &str = "<!-- bench.sh report: end -->";

struct Results(Vec<Value>);

impl Results {
    fn all<'a>(&'a self, bench: &'a str, key: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0
            .iter()
            .filter(move |v| v["bench"] == bench && v["key"] == key)
    }
    fn one(&self, bench: &str, key: &str, containerd: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|v| v["bench"] == bench && v["key"] == key && v["containerd"] == containerd)
    }
    fn any(&self, bench: &str, key: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|v| v["bench"] == bench && v["key"] == key)
    }
}

fn f(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn x(r: Option<f64>) -> String {
    match r {
        None => "n/a".into(),
        Some(r) if r < 0.0 => "<0".into(),
        Some(r) => format!("{r:.2}x"),
    }
}

fn pass(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
}

struct Row {
    what: String,
    measured: String,
    baseline: String,
    target: String,
    verdict: String,
}

fn row(
    what: impl Into<String>,
    measured: String,
    baseline: String,
    target: &str,
    verdict: &str,
) -> Row {
    Row {
        what: what.into(),
        measured,
        baseline,
        target: target.into(),
        verdict: verdict.into(),
    }
}

fn passthrough_rows(r: &Results, cd: &str, rows: &mut Vec<Row>) {
    let mut version_p99 = Vec::new();
    for (key, name, p99_target) in [
        ("version-1", "Version (run 1/3)", true),
        ("version-2", "Version (run 2/3)", true),
        ("version-3", "Version (run 3/3)", true),
        ("imagestatus", "ImageStatus", true),
        ("listimages", "ListImages", true),
        ("listcontainers-small", "ListContainers (50)", false),
        ("listcontainers-large", "ListContainers (1,000)", false),
        ("listimages-large", "ListImages (1,000 images)", false),
    ] {
        let Some(v) = r.one("passthrough", key, cd) else {
            rows.push(row(
                format!("{name}, containerd {cd}"),
                "not measured".into(),
                String::new(),
                "",
                "n/a",
            ));
            continue;
        };
        let (r50, r99) = (f(v, "ratio_p50"), f(v, "ratio_p99"));
        if key.starts_with("version") {
            if let Some(p) = r99 {
                version_p99.push(p);
            }
        }
        let label = v["label"].as_str().unwrap_or(name);
        let what = format!("passthrough {label}, containerd {cd}: added p50 / p99");
        let measured = format!(
            "{:+.0} / {:+.0} us = {} / {} socat's",
            f(v, "guard_added_p50_us").unwrap_or(0.0),
            f(v, "guard_added_p99_us").unwrap_or(0.0),
            x(r50),
            x(r99)
        );
        let baseline = format!(
            "direct {:.0} us p50; socat {:+.0} / {:+.0} us; other processes {}",
            f(v, "direct_p50_us").unwrap_or(0.0),
            f(v, "socat_added_p50_us").unwrap_or(0.0),
            f(v, "socat_added_p99_us").unwrap_or(0.0),
            f(v, "others_cpu_pct").map_or("?".into(), |p| format!("{p:.0}% CPU"))
        );
        let ok50 = r50.map(|r| r <= 2.0);
        let verdict = if p99_target && !key.starts_with("version") {
            format!(
                "p50 {}{}, p99 {}",
                pass(ok50),
                if r50.is_some_and(|r| r <= 1.5) {
                    " (aim)"
                } else {
                    ""
                },
                pass(r99.map(|r| r <= 2.0))
            )
        } else {
            format!(
                "p50 {}{}",
                pass(ok50),
                if r50.is_some_and(|r| r <= 1.5) {
                    " (aim)"
                } else {
                    ""
                }
            )
        };
        let target = if p99_target {
            "added p50 <= 2x socat's (aim 1.5x), p99 <= 2x"
        } else {
            "added p50 <= 2x socat's"
        };
        rows.push(row(what, measured, baseline, target, &verdict));
    }
    if !version_p99.is_empty() {
        version_p99.sort_by(f64::total_cmp);
        let m = version_p99[version_p99.len() / 2];
        rows.push(row(
            format!("passthrough Version, containerd {cd}: added p99, median of 3 runs"),
            format!("{} socat's", x(Some(m))),
            "same runs".into(),
            "<= 2x socat's added p99",
            pass(Some(m <= 2.0)),
        ));
    }
    if let Some(v) = r.one("passthrough", "throughput", cd) {
        let ratio = f(v, "ratio");
        rows.push(row(
            format!("throughput, 4 clients (Version), containerd {cd}"),
            format!(
                "{:.0} calls/s = {} socat's",
                f(v, "guard").unwrap_or(0.0),
                x(ratio)
            ),
            format!(
                "socat {:.0}, direct {:.0} calls/s",
                f(v, "socat").unwrap_or(0.0),
                f(v, "direct").unwrap_or(0.0)
            ),
            ">= 0.9x socat's",
            pass(ratio.map(|r| r >= 0.9)),
        ));
    }
}

fn build(r: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let cds: Vec<String> = {
        let mut v: Vec<String> = r
            .all("passthrough", "version-1")
            .filter_map(|v| v["containerd"].as_str().map(str::to_string))
            .collect();
        v.dedup();
        if v.is_empty() {
            vec!["1.6".into(), "2.1".into()]
        } else {
            v
        }
    };
    for cd in &cds {
        passthrough_rows(r, cd, &mut rows);
    }
    // PullImage decision on a cache hit.
    match (
        r.any("verify", "hit-digest"),
        r.any("verify", "hit-parse-baseline"),
    ) {
        (Some(h), base) => rows.push(row(
            "PullImage decision on a cache hit (digest ref), beyond passthrough: p50 / p99",
            format!(
                "{:.2} / {:.2} us",
                f(h, "p50_us").unwrap_or(0.0),
                f(h, "p99_us").unwrap_or(0.0)
            ),
            base.map_or(String::new(), |b| {
                format!(
                    "of which reference parse {:.2} us",
                    f(b, "p50_us").unwrap_or(0.0)
                )
            }),
            "<= 10 us added",
            &format!(
                "p50 {}, p99 {}",
                pass(f(h, "p50_us").map(|v| v <= 10.0)),
                pass(f(h, "p99_us").map(|v| v <= 10.0))
            ),
        )),
        _ => rows.push(row(
            "PullImage decision on a cache hit",
            "not measured".into(),
            String::new(),
            "<= 10 us",
            "n/a",
        )),
    }
    // Cold verification: rounds are the sequential depth (requests that must wait for the one
    // before), measured by a delay the bench's forwarder adds to every request.
    let ratio = |v: Option<&Value>| v.and_then(|v| f(v, "ratio_median"));
    for (kind, rt_key) in [
        ("tag", "roundtrips-tag-cold"),
        ("digest", "roundtrips-digest-cold"),
    ] {
        let trips = r.any("verify", rt_key);
        let rounds = trips.and_then(|v| v["rounds"].as_u64());
        let warm = r.any("verify", &format!("cold-{kind}-warmpool"));
        let cold = r.any("verify", &format!("cold-{kind}-coldpool"));
        rows.push(row(
            format!(
                "cold verification, old format (.sig tag), {kind} ref: registry round trips \
                 (requests); time / raw (warm pool, new connection)"
            ),
            format!(
                "{} ({}); {} / {} (p50 {:.1} ms)",
                rounds.map_or("?".into(), |t| t.to_string()),
                trips
                    .and_then(|v| v["requests"].as_u64())
                    .map_or("?".into(), |t| t.to_string()),
                x(ratio(warm)),
                x(ratio(cold)),
                warm.and_then(|v| f(v, "cold_p50_us")).unwrap_or(0.0) / 1000.0
            ),
            format!(
                "the same requests by a plain HTTP client: p50 {:.1} ms",
                warm.and_then(|v| f(v, "raw_p50_us")).unwrap_or(0.0) / 1000.0
            ),
            "<= 3 round trips; <= 2x the raw round trips",
            &format!(
                "trips {}, time {}",
                pass(rounds.map(|t| t <= 3)),
                pass(
                    ratio(warm)
                        .zip(ratio(cold))
                        .map(|(a, b)| a <= 2.0 && b <= 2.0)
                )
            ),
        ));
    }
    for (place, what) in [
        (
            "api",
            "new format (Sigstore bundle as OCI referrer) via the referrers API",
        ),
        (
            "tag",
            "new format via the referrers tag (fallback, docker-registry 2.8)",
        ),
    ] {
        for kind in ["tag", "digest"] {
            let trips = r.any("verify", &format!("new-{place}-roundtrips-{kind}"));
            let timing = r.any("verify", &format!("new-{place}-cold-{kind}"));
            let Some(t) = trips else {
                rows.push(row(
                    format!("cold verification, {what}, {kind} ref"),
                    "not measured".into(),
                    String::new(),
                    "<= 3 round trips; <= 2x the raw round trips",
                    "n/a",
                ));
                continue;
            };
            let rounds = t["rounds"].as_u64();
            rows.push(row(
                format!("cold verification, {what}, {kind} ref: round trips (requests); time / raw (warm pool)"),
                format!(
                    "{} ({}); {} (p50 {:.1} ms)",
                    rounds.map_or("?".into(), |v| v.to_string()),
                    t["requests"].as_u64().map_or("?".into(), |v| v.to_string()),
                    x(ratio(timing)),
                    timing.and_then(|v| f(v, "cold_p50_us")).unwrap_or(0.0) / 1000.0
                ),
                format!(
                    "raw client, same discovery: {} round trips ({} requests), p50 {:.1} ms",
                    t["raw_rounds"],
                    t["raw_requests"],
                    timing.and_then(|v| f(v, "raw_p50_us")).unwrap_or(0.0) / 1000.0
                ),
                "<= 3 round trips; <= 2x the raw round trips",
                &format!(
                    "trips {}, time {}",
                    pass(rounds.map(|v| v <= 3)),
                    pass(ratio(timing).map(|v| v <= 2.0))
                ),
            ));
        }
    }
    // CreateContainer.
    if let Some(v) = r.any("create", "create") {
        let (g, d) = (
            f(v, "guard_p50_us").unwrap_or(0.0),
            f(v, "direct_p50_us").unwrap_or(0.0),
        );
        rows.push(row(
            "CreateContainer added latency (decision from the cache), p50",
            format!(
                "+{:.0} us ({:.1}%); decision +{:.1} us beyond its 2 runtime calls",
                g - d,
                100.0 * (g - d) / d,
                f(v, "decision_p50_us").unwrap_or(0.0)
                    - f(v, "runtime_calls_p50_us").unwrap_or(0.0)
            ),
            format!("direct CreateContainer p50 {d:.0} us"),
            "(no fixed target; reported)",
            "-",
        ));
    }
    // Concurrency.
    for (key, what, target) in [
        (
            "concurrent-repeated",
            "concurrent pulls of one digest (200 at once, signed and unsigned, 3 rounds x 2 runtimes)",
            "exactly 1 verification, 0 wrong",
        ),
        (
            "concurrent-many",
            "concurrent pulls of many digests (200 at once over 50 digests, 3 rounds x 2 runtimes)",
            "1 verification per digest, 0 wrong",
        ),
    ] {
        let runs: Vec<&Value> = r.all("verify", key).collect();
        if runs.is_empty() {
            continue;
        }
        let verifs: Vec<u64> = runs
            .iter()
            .filter_map(|v| v["verifications"].as_u64())
            .collect();
        let wrong: u64 = runs.iter().filter_map(|v| v["wrong"].as_u64()).sum();
        let expected: Vec<u64> = runs
            .iter()
            .map(|v| v["digests"].as_u64().unwrap_or(1))
            .collect();
        let ok = verifs == expected && wrong == 0;
        rows.push(row(
            what,
            format!(
                "verifications per round {}..{}, wrong {wrong}",
                verifs.iter().min().unwrap_or(&0),
                verifs.iter().max().unwrap_or(&0)
            ),
            format!("{} rounds", runs.len()),
            target,
            pass(Some(ok)),
        ));
    }
    // Memory.
    if let Some(m) = r.any("verify", "memory") {
        let (idle, ten, full) = (
            f(m, "idle_mib").unwrap_or(0.0),
            f(m, "ten_thousand_mib").unwrap_or(0.0),
            f(m, "full_mib").unwrap_or(0.0),
        );
        rows.push(row(
            "resident memory with 0 / 10,000 / 100,000 cached decisions",
            format!("{idle:.1} / {ten:.1} / {full:.1} MiB"),
            format!("bare process {:.1} MiB", f(m, "bare_mib").unwrap_or(0.0)),
            "idle <= 15 MiB; 100,000 <= 60 MiB",
            pass(Some(idle <= 15.0 && full <= 60.0)),
        ));
    }
    if let Some(m) = r
        .one("passthrough", "rss", "1.6")
        .or_else(|| r.any("passthrough", "rss"))
    {
        rows.push(row(
            "proxy process RSS: idle / after the passthrough run (no policy)",
            format!(
                "{:.1} / {:.1} MiB",
                f(m, "idle_mib").unwrap_or(0.0),
                f(m, "end_mib").unwrap_or(0.0)
            ),
            String::new(),
            "idle <= 15 MiB",
            pass(f(m, "idle_mib").map(|v| v <= 15.0)),
        ));
    }
    // Launch.
    for (bench, key, what) in [
        (
            "passthrough",
            "ready",
            "start to ready (spawn -> socket accepts), no policy",
        ),
        (
            "startup",
            "first-answer",
            "launch to first answered call (spawn -> Version answered), no policy",
        ),
        (
            "startup",
            "first-answer-policy",
            "launch to first answered call, a policy shaped like deploy/policy.toml",
        ),
    ] {
        if let Some(v) = r.one(bench, key, "1.6").or_else(|| r.any(bench, key)) {
            let med = f(v, "median_ms");
            rows.push(row(
                what,
                format!(
                    "median {:.2} ms, max {:.2} ms",
                    med.unwrap_or(0.0),
                    f(v, "max_ms").unwrap_or(0.0)
                ),
                format!("{} launches", v["runs"]),
                "<= 10 ms",
                pass(med.map(|m| m <= 10.0)),
            ));
        }
    }
    // Soak.
    if let Some(s) = r.any("soak", "soak") {
        rows.push(row(
            format!("soak: kubelet mix, {} clients + pod churn, {:.0} s", s["clients"], f(s, "seconds").unwrap_or(0.0)),
            format!(
                "{:.0} calls/s, {} pod cycles, errors {}; RSS {:.1}..{:.1} MiB (first third {:.1}, last third {:.1}, slope {:+.0} KiB/min)",
                f(s, "calls_per_s").unwrap_or(0.0),
                s["pod_cycles"],
                s["errors"],
                f(s, "rss_min_mib").unwrap_or(0.0),
                f(s, "rss_max_mib").unwrap_or(0.0),
                f(s, "rss_first_third_mib").unwrap_or(0.0),
                f(s, "rss_last_third_mib").unwrap_or(0.0),
                f(s, "rss_slope_kib_per_min").unwrap_or(0.0)
            ),
            format!("{} calls", s["calls"]),
            "0 errors; RSS flat (last third <= first third + max(1 MiB, 5%))",
            &format!(
                "errors {}, RSS {}",
                pass(Some(s["errors"] == 0)),
                pass(s["flat"].as_bool())
            ),
        ));
    }
    rows
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |k| format!("{:.0} GiB", k as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/debian_version")
        .map(|v| format!("Debian {}", v.trim()))
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    format!(
        "{cpus} vCPUs ({cpu}), {mem} RAM, Linux {}, {os}, {}, commit {}",
        kernel.trim(),
        rustc.trim(),
        commit.trim()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let (Some(input), Some(out)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: report RESULTS.jsonl docs/benchmarks.md [SECONDS]");
        std::process::exit(64);
    };
    let took = args.get(3).cloned();
    let text = std::fs::read_to_string(input).unwrap_or_else(|e| panic!("{input}: {e}"));
    let results = Results(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{input}: {e}: {l}")))
            .collect(),
    );
    let rows = build(&results);
    let now = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let mut md = String::new();
    md.push_str(&format!(
        "Run of `scripts/bench.sh` on {}{}. Machine: {}.\n\n",
        now.trim(),
        took.map_or(String::new(), |t| format!(" (took {t} s)")),
        machine()
    ));
    md.push_str(
        "| what | measured | baseline, same run | target | verdict |\n|---|---|---|---|---|\n",
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        for w in ["PASS", "MISS"] {
            *counts.entry(w).or_default() += r.verdict.matches(w).count();
        }
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what, r.measured, r.baseline, r.target, r.verdict
        ));
    }
    md.push_str(&format!(
        "\n{} PASS, {} MISS (a MISS is a finding, not a failure of the run). Targets: design.md \
         section 7 and issue 12; \"x socat's\" is cri-guard's added latency over direct containerd \
         divided by a socat byte relay's, measured in interleaved batches in the same run.\n",
        counts.get("PASS").unwrap_or(&0),
        counts.get("MISS").unwrap_or(&0)
    ));
    println!("{md}");
    let doc = std::fs::read_to_string(out).unwrap_or_default();
    let block = format!("{START}\n{md}{END}");
    let new = match (doc.find(START), doc.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + END.len()..]),
        _ => {
            // First run: the report goes first, after the title.
            let (title, rest) = doc.split_once('\n').unwrap_or(("# Benchmarks", ""));
            format!("{title}\n\n## The report (`scripts/bench.sh`)\n\n{block}\n{rest}")
        }
    };
    std::fs::write(out, new).unwrap_or_else(|e| panic!("{out}: {e}"));
    eprintln!("report: written to {out}");
}
