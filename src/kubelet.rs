//! Pointing the kubelet at cri-guard: the edit the installer makes to the kubelet's
//! configuration (`cri-guard kubelet-endpoint`, a hidden subcommand the installer script runs).
//!
//! Two places can name the runtime's socket:
//! - the `KubeletConfiguration` file (`/var/lib/kubelet/config.yaml`), keys
//!   `containerRuntimeEndpoint` and `imageServiceEndpoint`: both are set to our socket (an
//!   image endpoint left on containerd would let pulls bypass the guard);
//! - the deprecated flags `--container-runtime-endpoint` / `--image-service-endpoint` in
//!   kubeadm's `kubeadm-flags.env`, which win over the file: where present, they are rewritten.
//!
//! The edit is textual and minimal (the line of a top-level key is replaced, or the key is
//! appended), so comments and layout elsewhere survive and the diff an operator reviews is one
//! or two lines. It is then checked semantically: the edited text is parsed again and must
//! equal the original document with exactly those keys changed. Anything else (a file that is
//! not YAML, not a KubeletConfiguration, a key spread over several lines, flow style, a
//! duplicate key) is refused with the reason, and the file is left alone.

use std::fmt;

use yaml_rust2::{Yaml, YamlLoader};

/// The configuration keys that name the runtime's sockets.
pub const CONFIG_KEYS: [&str; 2] = ["containerRuntimeEndpoint", "imageServiceEndpoint"];
/// The (deprecated) kubelet flags that do the same and override the file.
pub const FLAGS: [&str; 2] = ["--container-runtime-endpoint", "--image-service-endpoint"];

/// Which kind of file is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A `KubeletConfiguration` YAML file.
    Config,
    /// A file of kubelet flags, e.g. kubeadm's `KUBELET_KUBEADM_ARGS="--flag=value ..."`.
    Flags,
}

/// The edited text and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    /// (key or flag, previous value if any) for each value that changed.
    pub changed: Vec<(String, Option<String>)>,
}

/// Why a file was not edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditError(pub String);

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EditError {}

/// Sets the runtime and image endpoints in `text` to `endpoint`.
pub fn set_endpoint(text: &str, format: Format, endpoint: &str) -> Result<Edit, EditError> {
    if endpoint.is_empty() || endpoint.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(EditError(format!(
            "{endpoint:?} is not a usable endpoint (e.g. unix:///run/cri-guard/cri-guard.sock)"
        )));
    }
    match format {
        Format::Config => set_in_config(text, endpoint),
        Format::Flags => Ok(set_in_flags(text, endpoint)),
    }
}

fn set_in_config(text: &str, endpoint: &str) -> Result<Edit, EditError> {
    let original = parse_config(text)?;
    let Yaml::Hash(map) = &original else {
        unreachable!("parse_config returns a mapping")
    };
    let value = yaml_scalar(endpoint);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut changed = Vec::new();
    let mut expected = map.clone();
    for key in CONFIG_KEYS {
        let before = map.get(&Yaml::String(key.into())).cloned();
        if before.as_ref().and_then(Yaml::as_str) == Some(endpoint) {
            continue;
        }
        let previous = match &before {
            None | Some(Yaml::Null) => None,
            Some(Yaml::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(EditError(format!(
                    "`{key}` is not a string ({other:?}); fix it by hand"
                )));
            }
        };
        let at: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| top_level_key(l) == Some(key))
            .map(|(i, _)| i)
            .collect();
        let line = format!("{key}: {value}");
        match (at.as_slice(), &before) {
            ([], None) => lines.push(line),
            ([i], Some(_)) => lines[*i] = line,
            _ => {
                return Err(EditError(format!(
                    "cannot find `{key}` as one top-level line (flow style, a multi-line value, \
                     or a duplicate key?); set it by hand"
                )));
            }
        }
        // In place for a key that exists (`insert` would move it to the end).
        match expected.get_mut(&Yaml::String(key.into())) {
            Some(v) => *v = Yaml::String(endpoint.into()),
            None => {
                expected.insert(Yaml::String(key.into()), Yaml::String(endpoint.into()));
            }
        }
        changed.push((key.to_string(), previous));
    }
    if changed.is_empty() {
        return Ok(Edit {
            text: text.to_string(),
            changed,
        });
    }
    let mut edited = lines.join("\n");
    edited.push('\n');
    // The edit must mean exactly what it says: the original with those keys set.
    match parse_config(&edited) {
        Ok(Yaml::Hash(got)) if got == expected => Ok(Edit {
            text: edited,
            changed,
        }),
        _ => Err(EditError(
            "the edited file would not be the original with only the endpoints changed \
             (unusual layout); set the endpoints by hand"
                .into(),
        )),
    }
}

/// Parses a KubeletConfiguration document (a single mapping with the right kind).
fn parse_config(text: &str) -> Result<Yaml, EditError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| {
        EditError(format!(
            "not valid YAML: {} at line {}, column {}",
            e.info(),
            e.marker().line(),
            e.marker().col() + 1
        ))
    })?;
    let [doc] = docs.as_slice() else {
        return Err(EditError(format!(
            "expected one YAML document, found {}",
            docs.len()
        )));
    };
    let Yaml::Hash(map) = doc else {
        return Err(EditError(
            "not a KubeletConfiguration (not a mapping)".into(),
        ));
    };
    let field = |k: &str| map.get(&Yaml::String(k.into())).and_then(Yaml::as_str);
    if field("kind") != Some("KubeletConfiguration")
        || !field("apiVersion").is_some_and(|v| v.starts_with("kubelet.config.k8s.io/"))
    {
        return Err(EditError(format!(
            "not a KubeletConfiguration (kind {:?}, apiVersion {:?})",
            field("kind").unwrap_or(""),
            field("apiVersion").unwrap_or("")
        )));
    }
    Ok(doc.clone())
}

/// The key of a top-level block mapping line (`key: ...` at column 0).
fn top_level_key(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(':')?;
    let key = key.trim_end();
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(key)
}

/// `s` as a YAML scalar: plain where that reads back as the same string, else double-quoted.
fn yaml_scalar(s: &str) -> String {
    let plain = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/:._-@+".contains(c))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

fn set_in_flags(text: &str, endpoint: &str) -> Edit {
    let mut changed = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Each `--flag=value` or `--flag value` occurrence; the value ends at whitespace or a quote.
    'scan: while !rest.is_empty() {
        for flag in FLAGS {
            if let Some(after) = rest.strip_prefix(flag) {
                let sep = after.chars().next();
                if matches!(sep, Some('=') | Some(' ')) {
                    let value_start = flag.len() + 1;
                    let value_len = rest[value_start..]
                        .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                        .unwrap_or(rest.len() - value_start);
                    let value = &rest[value_start..value_start + value_len];
                    out.push_str(&rest[..value_start]);
                    out.push_str(endpoint);
                    if value != endpoint {
                        changed.push((flag.to_string(), Some(value.to_string())));
                    }
                    rest = &rest[value_start + value_len..];
                    continue 'scan;
                }
            }
        }
        let next = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..next]);
        rest = &rest[next..];
    }
    if changed.is_empty() {
        out = text.to_string();
    }
    Edit { text: out, changed }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "unix:///run/cri-guard/cri-guard.sock";

    const KUBEADM: &str = "\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
cgroupDriver: systemd
# the runtime
containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock
kind: KubeletConfiguration
rotateCertificates: true
";

    /// The runtime key's line is replaced, the image key is appended, nothing else moves.
    #[test]
    fn kubeadm_config() {
        let e = set_endpoint(KUBEADM, Format::Config, EP).unwrap();
        assert_eq!(
            e.text,
            KUBEADM.replace(
                "containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock",
                &format!("containerRuntimeEndpoint: {EP}")
            ) + &format!("imageServiceEndpoint: {EP}\n")
        );
        assert_eq!(
            e.changed,
            vec![
                (
                    "containerRuntimeEndpoint".into(),
                    Some("unix:///var/run/containerd/containerd.sock".into())
                ),
                ("imageServiceEndpoint".into(), None)
            ]
        );
        // A second run changes nothing.
        let again = set_endpoint(&e.text, Format::Config, EP).unwrap();
        assert!(again.changed.is_empty());
        assert_eq!(again.text, e.text);
    }

    /// A file without a final newline, or with the keys absent, still gets a clean edit.
    #[test]
    fn keys_absent_no_final_newline() {
        let text = "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1";
        let e = set_endpoint(text, Format::Config, EP).unwrap();
        assert_eq!(
            e.text,
            format!("{text}\ncontainerRuntimeEndpoint: {EP}\nimageServiceEndpoint: {EP}\n")
        );
    }

    /// What cannot be edited safely is refused with a reason.
    #[test]
    fn refusals() {
        let cases = [
            ("kind: [unclosed\n", "not valid YAML"),
            ("a: 1\n---\nb: 2\n", "one YAML document"),
            ("- a\n", "not a mapping"),
            ("kind: Pod\napiVersion: v1\n", "not a KubeletConfiguration"),
            (
                "{kind: KubeletConfiguration, apiVersion: kubelet.config.k8s.io/v1beta1, containerRuntimeEndpoint: x}\n",
                "one top-level line",
            ),
            (
                "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\ncontainerRuntimeEndpoint: >\n  unix:///x\n",
                "set the endpoints by hand",
            ),
            (
                "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\ncontainerRuntimeEndpoint: [1]\n",
                "not a string",
            ),
        ];
        for (text, reason) in cases {
            let e = set_endpoint(text, Format::Config, EP).unwrap_err();
            assert!(e.0.contains(reason), "{text:?}: {e}");
        }
        assert!(set_endpoint(KUBEADM, Format::Config, "a b").is_err());
    }

    /// A JSON kubelet configuration (YAML's subset) that is already right is left as it is.
    #[test]
    fn already_set_is_untouched() {
        let text = format!(
            "{{\"kind\": \"KubeletConfiguration\", \"apiVersion\": \"kubelet.config.k8s.io/v1beta1\", \"containerRuntimeEndpoint\": \"{EP}\", \"imageServiceEndpoint\": \"{EP}\"}}"
        );
        let e = set_endpoint(&text, Format::Config, EP).unwrap();
        assert!(e.changed.is_empty());
        assert_eq!(e.text, text);
    }

    /// kubeadm's flags file: both forms of both flags are rewritten, nothing else.
    #[test]
    fn flags_file() {
        let text = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.9 --image-service-endpoint unix:///x.sock\"\n";
        let e = set_endpoint(text, Format::Flags, EP).unwrap();
        assert_eq!(
            e.text,
            format!(
                "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint={EP} --pod-infra-container-image=registry.k8s.io/pause:3.9 --image-service-endpoint {EP}\"\n"
            )
        );
        assert_eq!(e.changed.len(), 2);
        let again = set_endpoint(&e.text, Format::Flags, EP).unwrap();
        assert!(again.changed.is_empty());
        let none = "KUBELET_KUBEADM_ARGS=\"--node-ip=10.0.0.1\"\n";
        assert_eq!(set_endpoint(none, Format::Flags, EP).unwrap().text, none);
    }
}
