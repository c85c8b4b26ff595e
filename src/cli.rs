//! Command-line interface: `serve`, `check-config` and `verify`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

/// cri-guard: a CRI proxy that lets only verified images reach the container runtime.
#[derive(Debug, Parser)]
#[command(name = "cri-guard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the CRI proxy: listen for the kubelet, forward to the runtime.
    Serve(ServeArgs),
    /// Validate a configuration file (and the policy it names) without serving; reports every
    /// problem, exits 64 if any.
    CheckConfig {
        /// The configuration file (TOML).
        file: Option<PathBuf>,
        /// A policy file to validate (instead of, or besides, the one the configuration names).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Decide on images as the proxy would, without a runtime; exits 1 if any is denied.
    Verify(VerifyArgs),
    /// For the installer: print FILE with the kubelet's runtime and image endpoints set to
    /// ENDPOINT (what changed goes to stderr); exits 65 and prints nothing if FILE can't be
    /// edited safely.
    #[command(hide = true)]
    KubeletEndpoint(KubeletEndpointArgs),
}

#[derive(Debug, Args)]
pub struct KubeletEndpointArgs {
    /// The endpoint to set, e.g. unix:///run/cri-guard/cri-guard.sock.
    #[arg(long)]
    pub endpoint: String,
    /// FILE holds kubelet flags (kubeadm-flags.env), not a KubeletConfiguration.
    #[arg(long)]
    pub flags: bool,
    /// The kubelet configuration (or flags) file.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The policy file (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// The pod namespace to decide for (namespace-scoped rules).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Registry user name; the password is read from the environment variable CRI_GUARD_PASSWORD.
    #[arg(long)]
    pub username: Option<String>,
    /// Images to check, e.g. registry.example.com/app:1.2 or repo@sha256:...
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); flags override its values.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Socket to listen on [default: /run/cri-guard/cri-guard.sock].
    #[arg(long)]
    pub listen: Option<String>,
    /// The runtime's CRI socket [default: /run/containerd/containerd.sock].
    #[arg(long)]
    pub upstream: Option<String>,
    /// Octal permissions of the listen socket [default: 0660].
    #[arg(long)]
    pub socket_mode: Option<String>,
    /// Upstream connect timeout, e.g. 2s or 500ms [default: 2s].
    #[arg(long)]
    pub connect_timeout: Option<String>,
    /// Time in-flight calls get after SIGTERM [default: 10s].
    #[arg(long)]
    pub shutdown_grace: Option<String>,
    /// Runtime worker threads [default: 1].
    #[arg(long)]
    pub workers: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or cri_guard=debug [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// The image policy file (TOML); SIGHUP reloads it.
    #[arg(long)]
    pub policy: Option<String>,
    /// Serve /metrics, /healthz and /readyz on ADDR:PORT or unix:/PATH ("" turns it off)
    /// [default: off].
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

impl ServeArgs {
    /// The flag values that override the file.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            socket_mode: self.socket_mode.clone(),
            connect_timeout: self.connect_timeout.clone(),
            shutdown_grace: self.shutdown_grace.clone(),
            workers: self.workers.clone(),
            log_format: self.log_format.clone(),
            log_level: self.log_level.clone(),
            policy: self.policy.clone(),
            metrics_listen: self.metrics_listen.clone(),
        }
    }
}
