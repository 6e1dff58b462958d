//! Repository names, tags and registry hosts, checked against the grammar of
//! the distribution spec before anything uses them.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use super::{Digest, DigestError};

/// The distribution spec's `<name>`: lowercase path components separated by
/// `/`, each `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`. No `..`, no
/// empty component, no percent escapes can pass.
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*";
    Regex::new(&format!("^{component}(?:/{component})*$")).expect("name grammar compiles")
});

static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").expect("tag grammar"));

/// A registry host as containerd writes it in image names: a DNS name, an
/// IPv4 address or a bracketed IPv6 address, with an optional port.
static REGISTRY: LazyLock<Regex> = LazyLock::new(|| {
    let label = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?";
    Regex::new(&format!(
        r"^(?:{label}(?:\.{label})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?$"
    ))
    .expect("registry grammar compiles")
});

/// Longest repository name we accept; Docker's reference library refuses
/// anything longer than 255 characters in a full reference.
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryHost(String);

/// What follows `/manifests/` in a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "repository name {0:?} is not valid; expected lowercase path components such as \
         \"library/nginx\" (letters, digits, and . _ __ - between them)"
    )]
    Name(String),
    #[error("repository name is {0} characters long; at most 255 are allowed")]
    TooLong(usize),
    #[error(
        "tag {0:?} is not valid; expected up to 128 letters, digits, '_', '.' or '-', not \
         starting with '.' or '-'"
    )]
    Tag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "registry {0:?} is not a host name; expected a host with an optional port such as \
     \"docker.io\", \"127.0.0.1:5000\" or \"[::1]:5000\""
)]
pub struct RegistryHostError(String);

fn shown(input: &str) -> String {
    input.chars().take(80).collect()
}

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(input.len()));
        }
        if !NAME.is_match(input) {
            return Err(NameError::Name(shown(input)));
        }
        Ok(Self(input.to_owned()))
    }
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if !TAG.is_match(input) {
            return Err(NameError::Tag(shown(input)));
        }
        Ok(Self(input.to_owned()))
    }
}

impl RegistryHost {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Docker's rule for telling a host from a first path component: it has a
    /// dot or a port, or it is `localhost`.
    pub fn looks_like_host(component: &str) -> bool {
        component.contains(['.', ':']) || component == "localhost"
    }
}

impl FromStr for RegistryHost {
    type Err = RegistryHostError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.len() > MAX_NAME_LEN || !REGISTRY.is_match(input) {
            return Err(RegistryHostError(shown(input)));
        }
        Ok(Self(input.to_owned()))
    }
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.contains(':') {
            Ok(Reference::Digest(input.parse()?))
        } else {
            Ok(Reference::Tag(input.parse()?))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => tag.fmt(f),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_distribution_grammar() {
        for good in [
            "nginx",
            "library/nginx",
            "a/b/c",
            "my-app",
            "my__app",
            "a.b_c--d/e",
        ] {
            assert!(good.parse::<Name>().is_ok(), "{good:?} refused");
        }
        for bad in [
            "", "/nginx", "nginx/", "a//b", "..", "a/../b", "a/./b", "Nginx", "a%2fb", "a b",
            "a\0b", "-a", "a-", "a..b", "a___b", "a/.b",
        ] {
            assert!(bad.parse::<Name>().is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            "a".repeat(256).parse::<Name>(),
            Err(NameError::TooLong(256))
        ));
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        for good in ["latest", "1.27", "v1.2.3-rc.1_x", &"a".repeat(128)] {
            assert!(good.parse::<Tag>().is_ok(), "{good:?} refused");
        }
        for bad in ["", ".hidden", "-x", "a/b", "a:b", &"a".repeat(129), "ü"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn registries_are_hosts_with_optional_ports() {
        for good in [
            "docker.io",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
            "ghcr.io",
        ] {
            assert!(good.parse::<RegistryHost>().is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "docker.io/x",
            "-bad.io",
            "a..b",
            "host:port",
            "[::1",
            "x:123456",
        ] {
            assert!(bad.parse::<RegistryHost>().is_err(), "{bad:?} accepted");
        }
        assert!(RegistryHost::looks_like_host("docker.io"));
        assert!(RegistryHost::looks_like_host("localhost"));
        assert!(!RegistryHost::looks_like_host("library"));
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!("1.27".parse(), Ok(Reference::Tag(_))));
        let digest = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(digest.parse(), Ok(Reference::Digest(_))));
        assert!("sha256:abc".parse::<Reference>().is_err());
    }
}
