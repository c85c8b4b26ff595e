//! The libFuzzer entry point for every target of `cri_guard_fuzz` (see docs/fuzzing.md).
//!
//! `CRI_GUARD_FUZZ_TARGET` names the target. With `CRI_GUARD_FUZZ_SEEDS=DIR` the binary writes
//! that target's seeds (built from `../shared`) into DIR and exits.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn target() -> &'static str {
    static T: OnceLock<String> = OnceLock::new();
    T.get_or_init(|| {
        let t = std::env::var("CRI_GUARD_FUZZ_TARGET").unwrap_or_else(|_| {
            eprintln!(
                "set CRI_GUARD_FUZZ_TARGET to one of {:?}",
                cri_guard_fuzz::TARGETS
            );
            std::process::exit(2)
        });
        if !cri_guard_fuzz::TARGETS.contains(&t.as_str()) {
            eprintln!("unknown target {t:?}; one of {:?}", cri_guard_fuzz::TARGETS);
            std::process::exit(2);
        }
        t
    })
}

fuzz_target!(
    init: {
        // libFuzzer's C main leaves SIGPIPE at its default (terminate); the proxy target writes
        // to connections the proxy may already have closed, which must be an error, not a kill.
        // SAFETY: setting a signal disposition to SIG_IGN before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let t = target();
        if let Some(dir) = std::env::var_os("CRI_GUARD_FUZZ_SEEDS") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("seed dir");
            let seeds = cri_guard_fuzz::seeds::seeds(t);
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).expect("write seed");
            }
            eprintln!("{t}: {} seeds written to {}", seeds.len(), dir.display());
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        cri_guard_fuzz::run(target(), data);
    }
);
