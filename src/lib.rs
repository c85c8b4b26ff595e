//! cri-guard: a CRI proxy between the kubelet and the container runtime that refuses images
//! whose signatures fail the node's policy.
//!
//! # Module map
//!
//! ```text
//! main.rs ── cli ── config (TOML, every problem reported at once)
//!              │
//!              ├─ reload::load ── policy at start; reload::Reloader: SIGHUP + inotify on the
//!              │                  policy file → Verifier::reload (new generation), refusals
//!              │                  keep the old policy; PolicyStatus for metrics
//!              ├─ notify ── sd_notify: READY=1 once bound with the policy loaded, WATCHDOG=1
//!              │            from a task on the proxy's event loop, STATUS=, STOPPING=1
//!              ├─ kubelet ── the installer's kubelet endpoint edit (hidden `kubelet-endpoint`)
//!              ├─ metrics ── the process's cri_guard_* metrics (prometheus-client), bounded
//!              │             labels, DecisionLog: the one decision line per intercepted call
//!              │   └─ metrics::http  /metrics, /healthz, /readyz on [metrics] listen (TCP or
//!              │                     unix), never the kubelet's socket
//!              ├─ audit ── `cri-guard audit`: registries (catalog, tags; Registry::catalog_page,
//!              │           tags_page) or the node's store and running containers, each decided
//!              │           by the verifier; table or JSON; audit::dockercfg credentials
//!              │
//!              └─ proxy::Proxy::bind/run ── listen socket, one task per kubelet connection
//!                    │
//!                    └─ proxy::splice ── per connection: the frame relay. The kubelet's HTTP/2
//!                          │   connection and one runtime connection joined frame by frame in
//!                          │   one task (one read per side per pass; writes until done or full); request
//!                          │   header blocks decoded (route by :path) and re-encoded without
//!                          │   indexing; runtime frames relayed as they are (header blocks
//!                          │   checked with a mirror decoder); flow control, SETTINGS, GOAWAY
//!                          │   and the runtime's absence/death handled here
//!                          ├─ proxy::frame     the 9-byte header, per-type checks, frames
//!                          │                   cri-guard writes itself
//!                          ├─ proxy::hpack     HPACK decoder (nibble Huffman table) and an
//!                          │                   encoder that never indexes
//!                          ├─ proxy::socket    unix sockets watched for reading only
//!                          ├─ proxy::conn      route by gRPC path:
//!                          │    /runtime.v1.*  except the three below → relayed (bytes untouched)
//!                          │    PullImage, CreateContainer,
//!                          │    RunPodSandbox                         → kept: buffered, Guard,
//!                          │                        forwarded on a side connection (h2 client)
//!                          │    /runtime.v1alpha2.*, anything else  → refused (Unimplemented)
//!                          ├─ proxy::relay     a kept call's exchange with the runtime (h2
//!                          │                   client), confirmed pulls
//!                          ├─ proxy::intercept Call, Verdict, the Guard trait (the decision hook)
//!                          ├─ proxy::budget    one budget for buffered intercepted bytes (all
//!                          │                   connections); Stats: bounded state, refusals;
//!                          │                   per-method calls and runtime connects → metrics
//!                          └─ proxy::grpc      unary framing, trailers-only status replies,
//!                                              bounded and escaped messages and log fields
//!                          Guard = verify::Verifier: facts from the runtime (PodSandboxStatus,
//!                            ImageStatus, sandbox image), creates pinned to the checked image id;
//!                            writes each call's decision line (metrics::DecisionLog)
//!                            verify::reference image references read as containerd reads them;
//!                                             the normalized form rules match
//!                            verify::policy   rules (imageReferences, namespaces, mode, attestors,
//!                                             count, attestations + conditions), [sandbox], bounds
//!                            verify::cache    LRU of decisions (repo, digest, policy generation, rule;
//!                                             denials also by credential fingerprint), negative TTL,
//!                                             tag resolutions, single flight
//!                            verify::discovery  where signatures/attestations are: `.sig`/`.att`
//!                                             tags, OCI referrers (API, or referrers tag)
//!                            verify::attestations  a rule's required attestations (both formats)
//!                            verify::cosign   offline checks, no network, by what they read:
//!                              tag/           `.sig` / `.att` tags: simple-signing layers,
//!                                             docker-reference, DSSE layers, legacy Rekor bundle
//!                              bundle         Sigstore bundles (sigstore-verify + our gaps)
//!                              intoto         DSSE envelopes, PAE, in-toto statements
//!                              conditions     predicate conditions, cosign's --type names
//!                              trust/         keys, certificate chains + identity, trusted
//!                                             root, Rekor keys, an attestor's transparency
//!                            registry         resolve / manifest / blob / referrers with auth,
//!                                             limits, hosts.toml; credentials only to their host;
//!                                             per-verification Budget
//! cri ── generated CRI v1 types/clients/servers, KNOWN_METHODS, unix-socket channel helper
//! ```
//!
//! # Path of a request
//!
//! The kubelet's connection is served by `proxy::splice`. A relayed call's header block is
//! decoded (to route by `:path`) and re-encoded for the runtime with the same fields; its data
//! frames, and the response's frames, pass as they are. An intercepted call is read whole
//! (bounded), decoded with prost, handed to the [`proxy::Guard`], and then either its original
//! bytes are forwarded on a separate runtime connection (a CreateContainer with the checked
//! image id appended) and the answer written back by cri-guard, or a status is returned and
//! nothing reaches the runtime. Who controls which input, and where
//! each is bounded: docs/threat-model.md.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod config;
pub mod cri;
pub mod kubelet;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod verify;
