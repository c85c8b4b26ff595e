//! What the metrics cost on the relay hot path, measured in-process: per relayed call the proxy
//! looks the method up among the known CRI paths ([`method_index`]), adds one to that method's
//! counter (one relaxed atomic add), and looks at the response trailers' `grpc-status`. Each is
//! timed over many calls against an empty loop in the same run (batches interleaved), for the
//! first known method (Version), the last (ImageFsInfo: the longest lookup) and an unknown one.
//!
//! ```text
//! cargo bench --bench metrics
//! ```
//!
//! Compare with a relayed call's cost (docs/benchmarks.md: tens of microseconds added per call).

use std::hint::black_box;
use std::time::Instant;

use cri_guard::metrics::METRICS;
use cri_guard::proxy::method_index;

const CALLS: usize = 1_000_000;
const ROUNDS: usize = 7;

fn time(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..CALLS {
        f();
    }
    t.elapsed().as_nanos() as f64 / CALLS as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let paths = [
        "/runtime.v1.RuntimeService/Version",
        "/runtime.v1.ImageService/ImageFsInfo",
        "/runtime.v1.RuntimeService/SomethingNewer",
    ];
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers.insert("grpc-message", http::HeaderValue::from_static(""));
    println!(
        "ns per relayed call (median of {ROUNDS} rounds of {CALLS} calls; baseline: an empty loop)"
    );
    for path in paths {
        let (mut base, mut hook) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            base.push(time(|| {
                black_box(black_box(path).len());
            }));
            hook.push(time(|| {
                let m = method_index(black_box(path).as_bytes());
                METRICS.relayed(m);
                let failed = black_box(&trailers)
                    .get("grpc-status")
                    .is_some_and(|s| s.as_bytes() != b"0");
                if failed {
                    METRICS.relay_failed(m);
                }
            }));
        }
        let (b, h) = (median(base), median(hook));
        println!(
            "  {path:<45} baseline {b:>6.1} ns   with metrics {h:>6.1} ns   added {:>6.1} ns",
            h - b
        );
    }
}
