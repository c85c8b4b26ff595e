//! Image references as containerd reads them, and the normalized form rules match against.
//!
//! Every byte of an image string comes from a pod author or a socket peer, so it is read the
//! way the runtime reads it (`distribution/reference`'s `ParseNormalizedNamed`, which
//! containerd's CRI uses), never more loosely:
//!
//! - The first path component is the registry host if it contains `.` or `:`, is `localhost`,
//!   or has an upper-case letter; otherwise the host is `docker.io`, and a one-component
//!   Docker Hub path gets `library/` (`nginx` is `docker.io/library/nginx`). `index.docker.io`
//!   is `docker.io`. (oci-spec's parser differs on the upper-case rule: `Evil/app` is the host
//!   `Evil` to containerd, not `docker.io/Evil/app`; see docs/policy.md.)
//! - No tag and no digest means the tag `latest`. With a digest, the runtime pulls the digest
//!   and ignores a tag next to it.
//!
//! [`Normal`] is what policy patterns are matched against: the host in lower case, without the
//! default HTTPS port `:443`, with Docker Hub's other names (`index.docker.io`,
//! `registry-1.docker.io`) as `docker.io`; then `path:tag`, or `path@digest` when there is a
//! digest (the tag dropped). Other aliases of a host (`localhost` and `127.0.0.1`, an IP and a
//! DNS name) are different hosts: nothing on the node says they are the same server.
//!
//! A malformed reference is refused with [`RefError`], which says what is wrong with it.

use oci_client::Reference;

/// Longest reference accepted (a 255-byte name, a 128-byte tag and a sha512 digest fit).
pub const MAX_REFERENCE: usize = 512;

/// What is wrong with an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("the image reference is empty")]
    Empty,
    #[error("the image reference is {0} bytes long (at most {MAX_REFERENCE})")]
    TooLong(usize),
    #[error("the image reference contains a control character at byte {0}")]
    Control(usize),
    #[error("the image reference contains white space at byte {0}")]
    Space(usize),
    #[error("the registry host {0:?} is not a host name or host:port")]
    Host(String),
    #[error("the repository path {0:?} must be lowercase")]
    Uppercase(String),
    #[error(
        "the repository path component {0:?} is not valid (lowercase letters and digits, \
         separated by '.', '_', '__' or '-')"
    )]
    Component(String),
    #[error("the repository name is {0} bytes long (at most 255)")]
    NameTooLong(usize),
    #[error(
        "the tag {0:?} is not valid (1 to 128 letters, digits, '_', '.' or '-', not starting \
         with '.' or '-')"
    )]
    Tag(String),
    #[error(
        "the digest {0:?} is not valid (expected sha256: and 64 lowercase hex digits; sha384 and \
         sha512 are read but not verified)"
    )]
    Digest(String),
    #[error("the image reference does not follow the form [registry/]path[:tag][@digest]")]
    Grammar,
}

/// Parses an image reference the way containerd does (see the module docs).
pub fn parse(s: &str) -> Result<Reference, RefError> {
    if s.is_empty() {
        return Err(RefError::Empty);
    }
    if s.len() > MAX_REFERENCE {
        return Err(RefError::TooLong(s.len()));
    }
    if let Some((i, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(RefError::Control(i));
    }
    if let Some((i, _)) = s.char_indices().find(|(_, c)| c.is_whitespace()) {
        return Err(RefError::Space(i));
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if last_slash.is_none_or(|j| i > j) => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    let (host, path) = split_host(name);
    if host != "docker.io" && !valid_host(host) {
        return Err(RefError::Host(host.to_string()));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(RefError::Uppercase(path.to_string()));
    }
    if let Some(c) = path.split('/').find(|c| !valid_component(c)) {
        return Err(RefError::Component(c.to_string()));
    }
    if name.len() > 255 {
        return Err(RefError::NameTooLong(name.len()));
    }
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(RefError::Tag(t.to_string()));
        }
    }
    if let Some(d) = digest {
        if !valid_digest_syntax(d) {
            return Err(RefError::Digest(d.to_string()));
        }
    }
    // The grammar of oci-spec (the regular expression of distribution/reference) as a second
    // check; the split above is containerd's.
    Reference::try_from(s).map_err(|_| RefError::Grammar)?;
    let (host, path) = (host.to_string(), path.to_string());
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(host, path, t.into(), d.into()),
        (None, Some(d)) => Reference::with_digest(host, path, d.into()),
        (Some(t), None) => Reference::with_tag(host, path, t.into()),
        (None, None) => Reference::with_tag(host, path, "latest".into()),
    })
}

/// Splits a name (no tag, no digest) into host and path, as `splitDockerDomain` does.
fn split_host(name: &str) -> (&str, std::borrow::Cow<'_, str>) {
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => ("docker.io", name),
    };
    let host = if host == "index.docker.io" {
        "docker.io"
    } else {
        host
    };
    if host == "docker.io" && !path.contains('/') {
        (host, format!("library/{path}").into())
    } else {
        (host, path.into())
    }
}

/// `host[:port]`: DNS labels of letters, digits and `-` separated by dots; a numeric port.
fn valid_host(h: &str) -> bool {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !name.is_empty()
        && name.split('.').all(label)
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A tag: `[\w][\w.-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !t.is_empty()
        && t.len() <= 128
        && word(t.as_bytes()[0])
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `sha256:<64 hex>` (or sha384/sha512 of their lengths), lowercase.
fn valid_digest_syntax(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A reference in the form policy patterns match: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normal {
    /// Lower case, no `:443`, Docker Hub as `docker.io`.
    pub host: String,
    /// The repository path (`library/nginx`).
    pub path: String,
    /// `:tag`, or `@digest` when there is a digest.
    pub suffix: String,
}

impl Normal {
    pub fn of(r: &Reference) -> Normal {
        let suffix = match (r.digest(), r.tag()) {
            (Some(d), _) => format!("@{d}"),
            (None, Some(t)) => format!(":{t}"),
            (None, None) => ":latest".to_string(),
        };
        Normal {
            host: normal_host(r.registry()),
            path: r.repository().to_string(),
            suffix,
        }
    }

    /// `host/path`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.host, self.path)
    }

    /// `host/path:tag` or `host/path@digest`.
    pub fn whole(&self) -> String {
        format!("{}/{}{}", self.host, self.path, self.suffix)
    }
}

/// A registry host as rules see it: lower case, no `:443`, Docker Hub's names as `docker.io`.
pub fn normal_host(h: &str) -> String {
    let h = h.to_ascii_lowercase();
    let h = h.strip_suffix(":443").unwrap_or(&h);
    match h {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        Normal::of(&parse(s).unwrap()).whole()
    }

    /// Docker Hub short names expand as containerd expands them.
    #[test]
    fn docker_hub_names() {
        assert_eq!(n("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(n("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(n("team/app"), "docker.io/team/app:latest");
        assert_eq!(n("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(n("index.docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            n("registry-1.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        let r = parse("nginx").unwrap();
        assert_eq!(
            (r.registry(), r.repository()),
            ("docker.io", "library/nginx")
        );
    }

    /// Host spellings: case and the default HTTPS port don't make another host; aliases do.
    #[test]
    fn host_spellings() {
        assert_eq!(n("GHCR.IO/org/app:v1"), "ghcr.io/org/app:v1");
        assert_eq!(n("ghcr.io:443/org/app:v1"), "ghcr.io/org/app:v1");
        assert_eq!(n("localhost:5300/app"), "localhost:5300/app:latest");
        assert_eq!(n("127.0.0.1:5300/app"), "127.0.0.1:5300/app:latest");
        assert_ne!(n("localhost:5300/app"), n("127.0.0.1:5300/app"));
        assert_eq!(n("ghcr.io:8443/app"), "ghcr.io:8443/app:latest");
        // The fetch goes where containerd goes: the host as written.
        assert_eq!(parse("GHCR.IO/org/app").unwrap().registry(), "GHCR.IO");
    }

    /// An upper-case first component is a host to containerd, not a Docker Hub user.
    #[test]
    fn uppercase_first_component_is_a_host() {
        let r = parse("Evil/app:v1").unwrap();
        assert_eq!((r.registry(), r.repository()), ("Evil", "app"));
        assert_eq!(n("Evil/app:v1"), "evil/app:v1");
        // oci-spec reads it as a Docker Hub path.
        let o: Reference = "Evil/app:v1".parse().unwrap();
        assert_eq!(o.registry(), "docker.io");
    }

    /// A digest decides; a tag next to it is dropped from the matched form.
    #[test]
    fn digest_drops_tag() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("reg.example/app:release-1@{d}")),
            format!("reg.example/app@{d}")
        );
        let r = parse(&format!("reg.example/app:release-1@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("release-1"), Some(d.as_str())));
    }

    /// Malformed references are refused with what is wrong.
    #[test]
    fn malformed() {
        assert_eq!(parse(""), Err(RefError::Empty));
        assert_eq!(parse("a/b\nc"), Err(RefError::Control(3)));
        assert_eq!(parse("a b"), Err(RefError::Space(1)));
        assert_eq!(
            parse("reg.example/Team/App"),
            Err(RefError::Uppercase("Team/App".into()))
        );
        assert_eq!(
            parse("reg.example/a..b"),
            Err(RefError::Component("a..b".into()))
        );
        assert_eq!(parse("app:-x"), Err(RefError::Tag("-x".into())));
        assert_eq!(
            parse(&format!("app:{}", "t".repeat(129))),
            Err(RefError::Tag("t".repeat(129)))
        );
        assert_eq!(
            parse("app@sha256:abc"),
            Err(RefError::Digest("sha256:abc".into()))
        );
        assert_eq!(
            parse(&format!("app@md5:{}", "a".repeat(32))),
            Err(RefError::Digest(format!("md5:{}", "a".repeat(32))))
        );
        assert_eq!(
            parse("bad_host.example:x/app"),
            Err(RefError::Host("bad_host.example:x".into()))
        );
        assert_eq!(parse(&"a".repeat(600)), Err(RefError::TooLong(600)));
        assert!(parse("a//b").is_err());
        assert!(parse("reg.example/app@").is_err());
        for e in [RefError::Control(3), RefError::Uppercase("X".into())] {
            assert!(e.to_string().starts_with("the "));
        }
    }
}
