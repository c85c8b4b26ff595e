//! The configuration an operator writes (TOML), validated once with every problem reported.
//!
//! The file is parsed into a TOML table first and then walked field by field, so one run of
//! `cri-guard check-config` names every unknown key, wrong type and bad value, not just the
//! first. Command-line flags are applied on top of the file as [`Overrides`] before validation,
//! so a bad flag value is reported the same way.
//!
//! ```toml
//! listen = "/run/cri-guard/cri-guard.sock"     # where the kubelet connects
//! upstream = "/run/containerd/containerd.sock" # the real runtime
//! socket_mode = "0660"                         # octal permissions of the listen socket
//! connect_timeout = "2s"                       # upstream connect; fail fast with Unavailable
//! shutdown_grace = "10s"                       # SIGTERM: time in-flight calls get to finish
//! workers = 1                                  # 1 = single-threaded runtime (fastest here)
//! max_intercepted_message = "16MiB"            # PullImage/CreateContainer body size limit
//! max_intercepted_buffer = "64MiB"             # all such bodies being buffered at once, in total
//! intercepted_request_timeout = "10s"          # time for such a body to arrive whole
//! max_streams_per_connection = 1000            # calls in flight on one client connection
//! max_connections = 256                        # client connections at once; more are refused
//! policy = "/etc/cri-guard/policy.toml"        # image policy; without one, everything is allowed
//! policy_watch = true                          # reload the policy when its file changes (SIGHUP always does)
//!
//! [log]
//! format = "text"                              # text | json
//! level = "info"                               # error | warn | info | debug | trace
//!
//! [metrics]
//! listen = "127.0.0.1:9478"                    # /metrics, /healthz, /readyz; or "unix:/path";
//!                                              # absent or "": no metrics listener (the default)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::metrics::http::Endpoint;

/// Validated settings of `cri-guard serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Unix socket the proxy listens on (the kubelet's `containerRuntimeEndpoint`).
    pub listen: PathBuf,
    /// Unix socket of the real CRI runtime.
    pub upstream: PathBuf,
    /// Permission bits of the listen socket.
    pub socket_mode: u32,
    /// Time allowed to connect to the upstream before a call fails with `Unavailable`.
    pub connect_timeout: Duration,
    /// Time in-flight calls get to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// Runtime worker threads; 1 runs everything on one thread.
    pub workers: usize,
    /// Largest PullImage/CreateContainer request body the proxy buffers to decide on.
    pub max_intercepted_message: usize,
    /// Bytes of PullImage/CreateContainer bodies buffered at once across all connections; a
    /// call that would go over it is refused with `ResourceExhausted`.
    pub max_intercepted_buffer: usize,
    /// Time a PullImage/CreateContainer request gets, from its headers, to arrive whole; a
    /// slower one is refused with `DeadlineExceeded`.
    pub intercepted_request_timeout: Duration,
    /// Concurrent calls (HTTP/2 streams) per client connection, advertised to the client in
    /// SETTINGS_MAX_CONCURRENT_STREAMS: gRPC clients queue calls beyond it; a stream opened
    /// against it is refused (REFUSED_STREAM).
    pub max_streams_per_connection: u32,
    /// Client connections served at once; one more is refused at once (GOAWAY
    /// ENHANCE_YOUR_CALM naming this key) and closed.
    pub max_connections: u32,
    /// The image policy file; `None` runs the proxy without verification (logged loudly).
    pub policy: Option<PathBuf>,
    /// Reload the policy when its file changes (SIGHUP reloads it either way).
    pub policy_watch: bool,
    /// Log output.
    pub log: LogConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None`: not at all.
    pub metrics_listen: Option<Endpoint>,
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `cri_guard=debug`.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: PathBuf::from("/run/cri-guard/cri-guard.sock"),
            upstream: PathBuf::from("/run/containerd/containerd.sock"),
            socket_mode: 0o660,
            connect_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
            workers: 1,
            max_intercepted_message: 16 << 20,
            max_intercepted_buffer: 64 << 20,
            intercepted_request_timeout: Duration::from_secs(10),
            max_streams_per_connection: 1000,
            max_connections: 256,
            policy: None,
            policy_watch: true,
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
            metrics_listen: None,
        }
    }
}

/// Values given on the command line; each one wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub socket_mode: Option<String>,
    pub connect_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub workers: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub policy: Option<String>,
    pub metrics_listen: Option<String>,
}

/// Every problem found in a configuration, each naming the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// Where the configuration came from (a path, or "flags").
    pub source: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {n} problem{} in the configuration:",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates `path` (if any), with `overrides` applied on top.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let (source, text) = match path {
            Some(p) => {
                let source = p.display().to_string();
                match std::fs::read_to_string(p) {
                    Ok(t) => (source, t),
                    Err(e) => {
                        return Err(ConfigErrors {
                            source,
                            problems: vec![format!(
                                "cannot read the file: {e} (check the path given to --config)"
                            )],
                        });
                    }
                }
            }
            None => ("flags".to_string(), String::new()),
        };
        Self::parse(&source, &text, overrides)
    }

    /// Validates configuration `text` (TOML) from `source` with `overrides` applied.
    pub fn parse(source: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let fail = |problems| ConfigErrors {
            source: source.to_string(),
            problems,
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" at line {line}")
                })
                .unwrap_or_default();
            fail(vec![format!(
                "not valid TOML{at}: {} (see README.md, \"Configuration\", for the format)",
                e.message()
            )])
        })?;
        let mut v = Validator::default();
        let cfg = v.config(&table, overrides);
        if v.problems.is_empty() {
            Ok(cfg)
        } else {
            Err(fail(v.problems))
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "listen",
    "upstream",
    "socket_mode",
    "connect_timeout",
    "shutdown_grace",
    "workers",
    "max_intercepted_message",
    "max_intercepted_buffer",
    "intercepted_request_timeout",
    "max_streams_per_connection",
    "max_connections",
    "policy",
    "policy_watch",
    "log",
    "metrics",
];
const LOG_KEYS: &[&str] = &["format", "level"];
const METRICS_KEYS: &[&str] = &["listen"];

/// Walks the table, collecting problems instead of stopping at the first.
#[derive(Default)]
struct Validator {
    problems: Vec<String>,
}

impl Validator {
    fn config(&mut self, t: &toml::Table, o: &Overrides) -> Config {
        let d = Config::default();
        self.unknown_keys("", t, TOP_KEYS);
        let empty = toml::Table::new();
        let log = match t.get("log") {
            None => &empty,
            Some(toml::Value::Table(l)) => l,
            Some(other) => {
                self.problems.push(format!(
                    "`log` must be a table ([log] section), found a {}",
                    other.type_str()
                ));
                &empty
            }
        };
        self.unknown_keys("log.", log, LOG_KEYS);
        let metrics = match t.get("metrics") {
            None => &empty,
            Some(toml::Value::Table(m)) => m,
            Some(other) => {
                self.problems.push(format!(
                    "`metrics` must be a table ([metrics] section), found a {}",
                    other.type_str()
                ));
                &empty
            }
        };
        self.unknown_keys("metrics.", metrics, METRICS_KEYS);

        let listen = self.socket_path("listen", pick(t, "listen", &o.listen), d.listen);
        let upstream = self.socket_path("upstream", pick(t, "upstream", &o.upstream), d.upstream);
        if listen == upstream {
            self.problems.push(format!(
                "`listen` and `upstream` are the same path ({}): the proxy would forward to itself; \
                 point `upstream` at the runtime's socket",
                listen.display()
            ));
        }
        let socket_mode = self.parsed(
            "socket_mode",
            pick(t, "socket_mode", &o.socket_mode),
            d.socket_mode,
            |s| {
                u32::from_str_radix(s.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or("an octal permission string such as \"0660\"")
            },
        );
        let connect_timeout = self.parsed(
            "connect_timeout",
            pick(t, "connect_timeout", &o.connect_timeout),
            d.connect_timeout,
            |s| {
                parse_duration(s)
                    .filter(|d| !d.is_zero())
                    .ok_or("a positive duration such as \"2s\" or \"500ms\"")
            },
        );
        let shutdown_grace = self.parsed(
            "shutdown_grace",
            pick(t, "shutdown_grace", &o.shutdown_grace),
            d.shutdown_grace,
            |s| parse_duration(s).ok_or("a duration such as \"10s\""),
        );
        let workers = self.parsed("workers", pick(t, "workers", &o.workers), d.workers, |s| {
            s.parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or("a whole number from 1 to 64")
        });
        let max_intercepted_message = self.parsed(
            "max_intercepted_message",
            pick(t, "max_intercepted_message", &None),
            d.max_intercepted_message,
            |s| {
                parse_size(s)
                    .filter(|n| (1024..=(256 << 20)).contains(n))
                    .ok_or("a size from \"1KiB\" to \"256MiB\", such as \"16MiB\"")
            },
        );
        let max_intercepted_buffer = self.parsed(
            "max_intercepted_buffer",
            pick(t, "max_intercepted_buffer", &None),
            d.max_intercepted_buffer,
            |s| {
                parse_size(s)
                    .filter(|n| (1024..=(4 << 30)).contains(n))
                    .ok_or("a size from \"1KiB\" to \"4GiB\", such as \"64MiB\"")
            },
        );
        if max_intercepted_buffer < max_intercepted_message {
            self.problems.push(format!(
                "`max_intercepted_buffer` ({max_intercepted_buffer} bytes) is smaller than \
                 `max_intercepted_message` ({max_intercepted_message} bytes): a request of the \
                 allowed size could never be buffered; raise `max_intercepted_buffer`"
            ));
        }
        let intercepted_request_timeout = self.parsed(
            "intercepted_request_timeout",
            pick(t, "intercepted_request_timeout", &None),
            d.intercepted_request_timeout,
            |s| {
                parse_duration(s)
                    .filter(|d| !d.is_zero() && *d <= Duration::from_secs(600))
                    .ok_or("a duration from \"1ms\" to \"10m\", such as \"10s\"")
            },
        );
        let max_streams_per_connection = self.parsed(
            "max_streams_per_connection",
            pick(t, "max_streams_per_connection", &None),
            d.max_streams_per_connection,
            |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or("a whole number from 1 to 100000")
            },
        );
        let max_connections = self.parsed(
            "max_connections",
            pick(t, "max_connections", &None),
            d.max_connections,
            |s| {
                s.parse::<u32>()
                    .ok()
                    .filter(|n| (1..=65_536).contains(n))
                    .ok_or("a whole number from 1 to 65536")
            },
        );
        let policy = self.parsed("policy", pick(t, "policy", &o.policy), None, |s| {
            if s.is_empty() {
                Err("a path to the policy file")
            } else {
                Ok(Some(PathBuf::from(s)))
            }
        });
        let policy_watch = self.parsed(
            "policy_watch",
            t.get("policy_watch").cloned().map(Raw::File),
            d.policy_watch,
            |s| match s {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err("true or false"),
            },
        );
        let format = self.parsed(
            "log.format",
            pick(log, "format", &o.log_format),
            d.log.format,
            |s| match s {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("\"text\" or \"json\""),
            },
        );
        let level =
            self.parsed(
                "log.level",
                pick(log, "level", &o.log_level),
                d.log.level,
                |s| {
                    tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_string())
                .map_err(|_| "a log filter such as \"info\", \"debug\" or \"cri_guard=debug,info\"")
                },
            );
        let metrics_listen = self.metrics_listen(pick(metrics, "listen", &o.metrics_listen));
        Config {
            listen,
            upstream,
            socket_mode,
            connect_timeout,
            shutdown_grace,
            workers,
            max_intercepted_message,
            max_intercepted_buffer,
            intercepted_request_timeout,
            max_streams_per_connection,
            max_connections,
            policy,
            policy_watch,
            log: LogConfig { format, level },
            metrics_listen,
        }
    }

    fn metrics_listen(&mut self, raw: Option<Raw>) -> Option<Endpoint> {
        let raw = raw?;
        match raw.text() {
            Ok(s) if s.is_empty() => None,
            Ok(s) => match Endpoint::parse(&s) {
                Ok(e) => Some(e),
                Err(why) => {
                    self.problems.push(format!("`metrics.listen` = {why}"));
                    None
                }
            },
            Err(found) => {
                self.problems.push(format!(
                    "`metrics.listen` must be a string, found a {found}"
                ));
                None
            }
        }
    }

    fn unknown_keys(&mut self, prefix: &str, t: &toml::Table, known: &[&str]) {
        for key in t.keys().filter(|k| !known.contains(&k.as_str())) {
            self.problems.push(format!(
                "unknown key `{prefix}{key}` (known keys: {})",
                known
                    .iter()
                    .map(|k| format!("{prefix}{k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }

    /// Validates one value: `raw` is the flag or file value rendered as a string.
    fn parsed<T>(
        &mut self,
        key: &str,
        raw: Option<Raw>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, &'static str>,
    ) -> T {
        let Some(raw) = raw else { return default };
        match raw.text() {
            Ok(s) => match parse(&s) {
                Ok(v) => v,
                Err(expected) => {
                    self.problems
                        .push(format!("`{key}` = {s:?} is invalid: expected {expected}"));
                    default
                }
            },
            Err(found) => {
                self.problems.push(format!(
                    "`{key}` must be a string or number, found a {found}"
                ));
                default
            }
        }
    }

    fn socket_path(&mut self, key: &str, raw: Option<Raw>, default: PathBuf) -> PathBuf {
        self.parsed(key, raw, default, |s| {
            let s = s.strip_prefix("unix://").unwrap_or(s);
            let p = PathBuf::from(s);
            if !p.is_absolute() {
                Err("an absolute unix socket path such as \"/run/cri-guard/cri-guard.sock\"")
            } else if s.len() > 107 {
                Err("a path of at most 107 bytes (the unix socket address limit)")
            } else {
                Ok(p)
            }
        })
    }
}

/// A value from a flag (always a string) or from the file (any TOML type).
enum Raw {
    Flag(String),
    File(toml::Value),
}

impl Raw {
    fn text(&self) -> Result<String, &'static str> {
        match self {
            Raw::Flag(s) => Ok(s.clone()),
            Raw::File(toml::Value::String(s)) => Ok(s.clone()),
            Raw::File(toml::Value::Integer(i)) => Ok(i.to_string()),
            Raw::File(toml::Value::Boolean(b)) => Ok(b.to_string()),
            Raw::File(other) => Err(other.type_str()),
        }
    }
}

fn pick(t: &toml::Table, key: &str, flag: &Option<String>) -> Option<Raw> {
    match flag {
        Some(f) => Some(Raw::Flag(f.clone())),
        None => t.get(key).cloned().map(Raw::File),
    }
}

/// Parses durations such as `250ms`, `2s`, `1m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// Parses sizes such as `512KiB`, `16MiB`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse("test.toml", text, &Overrides::default())
    }

    /// An empty file gives the documented defaults.
    #[test]
    fn empty_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    /// A full, valid file is read field by field.
    #[test]
    fn full_file() {
        let c = parse(
            r#"
            listen = "unix:///tmp/g.sock"
            upstream = "/tmp/c.sock"
            socket_mode = "0600"
            connect_timeout = "250ms"
            shutdown_grace = "3s"
            workers = 2
            max_intercepted_message = "1MiB"
            max_intercepted_buffer = "8MiB"
            intercepted_request_timeout = "2s"
            max_streams_per_connection = 64
            max_connections = 32
            [log]
            format = "json"
            level = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, PathBuf::from("/tmp/g.sock"));
        assert_eq!(c.socket_mode, 0o600);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.workers, 2);
        assert_eq!(c.max_intercepted_message, 1 << 20);
        assert_eq!(c.max_intercepted_buffer, 8 << 20);
        assert_eq!(c.intercepted_request_timeout, Duration::from_secs(2));
        assert_eq!(c.max_streams_per_connection, 64);
        assert_eq!(c.max_connections, 32);
        assert_eq!(c.log.format, LogFormat::Json);
    }

    /// Every problem in a file is reported at once, each naming its key.
    #[test]
    fn all_problems_at_once() {
        let e = parse(
            r#"
            listen = "relative.sock"
            socket_mode = "999"
            connect_timeout = "soon"
            workers = 0
            colour = "blue"
            [log]
            format = "xml"
            "#,
        )
        .unwrap_err();
        let text = e.to_string();
        for key in [
            "`listen`",
            "`socket_mode`",
            "`connect_timeout`",
            "`workers`",
            "`colour`",
            "`log.format`",
        ] {
            assert!(text.contains(key), "{key} not reported in:\n{text}");
        }
        assert_eq!(e.problems.len(), 6, "{text}");
    }

    /// The transport bounds are checked: ranges, and a buffer budget that fits the largest
    /// allowed message.
    #[test]
    fn transport_bounds_checked() {
        let e = parse(
            r#"
            max_intercepted_message = "16MiB"
            max_intercepted_buffer = "8MiB"
            intercepted_request_timeout = "0s"
            max_streams_per_connection = 0
            max_connections = 0
            "#,
        )
        .unwrap_err();
        let text = e.to_string();
        for key in [
            "`max_intercepted_buffer` (8388608 bytes) is smaller than `max_intercepted_message`",
            "`intercepted_request_timeout`",
            "`max_streams_per_connection`",
            "`max_connections`",
        ] {
            assert!(text.contains(key), "{key} not reported in:\n{text}");
        }
        assert_eq!(e.problems.len(), 4, "{text}");
        let e = parse("max_intercepted_buffer = \"1B\"\nmax_streams_per_connection = \"x\"")
            .unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
    }

    /// A TOML syntax error names the line.
    #[test]
    fn syntax_error_names_line() {
        let e = parse("listen = \"/a\"\nupstream = \n").unwrap_err();
        assert!(e.problems[0].contains("line 2"), "{e}");
    }

    /// A proxy pointed at itself is refused.
    #[test]
    fn listen_equals_upstream() {
        let e = parse("listen = \"/a.sock\"\nupstream = \"/a.sock\"").unwrap_err();
        assert!(e.problems[0].contains("forward to itself"), "{e}");
    }

    /// Flags override the file and are validated like file values.
    #[test]
    fn flags_override_and_are_checked() {
        let o = Overrides {
            workers: Some("3".into()),
            connect_timeout: Some("x".into()),
            ..Default::default()
        };
        let e = Config::parse("f", "workers = 1", &o).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e.problems[0].contains("connect_timeout"));
        let o = Overrides {
            workers: Some("3".into()),
            ..Default::default()
        };
        assert_eq!(Config::parse("f", "workers = 1", &o).unwrap().workers, 3);
    }

    /// `[metrics] listen` takes an address with a port or a unix path; "" or absent is off; a
    /// bad value names the key and the forms.
    #[test]
    fn metrics_listen() {
        assert_eq!(parse("").unwrap().metrics_listen, None);
        assert_eq!(
            parse("[metrics]\nlisten = \"\"").unwrap().metrics_listen,
            None
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"127.0.0.1:9478\"")
                .unwrap()
                .metrics_listen,
            Some(Endpoint::Tcp("127.0.0.1:9478".parse().unwrap()))
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"unix:/run/m.sock\"")
                .unwrap()
                .metrics_listen,
            Some(Endpoint::Unix("/run/m.sock".into()))
        );
        let e = parse("[metrics]\nlisten = \"localhost\"\nport = 1").unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(
            e.problems.iter().any(|p| p.contains("`metrics.listen`")),
            "{e}"
        );
        assert!(
            e.problems.iter().any(|p| p.contains("`metrics.port`")),
            "{e}"
        );
        let o = Overrides {
            metrics_listen: Some("[::1]:9".into()),
            ..Default::default()
        };
        assert!(Config::parse("f", "", &o).unwrap().metrics_listen.is_some());
    }

    /// `policy_watch` is a boolean (TOML `true`/`false`, or the same words as strings).
    #[test]
    fn policy_watch_is_a_boolean() {
        assert!(parse("").unwrap().policy_watch);
        assert!(!parse("policy_watch = false").unwrap().policy_watch);
        let e = parse("policy_watch = \"sometimes\"").unwrap_err();
        assert!(e.problems[0].contains("`policy_watch`"), "{e}");
    }

    /// Durations and sizes parse their documented forms and refuse others.
    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("16MB"), None);
    }
}
