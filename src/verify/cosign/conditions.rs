//! What a policy can require of an attestation's predicate ([`Condition`]: `path` with
//! `equals`, `oneOf`, `matches` or `exists`), and cosign's `--type` names for predicate types
//! ([`predicate_type`]). The same for both formats: checked on a verified statement.

use std::fmt;

use serde_json::Value;

use crate::verify::cosign::shown;

/// Longest dotted path a condition may have.
const MAX_PATH_SEGMENTS: usize = 64;

/// The predicate type URI for one of cosign's `--type` names (`cosign attest --type`, in
/// cosign's `options/predicate.go`); anything else is returned unchanged, as a URI.
pub fn predicate_type(name: &str) -> &str {
    match name {
        "custom" => "https://cosign.sigstore.dev/attestation/v1",
        "slsaprovenance" | "slsaprovenance02" => "https://slsa.dev/provenance/v0.2",
        "slsaprovenance1" => "https://slsa.dev/provenance/v1",
        "spdx" | "spdxjson" => "https://spdx.dev/Document",
        "cyclonedx" | "cyclonedxxml" => "https://cyclonedx.org/bom",
        "link" => "https://in-toto.io/Link/v1",
        "vuln" => "https://cosign.sigstore.dev/attestation/vuln/v1",
        "openvex" => "https://openvex.dev/ns",
        other => other,
    }
}

const CONDITION_KEYS: [&str; 5] = ["path", "equals", "oneOf", "matches", "exists"];

/// A condition on a statement's predicate, from policy TOML:
///
/// ```toml
/// { path = "builder.id", equals = "https://github.com/actions/runner" }
/// { path = "buildType", oneOf = ["https://a.example/v1", "https://b.example/v1"] }
/// { path = "materials.0.uri", matches = "git\\+https://github\\.com/acme/.*" }
/// { path = 'metadata."example.com/reviewed"', exists = true }
/// ```
///
/// `path` is a dotted path into the predicate: a segment is an object key, or an array index
/// when the value there is an array and the segment is a number; a key containing dots or
/// quotes is written in double quotes (`\"` and `\\` escape). Exactly one test:
/// - `equals`: the value equals this TOML value (numbers by value, `1` equals `1.0`);
/// - `oneOf`: it equals one of these;
/// - `matches`: it is a string and the *whole* string matches this regular expression (Rust
///   `regex` syntax; anchored, unlike cosign's identity regexps, so that `https://x/.*` cannot
///   be met by `https://evil/?https://x/`);
/// - `exists`: `true` when the path leads to a value other than `null`, `false` when not.
#[derive(Debug, Clone)]
pub struct Condition {
    path: Vec<Segment>,
    path_text: String,
    test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    text: String,
    /// Written in quotes: always an object key, never an index.
    quoted: bool,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Matches {
        regex: regex::Regex,
        pattern: String,
    },
    Exists(bool),
}

impl Condition {
    /// Parses a condition table; `at` names it in messages (e.g. `rules[0].conditions[1]`).
    /// Every problem is reported, separated by `; `.
    pub fn from_toml(at: &str, v: &toml::Value) -> Result<Condition, String> {
        let Some(table) = v.as_table() else {
            return Err(format!(
                "{at}: a condition is a table such as {{ path = \"builder.id\", equals = \"...\" }}"
            ));
        };
        let mut problems = Vec::new();
        for key in table.keys() {
            if !CONDITION_KEYS.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown key {key:?}; valid keys are {}",
                    CONDITION_KEYS.join(", ")
                ));
            }
        }
        let path = match table.get("path") {
            None => {
                problems.push("path is missing".to_owned());
                None
            }
            Some(toml::Value::String(p)) => match parse_path(p) {
                Ok(path) => Some((path, p.clone())),
                Err(e) => {
                    problems.push(format!("path {p:?}: {e}"));
                    None
                }
            },
            Some(_) => {
                problems.push("path must be a string such as \"builder.id\"".to_owned());
                None
            }
        };
        let mut tests = Vec::new();
        if let Some(v) = table.get("equals") {
            match toml_to_json(v) {
                Ok(v) => tests.push(Test::Equals(v)),
                Err(e) => problems.push(format!("equals: {e}")),
            }
        }
        if let Some(v) = table.get("oneOf") {
            match v {
                toml::Value::Array(items) if !items.is_empty() => {
                    match items
                        .iter()
                        .map(toml_to_json)
                        .collect::<Result<Vec<_>, _>>()
                    {
                        Ok(values) => tests.push(Test::OneOf(values)),
                        Err(e) => problems.push(format!("oneOf: {e}")),
                    }
                }
                _ => problems.push("oneOf must be a non-empty array".to_owned()),
            }
        }
        if let Some(v) = table.get("matches") {
            match v {
                toml::Value::String(pattern) => {
                    match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
                        .size_limit(1 << 20)
                        .build()
                    {
                        Ok(regex) => tests.push(Test::Matches {
                            regex,
                            pattern: pattern.clone(),
                        }),
                        Err(e) => problems.push(format!(
                            "matches: invalid regular expression: {}",
                            e.to_string().replace('\n', " ")
                        )),
                    }
                }
                _ => problems.push("matches must be a string (a regular expression)".to_owned()),
            }
        }
        if let Some(v) = table.get("exists") {
            match v {
                toml::Value::Boolean(b) => tests.push(Test::Exists(*b)),
                _ => problems.push("exists must be true or false".to_owned()),
            }
        }
        let present: Vec<&str> = ["equals", "oneOf", "matches", "exists"]
            .into_iter()
            .filter(|k| table.contains_key(*k))
            .collect();
        match present.len() {
            0 => problems.push("needs one of equals, oneOf, matches, exists".to_owned()),
            1 => {}
            _ => problems.push(format!(
                "has {}; give exactly one test per condition",
                present.join(" and ")
            )),
        }
        if !problems.is_empty() {
            return Err(format!("{at}: {}", problems.join("; ")));
        }
        match (path, tests.pop()) {
            (Some((path, path_text)), Some(test)) if tests.is_empty() => Ok(Condition {
                path,
                path_text,
                test,
            }),
            _ => Err(format!("{at}: invalid condition")),
        }
    }

    /// The dotted path, as written.
    pub fn path(&self) -> &str {
        &self.path_text
    }

    /// Checks the condition on a predicate. The message names the path, what was expected
    /// and what was found (shortened and escaped).
    pub fn check(&self, predicate: &Value) -> Result<(), String> {
        let found = lookup(predicate, &self.path);
        let ok = match (&self.test, found) {
            (Test::Equals(want), Some(v)) => json_eq(want, v),
            (Test::OneOf(wants), Some(v)) => wants.iter().any(|w| json_eq(w, v)),
            (Test::Matches { regex, .. }, Some(Value::String(s))) => regex.is_match(s),
            (Test::Exists(want), found) => *want == found.is_some_and(|v| !v.is_null()),
            (_, _) => false,
        };
        if ok {
            return Ok(());
        }
        let found = match found {
            None => "nothing (no such field)".to_owned(),
            Some(v) => short_json(v),
        };
        Err(format!(
            "predicate {}: expected {}, found {found}",
            shown(&self.path_text),
            self.expected()
        ))
    }

    fn expected(&self) -> String {
        match &self.test {
            Test::Equals(v) => short_json(v),
            Test::OneOf(vs) => format!("one of {}", short_json(&Value::Array(vs.clone()))),
            Test::Matches { pattern, .. } => {
                format!("a string matching {}", shown(&format!("/{pattern}/")))
            }
            Test::Exists(true) => "a value".to_owned(),
            Test::Exists(false) => "no value".to_owned(),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", shown(&self.path_text))?;
        match &self.test {
            Test::Equals(v) => write!(f, "equals {}", short_json(v)),
            Test::OneOf(vs) => write!(f, "is one of {}", short_json(&Value::Array(vs.clone()))),
            Test::Matches { pattern, .. } => {
                write!(f, "matches {}", shown(&format!("/{pattern}/")))
            }
            Test::Exists(true) => f.write_str("exists"),
            Test::Exists(false) => f.write_str("does not exist"),
        }
    }
}

fn parse_path(s: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut text = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '"' => {
                        closed = true;
                        break;
                    }
                    '\\' => match chars.next() {
                        Some(e @ ('"' | '\\')) => text.push(e),
                        _ => return Err("only \\\" and \\\\ may be escaped in a quoted key".into()),
                    },
                    c => text.push(c),
                }
            }
            if !closed {
                return Err("a quoted key is not closed".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err("a quote may only start a key".into());
                }
                text.push(c);
                chars.next();
            }
            if text.is_empty() {
                return Err("empty segment (use quotes for an empty key: \"\")".into());
            }
        }
        segments.push(Segment { text, quoted });
        if segments.len() > MAX_PATH_SEGMENTS {
            return Err(format!("more than {MAX_PATH_SEGMENTS} segments"));
        }
        match chars.next() {
            None => return Ok(segments),
            Some('.') if chars.peek().is_some() => {}
            Some('.') => return Err("ends with a dot".into()),
            Some(_) => return Err("a quoted key must be followed by a dot or the end".into()),
        }
    }
}

fn lookup<'a>(mut v: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    for seg in path {
        v = match v {
            Value::Object(map) => map.get(&seg.text)?,
            Value::Array(items) if !seg.quoted && seg.text.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(seg.text.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(v)
}

/// Equality with numbers compared by value (TOML `1` equals JSON `1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_eq(a, b)))
        }
        _ => a == b,
    }
}

fn toml_to_json(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// Compact JSON of `v`, at most about 128 characters and escaped; serialization stops early,
/// so a huge predicate is never written out whole.
fn short_json(v: &Value) -> String {
    struct Limited(Vec<u8>);
    impl std::io::Write for Limited {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0.len() >= 160 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Limited(Vec::new());
    let complete = serde_json::to_writer(&mut out, v).is_ok();
    let text = String::from_utf8_lossy(&out.0);
    let mut s = shown(&text);
    if !complete && !s.ends_with("...") {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(src: &str) -> Result<Condition, String> {
        let table: toml::Table = toml::from_str(&format!("c = {src}")).unwrap();
        Condition::from_toml("rules[0].conditions[0]", &table["c"])
    }

    fn predicate() -> Value {
        json!({
            "builder": {"id": "https://github.com/actions/runner"},
            "buildType": "https://b.example/v1",
            "materials": [{"uri": "git+https://github.com/acme/app@refs/heads/main"}],
            "metadata": {"example.com/reviewed": true, "count": 3, "nothing": null, "0": "zero"},
            "long": "x".repeat(1000),
            "evil": "a\u{202e}b\nc",
        })
    }

    /// Each test kind passes on a matching predicate.
    #[test]
    fn conditions_that_hold() {
        let p = predicate();
        for src in [
            r#"{ path = "builder.id", equals = "https://github.com/actions/runner" }"#,
            r#"{ path = "buildType", oneOf = ["https://a.example/v1", "https://b.example/v1"] }"#,
            r#"{ path = "materials.0.uri", matches = 'git\+https://github\.com/acme/.*' }"#,
            r#"{ path = 'metadata."example.com/reviewed"', exists = true }"#,
            r#"{ path = 'metadata."example.com/reviewed"', equals = true }"#,
            r#"{ path = "metadata.nothing", exists = false }"#,
            r#"{ path = "metadata.missing", exists = false }"#,
            r#"{ path = "metadata.count", equals = 3.0 }"#,
            r#"{ path = "metadata.0", equals = "zero" }"#,
            r#"{ path = "builder", equals = { id = "https://github.com/actions/runner" } }"#,
        ] {
            let c = cond(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(c.check(&p), Ok(()), "{src}");
        }
    }

    /// A failing condition names the path, the expectation and what was found, shortened
    /// and escaped.
    #[test]
    fn conditions_that_fail() {
        let p = predicate();
        let fails = |src: &str| cond(src).unwrap().check(&p).unwrap_err();
        assert_eq!(
            fails(r#"{ path = "builder.id", equals = "https://other" }"#),
            r#"predicate builder.id: expected "https://other", found "https://github.com/actions/runner""#
        );
        assert_eq!(
            fails(r#"{ path = "buildType", oneOf = ["a", "b"] }"#),
            r#"predicate buildType: expected one of ["a","b"], found "https://b.example/v1""#
        );
        // Anchored: a match in the middle is not enough.
        assert_eq!(
            fails(r#"{ path = "materials.0.uri", matches = 'github\.com/acme' }"#),
            r#"predicate materials.0.uri: expected a string matching /github\.com/acme/, found "git+https://github.com/acme/app@refs/heads/main""#
        );
        assert_eq!(
            fails(r#"{ path = "metadata.count", matches = "3" }"#),
            "predicate metadata.count: expected a string matching /3/, found 3"
        );
        assert_eq!(
            fails(r#"{ path = "builder.version", exists = true }"#),
            "predicate builder.version: expected a value, found nothing (no such field)"
        );
        assert_eq!(
            fails(r#"{ path = "metadata.nothing", exists = true }"#),
            "predicate metadata.nothing: expected a value, found null"
        );
        assert_eq!(
            fails(r#"{ path = "builder", exists = false }"#),
            r#"predicate builder: expected no value, found {"id":"https://github.com/actions/runner"}"#
        );
        assert!(
            fails(r#"{ path = "materials.1.uri", exists = true }"#)
                .ends_with("found nothing (no such field)")
        );
        assert!(
            fails(r#"{ path = "materials.x", exists = true }"#)
                .ends_with("found nothing (no such field)")
        );
        assert!(
            fails(r#"{ path = 'materials."0"', exists = true }"#)
                .ends_with("found nothing (no such field)")
        );
        let long = fails(r#"{ path = "long", equals = "x" }"#);
        assert!(long.len() < 250 && long.ends_with("..."), "{long}");
        let evil = fails(r#"{ path = "evil", equals = "x" }"#);
        assert!(!evil.contains('\u{202e}') && !evil.contains('\n'), "{evil}");
        let whole = fails(r#"{ path = "metadata", equals = 1 }"#);
        assert!(whole.len() < 300, "{whole}");
    }

    /// Malformed conditions are refused with every problem named, the valid keys listed for
    /// an unknown one, and the location first.
    #[test]
    fn condition_errors() {
        let err = |src: &str| cond(src).unwrap_err();
        assert_eq!(
            err(r#"{ path = "a", equal = "x" }"#),
            "rules[0].conditions[0]: unknown key \"equal\"; valid keys are path, equals, oneOf, matches, exists; needs one of equals, oneOf, matches, exists"
        );
        assert_eq!(
            err(r#"{ path = "a", equals = "x", exists = true }"#),
            "rules[0].conditions[0]: has equals and exists; give exactly one test per condition"
        );
        assert!(err(r#"{ equals = "x" }"#).contains("path is missing"));
        assert!(err(r#"{ path = 5, equals = "x" }"#).contains("path must be a string"));
        assert!(
            err(r#"{ path = "a", matches = "(" }"#).contains("matches: invalid regular expression")
        );
        assert!(err(r#"{ path = "a", matches = 5 }"#).contains("matches must be a string"));
        assert!(err(r#"{ path = "a", oneOf = [] }"#).contains("oneOf must be a non-empty array"));
        assert!(err(r#"{ path = "a", oneOf = "x" }"#).contains("oneOf must be a non-empty array"));
        assert!(err(r#"{ path = "a", exists = "yes" }"#).contains("exists must be true or false"));
        assert!(err(r#"{ path = "a", equals = nan }"#).contains("no JSON form"));
        for bad_path in [
            "", "a..b", "a.", ".a", "\"open", "a\"b\"", "\"a\"b", "\"\\n\"",
        ] {
            let e = err(&format!(
                "{{ path = {}, exists = true }}",
                toml::Value::String(bad_path.into())
            ));
            assert!(
                e.starts_with("rules[0].conditions[0]: path "),
                "{bad_path}: {e}"
            );
        }
        let deep = vec!["a"; MAX_PATH_SEGMENTS + 1].join(".");
        assert!(err(&format!("{{ path = \"{deep}\", exists = true }}")).contains("segments"));
        let not_table = Condition::from_toml("c", &toml::Value::String("x".into())).unwrap_err();
        assert!(
            not_table.starts_with("c: a condition is a table"),
            "{not_table}"
        );
        // Quoted keys keep dots and escaped quotes.
        let c = cond(r#"{ path = 'a."b.c"."d\"e"', exists = true }"#).unwrap();
        assert_eq!(c.check(&json!({"a": {"b.c": {"d\"e": 1}}})), Ok(()));
        assert_eq!(c.path(), r#"a."b.c"."d\"e""#);
        assert_eq!(
            cond(r#"{ path = "builder.id", equals = "x" }"#)
                .unwrap()
                .to_string(),
            r#"builder.id equals "x""#
        );
    }

    /// cosign's `--type` names map to their URIs; anything else is taken as a URI.
    #[test]
    fn predicate_type_aliases() {
        for (name, uri) in [
            ("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
            ("slsaprovenance02", "https://slsa.dev/provenance/v0.2"),
            ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
            ("spdx", "https://spdx.dev/Document"),
            ("spdxjson", "https://spdx.dev/Document"),
            ("cyclonedx", "https://cyclonedx.org/bom"),
            ("link", "https://in-toto.io/Link/v1"),
            ("vuln", "https://cosign.sigstore.dev/attestation/vuln/v1"),
            ("custom", "https://cosign.sigstore.dev/attestation/v1"),
            ("openvex", "https://openvex.dev/ns"),
            ("https://example.com/p/v1", "https://example.com/p/v1"),
        ] {
            assert_eq!(predicate_type(name), uri);
        }
    }
}
