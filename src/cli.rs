//! Command-line interface: `serve`, `check-config`, `verify`, `verify-bundle` and `audit`.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

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
    /// Check images that already exist against a policy: every image of registries (their
    /// catalog and tags, or given repositories), or with --node everything a runtime holds and
    /// runs. Prints a table (or JSON); exits 0 if all passed, 1 if any would be refused (or
    /// fails under an audit rule), 2 if nothing failed but not everything could be listed.
    Audit(AuditArgs),
    /// For the installer: print FILE with the kubelet's runtime and image endpoints set to
    /// ENDPOINT (what changed goes to stderr); exits 65 and prints nothing if FILE can't be
    /// edited safely.
    #[command(hide = true)]
    KubeletEndpoint(KubeletEndpointArgs),
    /// Verify a standalone Sigstore bundle offline, like `cosign verify-blob --bundle` (and
    /// the Sigstore conformance client protocol); exits 0 when verified, 1 with a one-line
    /// reason when not, 64 when an option cannot be used.
    VerifyBundle(VerifyBundleArgs),
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
#[command(group(ArgGroup::new("signer").required(true).args(["certificate_identity", "key"])))]
pub struct VerifyBundleArgs {
    /// The Sigstore bundle (JSON, media type v0.1 to v0.3).
    #[arg(long)]
    pub bundle: PathBuf,
    /// The signing certificate's identity (a SAN), compared exactly; needs --trusted-root.
    #[arg(long, requires = "certificate_oidc_issuer")]
    pub certificate_identity: Option<String>,
    /// The OIDC issuer in the signing certificate (Fulcio's issuer extension), exactly.
    #[arg(long, requires = "certificate_identity")]
    pub certificate_oidc_issuer: Option<String>,
    /// A PEM public key the bundle must be signed with.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// A sigstore trusted_root.json: Fulcio CAs, Rekor logs, CT logs and timestamp
    /// authorities. With it, the bundle's log entries must verify; without it (only with
    /// --key), the signature alone is checked, as cosign's --insecure-ignore-tlog.
    #[arg(long)]
    pub trusted_root: Option<PathBuf>,
    /// The signed artifact: a file, or its digest as sha256:<hex>.
    pub artifact: String,
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
pub struct AuditArgs {
    /// The policy file (TOML).
    #[arg(long)]
    pub policy: PathBuf,
    /// Registries to walk, each REGISTRY[/PREFIX] (e.g. registry.example.com/team): every tag
    /// of every repository under PREFIX in the registry's catalog.
    pub targets: Vec<String>,
    /// A repository to audit without the catalog (REGISTRY/REPOSITORY; repeat it), for
    /// registries that do not serve their catalog.
    #[arg(long = "repository", value_name = "REGISTRY/REPOSITORY")]
    pub repositories: Vec<String>,
    /// Audit the runtime instead: every image in its store and every running container.
    #[arg(long, conflicts_with_all = ["targets", "repositories"])]
    pub node: bool,
    /// The runtime's CRI socket (with --node).
    #[arg(
        long,
        default_value = "/run/containerd/containerd.sock",
        requires = "node"
    )]
    pub runtime: PathBuf,
    /// Registry credentials: a docker config.json [default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json].
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Output: table or json.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// The pod namespace to decide for (namespace-scoped rules).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Listings and verifications run at once (1-64).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Most images audited; the listing stops there and the audit reports itself incomplete.
    #[arg(long, default_value_t = 10_000)]
    pub max_images: usize,
    /// Names asked for per listing page (the registry may send fewer).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub page_size: u16,
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
