//! The `cri-guard` binary: parse the command line, load the configuration, set up logging and
//! the runtime, run, and map failures to exit codes (64: bad configuration, 1: failed to serve).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cri_guard::cli::{Cli, Command, ServeArgs};
use cri_guard::config::{Config, LogFormat, Overrides};
use cri_guard::proxy::{AllowAll, Proxy};

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(Some(&file), &Overrides::default()) {
            Ok(_) => {
                println!("{}: configuration is valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EX_CONFIG)
            }
        },
        Command::Serve(args) => serve(&args),
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
    init_tracing(&cfg);
    let runtime = if cfg.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cri-guard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let proxy = match Proxy::bind(&cfg, Arc::new(AllowAll)) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            listen = %cfg.listen.display(),
            upstream = %cfg.upstream.display(),
            "cri-guard ready"
        );
        proxy.run(shutdown_signal()).await;
        ExitCode::SUCCESS
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
