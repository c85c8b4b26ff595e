//! The `cri-guard` binary: parse the command line, load the configuration and policy, set up
//! logging and the runtime, run, and map failures to exit codes (64: bad configuration or policy,
//! 1: failed to serve, or `verify` denied an image).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cri_guard::cli::{Cli, Command, ServeArgs, VerifyArgs};
use cri_guard::config::{Config, ConfigErrors, LogFormat, Overrides};
use cri_guard::proxy::{AllowAll, Guard, Proxy};
use cri_guard::registry::Auth;
use cri_guard::verify::Verifier;
use cri_guard::verify::policy::Policy;

const EX_CONFIG: u8 = 64;
/// When the sandbox-image report starts, after ready.
const SANDBOX_REPORT_DELAY: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, policy } => check_config(file, policy),
        Command::Serve(args) => serve(&args),
        Command::Verify(args) => verify(&args),
    }
}

fn check_config(file: Option<std::path::PathBuf>, policy: Option<std::path::PathBuf>) -> ExitCode {
    let mut errors: Vec<ConfigErrors> = Vec::new();
    let mut policies = policy.into_iter().collect::<Vec<_>>();
    if let Some(file) = &file {
        match Config::load(Some(file), &Overrides::default()) {
            Ok(cfg) => policies.extend(cfg.policy),
            Err(e) => errors.push(e),
        }
    }
    if file.is_none() && policies.is_empty() {
        eprintln!("cri-guard: give a configuration file, --policy FILE, or both");
        return ExitCode::from(EX_CONFIG);
    }
    for p in &policies {
        if let Err(e) = Policy::load(p) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        for f in file.iter().chain(&policies) {
            println!("{}: valid", f.display());
        }
        ExitCode::SUCCESS
    } else {
        for e in errors {
            eprint!("{e}");
        }
        ExitCode::from(EX_CONFIG)
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let cfg = match Config::load(args.config.as_deref(), &args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let policy = match cfg.policy.as_deref().map(Policy::load).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_tracing(&cfg);
    let runtime = match build_runtime(cfg.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cri-guard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (guard, verifier): (Arc<dyn Guard>, Option<Verifier>) = match policy {
            None => {
                tracing::warn!(
                    "no `policy` configured: every image is allowed (transparent proxy)"
                );
                (Arc::new(AllowAll), None)
            }
            Some(p) => match Verifier::new(p, Some(cfg.upstream.clone())) {
                Ok(v) => (Arc::new(v.clone()), Some(v)),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        let proxy = match Proxy::bind(&cfg, guard) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %cfg.listen.display(),
            upstream = %cfg.upstream.display(),
            policy = %cfg.policy.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "cri-guard ready"
        );
        if let (Some(v), Some(path)) = (verifier, cfg.policy.clone()) {
            // Not needed to answer a call: it must not compete with the first calls after ready
            // (it made them wait 5-90 ms, benches/startup.rs), so it starts after the start burst.
            let report = v.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SANDBOX_REPORT_DELAY).await;
                report_sandbox_image(report).await
            });
            tokio::spawn(reload_on_sighup(v, path));
        }
        proxy.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// SIGHUP: load the policy again; a bad file keeps the old policy (and says why). Reading and
/// compiling the policy (files, regexes, trust roots) runs on a blocking thread, not on the
/// thread that relays calls.
async fn reload_on_sighup(verifier: Verifier, path: std::path::PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policy reload disabled");
        return;
    };
    while hup.recv().await.is_some() {
        let (v, p) = (verifier.clone(), path.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            Policy::load(&p).map(|policy| {
                let generation = policy.generation;
                (generation, v.reload(policy))
            })
        })
        .await;
        let Ok(loaded) = loaded else {
            tracing::error!("policy reload failed (its thread stopped); keeping the old policy");
            continue;
        };
        match loaded {
            Ok((generation, reloaded)) => match reloaded {
                Ok(()) => {
                    tracing::info!(policy = %path.display(), generation, "policy reloaded; cached decisions dropped")
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy reload failed; keeping the old policy")
                }
            },
            Err(e) => {
                tracing::error!(problems = ?e.problems, "policy reload refused; keeping the old policy")
            }
        }
    }
}

/// The runtime pulls its sandbox (pause) image itself, not through PullImage: say at start and
/// after each reload whether the policy would allow it, so an operator sees a missing `skip` rule.
async fn report_sandbox_image(verifier: Verifier) {
    // The runtime may still be starting; try for a while.
    for _ in 0..30 {
        if let Some(d) = verifier.check_sandbox_image().await {
            if d.allowed {
                tracing::info!(image = %d.image, rule = %d.rule, reason = %d.reason(), "sandbox image passes the policy");
            } else {
                tracing::warn!(image = %d.image, rule = %d.rule, reason = %d.reason(),
                    "the runtime's sandbox image does NOT pass the policy; add a rule for it (e.g. mode = \"skip\")");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

fn verify(args: &VerifyArgs) -> ExitCode {
    let policy = match Policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let auth = match &args.username {
        Some(u) => Auth::Basic {
            username: u.clone(),
            password: std::env::var("CRI_GUARD_PASSWORD").unwrap_or_default(),
        },
        None => Auth::Anonymous,
    };
    let runtime = match build_runtime(1) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cri-guard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let verifier = match Verifier::new(policy, None) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("cri-guard: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut denied = 0;
        for image in &args.images {
            let d = verifier.check_image(image, &args.namespace, &auth).await;
            let verdict = if d.allowed { "ALLOW" } else { "DENY " };
            let digest = d
                .digest
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default();
            println!(
                "{verdict} {image}{digest} rule={} mode={}: {}",
                d.rule,
                d.mode.as_str(),
                d.reason()
            );
            for f in d.attestations() {
                println!(
                    "  attestation {}: {} ({})",
                    f.predicate_type,
                    if f.accepted {
                        "accepted"
                    } else {
                        "not counted"
                    },
                    f.detail
                );
            }
            if !d.allowed {
                denied += 1;
            }
        }
        if denied == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop cri-guard with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
