//! Registry references: `HOST[:PORT]/PATH/TO/REPO:TAG` or `...@sha256:HEX` (an optional
//! `oci://` prefix is accepted), checked against the OCI distribution grammar.
//!
//! Unlike Docker, tuk never guesses: the registry host is required (no implicit `docker.io`),
//! and so is a tag or a digest (no implicit `latest`), because a reference names a signed
//! artifact that someone will deploy.

use std::fmt;

use crate::RegistryError;

/// The longest repository name the distribution spec guarantees to be accepted.
const MAX_REPOSITORY: usize = 255;
const MAX_TAG: usize = 128;

/// A parsed, validated reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses `input`; see the module documentation for the accepted forms.
    pub fn parse(input: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let s = input.strip_prefix("oci://").unwrap_or(input);
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.contains("://") {
            return Err(bad(
                "only the oci:// prefix is accepted (http or https is chosen from the host: \
                 http for loopback, https otherwise; --insecure forces http)",
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace or control characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                check_digest(d).map_err(|r| bad(&r))?;
                (rest, Some(d.to_owned()))
            }
            None => (s, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            bad("it has no registry host: write HOST[:PORT]/REPOSITORY:TAG, e.g. 127.0.0.1:5000/tuk/hello:1.0.0")
        })?;
        check_host(registry).map_err(|r| bad(&r))?;
        // A tag is after the last ':' of the path (the path itself never contains ':').
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) => {
                check_tag(tag).map_err(|r| bad(&r))?;
                (repo, Some(tag.to_owned()))
            }
            None => (path, None),
        };
        check_repository(repository).map_err(|r| bad(&r))?;
        if tag.is_none() && digest.is_none() {
            return Err(bad(
                "it has neither a tag nor a digest: add one, e.g. :1.0.0 or @sha256:<64 hex>",
            ));
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// `host[:port]` as written.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `tuk/hello`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// `sha256:<hex>` when the reference pins a digest.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .expect("a parsed reference has a tag or a digest")
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Reference, RegistryError> {
        check_tag(tag).map_err(|reason| RegistryError::InvalidReference {
            input: tag.to_owned(),
            reason,
        })?;
        Ok(Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// Whether the host is a loopback name or address (http is used for those).
    pub fn is_loopback(&self) -> bool {
        let host = host_without_port(&self.registry);
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn host_without_port(registry: &str) -> &str {
    if let Some(end) = registry.strip_prefix('[').and_then(|r| r.find(']')) {
        return &registry[..end + 2];
    }
    registry.split(':').next().unwrap_or(registry)
}

/// `sha256:` and 64 lowercase hex digits (the only algorithm tuk accepts).
pub(crate) fn check_digest(d: &str) -> Result<(), String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!("digest `{d}` is not sha256:<64 hex digits>"));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "digest `{d}` is not sha256:<64 lowercase hex digits>"
        ));
    }
    Ok(())
}

fn check_host(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry `{registry}`: unclosed '['"))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("registry `{registry}`: `{addr}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                format!("registry `{registry}`: expected :PORT after the IPv6 address")
            })?),
        };
        (None, port)
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "registry host `{host}` is not a host name or address"
            ));
        }
        // Docker's rule for telling a registry from a repository's first component; tuk
        // requires the registry, so a first component that cannot be one is an error.
        if !host.contains('.') && port.is_none() && !host.eq_ignore_ascii_case("localhost") {
            return Err(format!(
                "`{host}` does not look like a registry host (no '.', no port, not localhost): \
                 write HOST[:PORT]/REPOSITORY:TAG"
            ));
        }
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !port.starts_with('+') => {}
            _ => return Err(format!("registry port `{port}` is not a number in 1-65535")),
        }
    }
    Ok(())
}

/// Path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by '/'.
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repo.len() > MAX_REPOSITORY {
        return Err(format!(
            "the repository name is longer than {MAX_REPOSITORY} characters"
        ));
    }
    for comp in repo.split('/') {
        if !component_ok(comp) {
            return Err(format!(
                "repository component `{comp}` must be lowercase letters and digits, \
                 separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
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
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        match &c[start..i] {
            "." | "_" | "__" => {}
            run if run.bytes().all(|x| x == b'-') => {}
            _ => return false,
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{tag}` must be 1-128 of A-Z a-z 0-9 _ . - and not start with '.' or '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_the_usual_forms() {
        let r = Reference::parse("127.0.0.1:5000/tuk/hello:1.0.0").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "tuk/hello");
        assert_eq!(r.tag(), Some("1.0.0"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.manifest_reference(), "1.0.0");
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), "127.0.0.1:5000/tuk/hello:1.0.0");

        let r = Reference::parse("oci://ghcr.io/org/sub/hello-world_x.y:v2").unwrap();
        assert_eq!(r.registry(), "ghcr.io");
        assert_eq!(r.repository(), "org/sub/hello-world_x.y");
        assert!(!r.is_loopback());

        let r = Reference::parse(&format!("localhost/hello@{D}")).unwrap();
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.manifest_reference(), D);
        assert!(r.is_loopback());

        let r = Reference::parse(&format!("[::1]:5000/a/b:t@{D}")).unwrap();
        assert_eq!(r.registry(), "[::1]:5000");
        assert_eq!(r.tag(), Some("t"));
        assert_eq!(r.manifest_reference(), D, "the digest wins over the tag");
        assert!(r.is_loopback());
        assert_eq!(r.to_string(), format!("[::1]:5000/a/b:t@{D}"));

        assert!(Reference::parse("registry.example.com/a__b/c---d/e.f:_x")
            .is_ok_and(|r| !r.is_loopback()));
        assert!(Reference::parse("localhost:5000/a:b").is_ok());
    }

    #[test]
    fn rejects_junk() {
        for bad in [
            "",
            "oci://",
            "hello:1.0",                           // no registry host
            "hello/world:1.0",                     // first component is not a host
            "127.0.0.1:5000/tuk/hello",            // no tag, no digest
            "127.0.0.1:5000/Tuk/hello:1",          // uppercase repository
            "127.0.0.1:5000/tuk//hello:1",         // empty component
            "127.0.0.1:5000/tuk/hello-:1",         // trailing separator
            "127.0.0.1:5000/tuk/he..llo:1",        // double dot
            "127.0.0.1:5000/tuk/he___llo:1",       // triple underscore
            "127.0.0.1:5000/:1",                   // empty repository
            "127.0.0.1:5000/tuk/hello:",           // empty tag
            "127.0.0.1:5000/tuk/hello:.x",         // tag starts with '.'
            "127.0.0.1:5000/tuk/hello:a/b",        // '/' in tag → ':' in path
            "127.0.0.1:5000/tuk/hello@sha256:abc", // short digest
            "127.0.0.1:5000/tuk/hello@md5:0123",   // other algorithm
            "127.0.0.1:99999/tuk/hello:1",         // port out of range
            "127.0.0.1:/tuk/hello:1",              // empty port
            "-bad.example/x:1",                    // label starts with '-'
            "[::1/x:1",                            // unclosed bracket
            "[zz]:5000/x:1",                       // not IPv6
            "http://127.0.0.1:5000/tuk/hello:1",   // scheme
            "127.0.0.1:5000/tuk/hel lo:1",         // whitespace
        ] {
            assert!(Reference::parse(bad).is_err(), "accepted {bad:?}");
        }
        let long_tag = format!("127.0.0.1:5000/x:{}", "a".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        let long_repo = format!("127.0.0.1:5000/{}:1", "a".repeat(256));
        assert!(Reference::parse(&long_repo).is_err());
        let upper = format!(
            "127.0.0.1:5000/x@{}",
            D.to_uppercase().replace("SHA256", "sha256")
        );
        assert!(Reference::parse(&upper).is_err(), "uppercase hex digest");
    }

    #[test]
    fn errors_say_what_to_write() {
        let e = Reference::parse("hello:1.0").unwrap_err().to_string();
        assert!(e.contains("HOST[:PORT]/REPOSITORY:TAG"), "{e}");
        let e = Reference::parse("127.0.0.1:5000/tuk/hello")
            .unwrap_err()
            .to_string();
        assert!(e.contains("add one"), "{e}");
    }

    #[test]
    fn derived_references() {
        let r = Reference::parse("127.0.0.1:5000/tuk/hello:1.0.0").unwrap();
        assert_eq!(r.with_digest(D).manifest_reference(), D);
        assert_eq!(
            r.with_tag("2.0").unwrap().to_string(),
            "127.0.0.1:5000/tuk/hello:2.0"
        );
        assert!(r.with_tag("bad tag").is_err());
    }
}
