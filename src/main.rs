//! The `cri-guard` binary: parse the command line, load the configuration and policy, set up
//! logging and the runtime, run, and map failures to exit codes (64: bad configuration or policy,
//! 1: failed to serve, `verify` denied an image, or `verify-bundle` did not verify).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use cri_guard::cli::{
    AuditArgs, Cli, Command, KubeletEndpointArgs, ServeArgs, VerifyArgs, VerifyBundleArgs,
};
use cri_guard::config::{Config, ConfigErrors, LogFormat, Overrides};
use cri_guard::metrics::{self, METRICS};
use cri_guard::notify::{self, Notifier};
use cri_guard::proxy::grpc::Text;
use cri_guard::proxy::{AllowAll, Guard, Proxy};
use cri_guard::registry::Auth;
use cri_guard::reload::{self, PolicyStatus, Reloader};
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
        Command::Audit(args) => audit(&args),
        Command::KubeletEndpoint(args) => kubelet_endpoint(&args),
        Command::VerifyBundle(args) => verify_bundle(&args),
    }
}

/// The installer's kubelet edit (see `cri_guard::kubelet`): the new text on stdout, each change
/// on stderr; 65 (EX_DATAERR) when the file can't be read or edited safely.
fn kubelet_endpoint(args: &KubeletEndpointArgs) -> ExitCode {
    use cri_guard::kubelet::{Format, set_endpoint};
    const EX_DATAERR: u8 = 65;
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cri-guard: {}: cannot read: {e}", args.file.display());
            return ExitCode::from(EX_DATAERR);
        }
    };
    let format = if args.flags {
        Format::Flags
    } else {
        Format::Config
    };
    match set_endpoint(&text, format, &args.endpoint) {
        Ok(edit) => {
            for (key, before) in &edit.changed {
                eprintln!(
                    "{}: {key}: {} -> {}",
                    args.file.display(),
                    before.as_deref().unwrap_or("(not set)"),
                    args.endpoint
                );
            }
            print!("{}", edit.text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cri-guard: {}: {e}", args.file.display());
            ExitCode::from(EX_DATAERR)
        }
    }
}

/// `verify-bundle`: builds one attestor from the options (a key, or the trusted root's CAs
/// with an exact identity and issuer; the trusted root's logs, CT logs and timestamp
/// authorities), verifies the bundle with it, and prints one line.
fn verify_bundle(args: &VerifyBundleArgs) -> ExitCode {
    use cri_guard::verify::cosign::bundle::{self, Artifact, BundleExpect};
    use cri_guard::verify::cosign::{
        Authority, CertIdentity, Matcher, PublicKey, Transparency, TrustedRoot,
    };
    let usage = |msg: String| {
        eprintln!("cri-guard: {msg}");
        ExitCode::from(EX_CONFIG)
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
    };
    let root = match &args.trusted_root {
        None => None,
        Some(path) => match read("the trusted root", path)
            .and_then(|b| TrustedRoot::from_json(&path.display().to_string(), &b))
        {
            Ok(r) => Some(r),
            Err(e) => return usage(e),
        },
    };
    let authority = match (&args.key, &args.certificate_identity, &root) {
        (Some(path), _, _) => match read("the key", path).and_then(|pem| {
            PublicKey::from_pem(&path.display().to_string(), &pem).map_err(|e| e.to_string())
        }) {
            Ok(k) => Authority::Key(k),
            Err(e) => return usage(e),
        },
        (None, Some(identity), Some(root)) => {
            let id = CertIdentity {
                subject: Some(Matcher::Exact(identity.clone())),
                issuer: args.certificate_oidc_issuer.clone().map(Matcher::Exact),
            };
            let name = args
                .trusted_root
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string());
            match root.cert_authority(&name, id) {
                Ok(ca) => Authority::Certificates(ca),
                Err(e) => return usage(e),
            }
        }
        (None, _, None) => {
            return usage(
                "--certificate-identity needs --trusted-root (the Fulcio CAs and logs; nothing is downloaded)".into(),
            );
        }
        (None, None, Some(_)) => return usage("give --key or --certificate-identity".into()),
    };
    let trust = match &root {
        None => Transparency::none(),
        Some(r) => {
            let require_tlog = !r.sigstore().tlogs.is_empty();
            match Transparency::new("trusted root", r.sigstore(), require_tlog, 0) {
                Ok(t) => t,
                Err(e) => return usage(e),
            }
        }
    };
    let bytes;
    let artifact = match args.artifact.strip_prefix("sha256:") {
        Some(hex) => {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return usage(format!(
                    "{} is not a sha256 digest (sha256: and 64 hex digits)",
                    args.artifact
                ));
            }
            Artifact::Digest(&args.artifact)
        }
        None => match read("the artifact", std::path::Path::new(&args.artifact)) {
            Ok(b) => {
                bytes = b;
                Artifact::Blob(&bytes)
            }
            Err(e) => return usage(e),
        },
    };
    let json = match read("the bundle", &args.bundle) {
        Ok(j) => j,
        Err(e) => return usage(e),
    };
    let expect = BundleExpect {
        artifact,
        predicate_type: None,
    };
    match bundle::verify_bundle(&json, &authority, &trust, &expect) {
        Ok(v) => {
            let signer = match (&authority, &v.identity) {
                (_, Some(id)) => id.clone(),
                (Authority::Key(k), None) => format!("key {}", k.name()),
                (Authority::Certificates(ca), None) => ca.name.clone(),
            };
            let content = match &v.statement {
                Some(st) => format!("in-toto statement {}", st.predicate_type),
                None => "message signature".into(),
            };
            println!(
                "Verified OK: {content}, signed by {signer}; transparency log: {}; RFC 3161 timestamps: {}",
                if v.tlog { "verified" } else { "not checked" },
                v.timestamps
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cri-guard: {}: {e}", args.bundle.display());
            ExitCode::FAILURE
        }
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
    let loaded = match cfg.policy.as_deref().map(reload::load).transpose() {
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
        let notifier = Arc::new(Notifier::from_env());
        let (guard, reloader): (Arc<dyn Guard>, Option<(Verifier, Reloader)>) = match loaded {
            None => {
                tracing::warn!(
                    "no `policy` configured: every image is allowed (transparent proxy)"
                );
                (Arc::new(AllowAll), None)
            }
            Some(loaded) => {
                let generation = loaded.policy.generation;
                METRICS.set_registries(metrics::policy_registries(&loaded.policy));
                match Verifier::new(loaded.policy, Some(cfg.upstream.clone())) {
                    Ok(v) => {
                        let reloader = Reloader::new(
                            cfg.policy.clone().unwrap_or_default(),
                            loaded.fingerprint,
                            apply_to(v.clone()),
                            Arc::new(PolicyStatus::new(generation)),
                            notifier.clone(),
                        );
                        (Arc::new(v.clone()), Some((v, reloader)))
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
        let policy_status = reloader.as_ref().map(|(_, r)| r.status());
        METRICS.set_sources(metrics::Sources {
            policy: policy_status.clone(),
            cache_entries: reloader.as_ref().map(|(v, _)| {
                let v = v.clone();
                Box::new(move || v.cache_entries() as u64) as Box<dyn Fn() -> u64 + Send + Sync>
            }),
        });
        let signals = install_shutdown_signals();
        let proxy = match Proxy::bind(&cfg, guard) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        // The socket accepts and the policy is in force: tell the service manager (Type=notify),
        // which only then starts what is ordered after us (the kubelet).
        let policy_text = cfg
            .policy
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        notifier.ready(&format!(
            "serving on {}; policy {}",
            cfg.listen.display(),
            if policy_text.is_empty() {
                "none (every image allowed)"
            } else {
                &policy_text
            }
        ));
        tracing::info!(
            listen = %cfg.listen.display(),
            upstream = %cfg.upstream.display(),
            policy = %policy_text,
            "cri-guard ready"
        );
        if let Some(endpoint) = cfg.metrics_listen.clone() {
            let health = Arc::new(metrics::http::Health::new(
                cfg.upstream.clone(),
                policy_status,
            ));
            tokio::spawn(metrics::http::serve(
                endpoint,
                health,
                std::time::Duration::from_secs(10),
            ));
        }
        if let Some(interval) = notify::watchdog_interval_from_env().filter(|_| notifier.enabled())
        {
            tracing::info!(interval = ?interval, "sending watchdog pings");
            tokio::spawn(notify::watchdog(notifier.clone(), interval));
        }
        match reloader {
            Some((v, reloader)) => {
                // Not needed to answer a call: it must not compete with the first calls after
                // ready (it made them wait 5-90 ms, benches/startup.rs), so it starts after the
                // start burst.
                tokio::spawn(async move {
                    tokio::time::sleep(SANDBOX_REPORT_DELAY).await;
                    report_sandbox_image(v).await
                });
                tokio::spawn(reloader.run(cfg.policy_watch));
            }
            None => {
                tokio::spawn(sighup_without_policy());
            }
        }
        proxy.run(shutdown_signal(signals, notifier)).await;
        ExitCode::SUCCESS
    })
}

/// How a reloaded policy is put in force: a new verifier state (new generation, empty cache),
/// then the sandbox image is checked against it again.
fn apply_to(verifier: Verifier) -> reload::Apply {
    let report: Arc<Mutex<Option<tokio::task::AbortHandle>>> = Arc::default();
    Arc::new(move |policy: Policy| {
        let registries = metrics::policy_registries(&policy);
        verifier.reload(policy).map_err(|e| e.to_string())?;
        METRICS.set_registries(registries);
        let task = tokio::spawn(report_sandbox_image(verifier.clone())).abort_handle();
        if let Some(previous) = report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            previous.abort();
        }
        Ok(())
    })
}

/// Without a policy there is nothing to reload, but SIGHUP must not end the process (its
/// default action): `systemctl reload` would take the node's runtime endpoint down.
async fn sighup_without_policy() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::warn!("SIGHUP: no `policy` configured, nothing to reload");
    }
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

/// The runtime pulls its sandbox (pause) image itself, not through PullImage: say at start and
/// after each reload whether the policy allows it (RunPodSandbox is refused while it does not,
/// under `[sandbox] mode = "enforce"`), so an operator sees a missing rule before pods fail.
async fn report_sandbox_image(verifier: Verifier) {
    // The runtime may still be starting; try for a while.
    for _ in 0..30 {
        if let Some(d) = verifier.check_sandbox_image().await {
            if d.allowed {
                tracing::info!(image = %Text(&d.image), rule = %d.rule, reason = %Text(&d.reason()),
                    "sandbox image passes the policy");
            } else {
                tracing::warn!(image = %Text(&d.image), rule = %d.rule, reason = %Text(&d.reason()),
                    "the runtime's sandbox image does NOT pass the policy: RunPodSandbox is refused \
                     until it does ([sandbox] mode = \"enforce\"); add a rule for it (e.g. mode = \"skip\") or sign it");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    tracing::warn!(
        "cannot tell which sandbox image the runtime uses (containerd 2.x reports it only once \
         pulled): RunPodSandbox is refused under [sandbox] mode = \"enforce\" until it can; set \
         `[sandbox] image` in the policy to the runtime's sandbox image"
    );
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
                "{verdict} {}{digest} rule={} mode={}: {}",
                Text(image),
                d.rule,
                d.mode.as_str(),
                Text(&d.reason())
            );
            for f in d.attestations() {
                println!(
                    "  attestation {}: {} ({})",
                    Text(&f.predicate_type),
                    if f.accepted {
                        "accepted"
                    } else {
                        "not counted"
                    },
                    Text(&f.detail)
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

/// `cri-guard audit`: see `cri_guard::audit`. Exit codes: 0 all passed, 1 some would be
/// refused, 2 incomplete (or nothing could be listed), 64 bad policy or arguments.
fn audit(args: &AuditArgs) -> ExitCode {
    use cri_guard::audit::{self, Options, Target, dockercfg::DockerConfig};
    let policy = match Policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let mut targets = Vec::new();
    for t in &args.targets {
        match Target::parse(t) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("cri-guard audit: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        }
    }
    if !args.node && targets.is_empty() && args.repositories.is_empty() {
        eprintln!(
            "cri-guard audit: name what to audit: REGISTRY[/PREFIX]..., --repository REGISTRY/REPOSITORY, or --node"
        );
        return ExitCode::from(EX_CONFIG);
    }
    let creds = match args
        .docker_config
        .clone()
        .map(|p| (p, true))
        .or_else(|| audit::dockercfg::default_path().map(|p| (p, false)))
    {
        Some((path, required)) => match DockerConfig::load(&path, required) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("cri-guard audit: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        },
        None => DockerConfig::default(),
    };
    let opts = Options {
        namespace: args.namespace.clone(),
        concurrency: usize::from(args.concurrency),
        page_size: usize::from(args.page_size),
        max_images: args.max_images.max(1),
        progress: std::io::stderr().is_terminal(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cri-guard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client_cfg = cri_guard::verify::registry_config(&policy);
    let upstream = args.node.then(|| args.runtime.clone());
    let report = runtime.block_on(async {
        let verifier = Verifier::new(policy, upstream.clone()).map_err(|e| e.to_string())?;
        match upstream {
            Some(socket) => audit::audit_node(&verifier, &socket, &creds, &opts).await,
            None => {
                let client =
                    cri_guard::registry::Registry::new(client_cfg).map_err(|e| e.to_string())?;
                Ok(audit::audit_registries(
                    &verifier,
                    &client,
                    &targets,
                    &args.repositories,
                    &creds,
                    &opts,
                )
                .await)
            }
        }
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // Nothing could be listed: incomplete (2), not a verdict on any image.
            eprintln!("cri-guard audit: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.output == "json" {
        report.write_json(&mut out)
    } else {
        report.write_table(&mut out)
    };
    if let Err(e) = written {
        eprintln!("cri-guard audit: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::from(report.exit_code())
}

fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&cfg.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log.format {
        // Fields at the top level of each object, where log pipelines look for them.
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM and SIGINT, registered before the socket is bound: a signal that arrives the moment
/// the socket accepts must stop the proxy gracefully, not end the process by its default action.
fn install_shutdown_signals() -> Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>
{
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

/// Resolves on SIGTERM or SIGINT, after telling the service manager that shutdown has begun.
async fn shutdown_signal(
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    notifier: Arc<Notifier>,
) {
    match signals {
        Some((mut term, mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            notifier.stopping();
        }
        None => {
            tracing::error!("cannot install signal handlers; stop cri-guard with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}
