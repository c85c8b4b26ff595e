//! Machine-readable bench results for the one report (`scripts/bench.sh`, `benches/report.rs`).
//!
//! With `CRI_GUARD_BENCH_RESULTS=FILE` set, [`record`] appends one JSON object per line to FILE:
//! `{"bench": .., "containerd": .., "key": .., ...fields}`. Without it, nothing is written and
//! the benches only print their own tables, as before.

#![allow(dead_code)]

use std::io::Write as _;

/// The environment variable naming the results file.
pub const RESULTS_ENV: &str = "CRI_GUARD_BENCH_RESULTS";

/// Appends one result (`fields` must be a JSON object) for `bench`/`key`.
pub fn record(bench: &str, key: &str, fields: serde_json::Value) {
    let Some(path) = std::env::var_os(RESULTS_ENV) else {
        return;
    };
    let mut line = serde_json::json!({
        "bench": bench,
        "key": key,
        "containerd": std::env::var("CRI_GUARD_CONTAINERD").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "1.6".into()),
    });
    if let (Some(o), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
        o.extend(f);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", std::path::Path::new(&path).display()));
    writeln!(file, "{line}").expect("write a bench result");
}
