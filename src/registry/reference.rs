//! `HOST[:PORT]/REPOSITORY[:TAG][@DIGEST]`, the image reference a user types, checked against
//! the distribution grammar (lower-case path components, tags of word characters, sha256
//! digests) and turned into registry URLs.
//!
//! The registry host is required: a bare `ubuntu:22.04` is refused with the form to write
//! instead, since guessing Docker Hub would send credentials and traffic somewhere the user
//! did not name. Plain HTTP is used only for loopback hosts and hosts the caller lists (the
//! `--plain-http HOST[:PORT]` option); every other registry is spoken to over HTTPS.

use std::fmt;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// `HOST[:PORT]`, as typed (an IPv6 address in brackets).
    pub host: String,
    /// The repository path, e.g. `library/ubuntu`.
    pub repository: String,
    /// The tag, if one was given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:<64 hex>`), if one was given; it wins over the tag.
    pub digest: Option<String>,
}

/// Why a reference was refused; the message shows the form expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {text:?}: {why} (expected HOST[:PORT]/REPOSITORY[:TAG|@DIGEST], e.g. registry.example.com/team/app:v1)")]
pub struct ReferenceError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

/// Longest repository path the distribution grammar allows.
const MAX_REPOSITORY: usize = 255;
/// Longest tag.
const MAX_TAG: usize = 128;

impl ImageReference {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let fail = |why: &str| ReferenceError {
            text: text.chars().take(300).collect(),
            why: why.to_string(),
        };
        let (host, rest) = text
            .split_once('/')
            .ok_or_else(|| fail("no registry host: the reference has no '/'"))?;
        if !looks_like_host(host) {
            return Err(fail(&format!(
                "{host:?} is not a registry host (a host has a '.' or a ':PORT', or is \
                 localhost; for Docker Hub write registry-1.docker.io/library/NAME)"
            )));
        }
        check_host(host).map_err(|why| fail(&why))?;
        let (name, digest) = match rest.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).map_err(|why| fail(&why))?;
                (name, Some(digest.to_string()))
            }
            None => (rest, None),
        };
        let (repository, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) => {
                check_tag(tag).map_err(|why| fail(&why))?;
                (repo, Some(tag.to_string()))
            }
            None => (name, None),
        };
        check_repository(repository).map_err(|why| fail(&why))?;
        Ok(ImageReference {
            host: host.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// What the manifest is fetched by: the digest when given, else the tag, else `latest`.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether the host is a loopback name or address (`localhost`, `127.x.y.z`, `[::1]`).
    pub fn is_loopback(&self) -> bool {
        let name = host_name(&self.host);
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// `http` for loopback hosts and hosts listed in `plain_http` (`HOST[:PORT]` as typed),
    /// `https` otherwise.
    pub fn scheme(&self, plain_http: &[String]) -> &'static str {
        if self.is_loopback()
            || plain_http
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&self.host))
        {
            "http"
        } else {
            "https"
        }
    }

    /// `SCHEME://HOST/v2/REPOSITORY`, the base of the repository's registry API.
    pub fn repository_url(&self, plain_http: &[String]) -> String {
        format!(
            "{}://{}/v2/{}",
            self.scheme(plain_http),
            self.host,
            self.repository
        )
    }

    /// The `repoBlobUrl` of a `config.v1.json`: `SCHEME://HOST/v2/REPOSITORY/blobs`.
    pub fn repo_blob_url(&self, plain_http: &[String]) -> String {
        format!("{}/blobs", self.repository_url(plain_http))
    }

    /// The URL of the manifest this reference names (or of one found by `digest` in it).
    pub fn manifest_url(&self, plain_http: &[String], reference: &str) -> String {
        format!("{}/manifests/{reference}", self.repository_url(plain_http))
    }

    /// The same image pinned to `digest` (what a LUN records once it resolved the tag).
    pub fn pinned(&self, digest: &str) -> ImageReference {
        ImageReference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The host without its port (and an IPv6 address without brackets).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// The distribution rule for telling a registry host from a repository's first component.
fn looks_like_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{host:?}: unclosed '['"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{addr:?} is not an IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match host.split_once(':') {
            Some((name, port)) => (Some(name), Some(port)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!("{name:?} is not a host name"));
        }
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{port:?} is not a port"));
        }
    }
    Ok(())
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("no repository".into());
    }
    if repo.len() > MAX_REPOSITORY {
        return Err(format!("the repository is longer than {MAX_REPOSITORY}"));
    }
    for component in repo.split('/') {
        if !repository_component_ok(component) {
            return Err(format!(
                "repository component {component:?}: lower-case letters and digits, \
                 separated by '.', '_', '__' or dashes"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn repository_component_ok(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG
        && word(tag.as_bytes()[0])
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?}: up to {MAX_TAG} letters, digits, '_', '.' and '-', not starting \
             with '.' or '-'"
        ))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    match digest.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "digest {digest:?} is not sha256:<64 lower-case hex>"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9";

    fn r(text: &str) -> ImageReference {
        ImageReference::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_forms_a_user_types() {
        let a = r("127.0.0.1:5000/demo/app:v1");
        assert_eq!(
            (a.host.as_str(), a.repository.as_str(), a.tag.as_deref()),
            ("127.0.0.1:5000", "demo/app", Some("v1"))
        );
        assert_eq!(a.manifest_ref(), "v1");
        let b = r("registry.example.com/team/sub/app");
        assert_eq!((b.tag.as_deref(), b.manifest_ref()), (None, "latest"));
        let c = r(&format!("localhost:5000/app:v2@{D}"));
        assert_eq!(c.manifest_ref(), D, "the digest wins over the tag");
        assert_eq!(c.to_string(), format!("localhost:5000/app:v2@{D}"));
        let d = r("[::1]:5000/a.b_c__d--e/f");
        assert_eq!(d.repository, "a.b_c__d--e/f");
        assert_eq!(r("localhost/app").host, "localhost");
    }

    #[test]
    fn plain_http_only_for_loopback_and_named_hosts() {
        let none: &[String] = &[];
        for (text, scheme) in [
            ("127.0.0.1:5000/app", "http"),
            ("localhost:5000/app", "http"),
            ("[::1]:5000/app", "http"),
            ("127.9.9.9/app", "http"),
            ("10.0.0.2:5000/app", "https"),
            ("registry.example.com/app", "https"),
        ] {
            assert_eq!(r(text).scheme(none), scheme, "{text}");
        }
        let mirror = r("mirror.lan:5000/team/app:v1");
        assert_eq!(mirror.scheme(&["mirror.lan:5000".into()]), "http");
        assert_eq!(
            mirror.scheme(&["mirror.lan".into()]),
            "https",
            "the port is part of the name"
        );
        assert_eq!(
            mirror.repo_blob_url(&["MIRROR.lan:5000".into()]),
            "http://mirror.lan:5000/v2/team/app/blobs"
        );
        assert_eq!(
            mirror.manifest_url(none, mirror.manifest_ref()),
            "https://mirror.lan:5000/v2/team/app/manifests/v1"
        );
        assert_eq!(mirror.pinned(D).manifest_ref(), D);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        for (text, part) in [
            ("ubuntu:22.04", "no '/'"),
            ("library/ubuntu", "not a registry host"),
            ("registry.example.com/", "no repository"),
            ("registry.example.com/App", "\"App\""),
            ("registry.example.com/a//b", "component \"\""),
            ("registry.example.com/a-/b", "component \"a-\""),
            ("registry.example.com/a:", "tag \"\""),
            ("registry.example.com/a:.x", "tag \".x\""),
            ("registry.example.com/a@sha256:abc", "digest"),
            ("registry.example.com/a@md5:00", "digest"),
            ("host.example:99999/a", "not a port"),
            ("ho_st.example/a", "not a host name"),
            ("[zz]:5000/a", "not an IPv6 address"),
        ] {
            let e = ImageReference::parse(text).unwrap_err().to_string();
            assert!(
                e.contains(part) && e.contains("HOST[:PORT]/REPOSITORY"),
                "{text}: {e}"
            );
        }
        let long_tag = format!("registry.example.com/a:{}", "t".repeat(129));
        assert!(ImageReference::parse(&long_tag).is_err());
    }
}
