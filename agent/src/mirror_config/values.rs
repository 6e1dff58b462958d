//! The values of `configuration`'s flags, each checked on its own: the
//! registries to mirror, the mirror targets and the dial timeout. The
//! registry command reads `--mirrored-registries` through the same type, so
//! both containers of a DaemonSet read `MIRRORED_REGISTRIES` alike.
//!
//! URLs are parsed by hand for the narrow shapes containerd accepts here
//! (`http(s)://host[:port][/path]`), so that each refusal can say exactly
//! what is wrong and how to write it instead.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::duration::{DurationError, GoDuration};
use crate::oci::RegistryHost;

/// The directory containerd falls back to for a registry without its own.
pub const DEFAULT_DIR: &str = "_default";

/// Why a `--mirrored-registries`, `--mirror-targets` or `--dial-timeout`
/// value is refused. clap prefixes the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("the value is empty; expected a URL such as \"{example}\"")]
    Empty { example: &'static str },
    #[error("{input:?} contains whitespace or a control character; expected a bare URL")]
    Whitespace { input: String },
    #[error("{input:?} has no scheme; expected a URL such as \"{suggestion}\"")]
    NoScheme { input: String, suggestion: String },
    #[error(
        "{input:?} has the scheme {scheme:?}; containerd only speaks http and https. Fix: write \
         it as http://… or https://…"
    )]
    Scheme { input: String, scheme: String },
    #[error(
        "{input:?} has a query or fragment; containerd adds its own query (?ns=…) to mirror \
         requests. Fix: drop everything from the ? or #"
    )]
    Query { input: String },
    #[error(
        "{input:?} has user information before @; credentials do not belong in hosts.toml \
         URLs. Fix: drop the user@ part"
    )]
    Userinfo { input: String },
    #[error("{input:?} has no host; expected scheme://host[:port]")]
    NoHost { input: String },
    #[error(
        "{input:?} has an invalid host {host:?}; expected a DNS name, an IPv4 address or an IPv6 \
         address in brackets such as [fd00::1]"
    )]
    Host { input: String, host: String },
    #[error("{input:?} has an invalid port {port:?}; expected a number from 1 to 65535")]
    Port { input: String, port: String },
    #[error(
        "{input:?} has the path {path:?}, with an empty, \".\" or \"..\" segment or a character \
         that needs escaping; containerd would rewrite it. Fix: write the path plainly, such as \
         /some/prefix"
    )]
    Path { input: String, path: String },
    #[error(
        "{input:?} has the path {path:?}; a registry is named by scheme and host only, because \
         containerd picks the hosts.toml directory by the image's host. Fix: drop the path"
    )]
    RegistryPath { input: String, path: String },
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error(
        "{input:?} is zero; containerd reads a zero dial_timeout as no timeout, so an \
         unreachable mirror would stall pulls. Fix: use a positive duration such as \"200ms\""
    )]
    ZeroDuration { input: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `http(s)://authority[/path]`, checked and with no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HttpUrl {
    pub(super) scheme: Scheme,
    /// `host`, `host:port` or `[v6]:port`, as given.
    pub(super) authority: String,
    /// Empty, or `/segment/…` without a trailing slash.
    pub(super) path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority,
            self.path
        )
    }
}

impl HttpUrl {
    /// `example` is what an empty value is told to look like.
    pub(super) fn parse(input: &str, example: &'static str) -> Result<Self, ValueError> {
        if input.is_empty() {
            return Err(ValueError::Empty { example });
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValueError::Whitespace {
                input: input.to_owned(),
            });
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            let scheme = example.split("://").next().unwrap_or("https");
            return Err(ValueError::NoScheme {
                input: input.to_owned(),
                suggestion: format!("{scheme}://{}", input.trim_start_matches('/')),
            });
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => {
                return Err(ValueError::Scheme {
                    input: input.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
        };
        if rest.contains(['?', '#']) {
            return Err(ValueError::Query {
                input: input.to_owned(),
            });
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(ValueError::Userinfo {
                input: input.to_owned(),
            });
        }
        check_authority(input, authority)?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let plain = path.split('/').skip(1).all(|segment| {
            !matches!(segment, "" | "." | "..")
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c))
        });
        if !plain {
            return Err(ValueError::Path {
                input: input.to_owned(),
                path: path.to_owned(),
            });
        }
        Ok(Self {
            scheme,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The form two URLs are compared in: hosts are case-insensitive.
    pub(super) fn identity(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.as_str(),
            self.authority.to_ascii_lowercase(),
            self.path
        )
    }
}

fn check_authority(input: &str, authority: &str) -> Result<(), ValueError> {
    if authority.is_empty() {
        return Err(ValueError::NoHost {
            input: input.to_owned(),
        });
    }
    let bad_host = |host: &str| ValueError::Host {
        input: input.to_owned(),
        host: host.to_owned(),
    };
    let port = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed
            .split_once(']')
            .ok_or_else(|| bad_host(authority))?;
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(bad_host(&format!("[{v6}]")));
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| bad_host(authority))?),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let name_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with(['-', '.'])
            && !host.ends_with('-');
        // More than one colon is an IPv6 address without its brackets.
        if !name_ok || port.is_some_and(|p| p.contains(':')) {
            return Err(bad_host(authority));
        }
        port
    };
    if let Some(port) = port {
        let valid =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(ValueError::Port {
                input: input.to_owned(),
                port: port.to_owned(),
            });
        }
    }
    Ok(())
}

/// A registry to mirror, one value of `--mirrored-registries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirroredRegistry {
    /// `_default` or `*`: every registry that has no directory of its own.
    Default,
    /// `http(s)://host[:port]`; the scheme is how containerd reaches the
    /// registry itself when no mirror answers.
    Url(String),
}

impl FromStr for MirroredRegistry {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input == DEFAULT_DIR || input == "*" {
            return Ok(MirroredRegistry::Default);
        }
        let url = HttpUrl::parse(input, "https://docker.io")?;
        if !url.path.is_empty() {
            return Err(ValueError::RegistryPath {
                input: input.to_owned(),
                path: url.path,
            });
        }
        // The registry filter compares hosts as image references name them.
        if url.authority.parse::<RegistryHost>().is_err() {
            return Err(ValueError::Host {
                input: input.to_owned(),
                host: url.authority,
            });
        }
        Ok(MirroredRegistry::Url(url.to_string()))
    }
}

impl MirroredRegistry {
    /// One comma-separated item of `--mirrored-registries`. An empty item is
    /// no registry, because `MIRRORED_REGISTRIES=""` is how a manifest says
    /// "none", which means every registry.
    pub fn parse_item(input: &str) -> Result<Option<Self>, ValueError> {
        match input {
            "" => Ok(None),
            _ => input.parse().map(Some),
        }
    }
}

impl MirroredRegistry {
    /// The host that image references from this registry start with, which
    /// the registry's filter matches; `None` for `_default`, every registry.
    pub fn host(&self) -> Option<RegistryHost> {
        match self {
            MirroredRegistry::Default => None,
            MirroredRegistry::Url(_) => self.dir().parse().ok(),
        }
    }
}

impl fmt::Display for MirroredRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MirroredRegistry::Default => f.write_str(DEFAULT_DIR),
            MirroredRegistry::Url(url) => f.write_str(url),
        }
    }
}

impl MirroredRegistry {
    /// The directory under the config path: the registry's host as image
    /// references spell it, port included, or `_default`.
    pub fn dir(&self) -> &str {
        match self {
            MirroredRegistry::Default => DEFAULT_DIR,
            MirroredRegistry::Url(url) => url.split_once("://").map_or(url.as_str(), |(_, a)| a),
        }
    }

    /// The directories containerd tries for this registry, in its order:
    /// `host_port_` before `host:port` (see `hostPaths` in containerd's
    /// `remotes/docker/config`). The first one that exists is the registry's
    /// configuration; `_default` is only used when none does.
    pub fn candidate_dirs(&self) -> Vec<String> {
        let dir = self.dir();
        match dir.rfind(':') {
            Some(i) if i > 0 && self != &MirroredRegistry::Default => {
                vec![format!("{}_{}_", &dir[..i], &dir[i + 1..]), dir.to_owned()]
            }
            _ => vec![dir.to_owned()],
        }
    }

    /// The `server` line: the upstream containerd falls back to. Docker Hub
    /// images are named `docker.io/…` but served by `registry-1.docker.io`;
    /// `_default` has none, so containerd uses each image's own host.
    pub(super) fn server(&self) -> Option<String> {
        match self {
            MirroredRegistry::Default => None,
            MirroredRegistry::Url(url) if url == "https://docker.io" => {
                Some("https://registry-1.docker.io".to_owned())
            }
            MirroredRegistry::Url(url) => Some(url.clone()),
        }
    }
}

/// One value of `--mirror-targets`: where containerd should try first.
/// A path is allowed (a reflektor behind a path-routing proxy); containerd
/// appends `/v2` to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget(pub(super) HttpUrl);

impl FromStr for MirrorTarget {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        HttpUrl::parse(input, "http://127.0.0.1:30020").map(MirrorTarget)
    }
}

impl fmt::Display for MirrorTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `--dial-timeout`: a Go duration that is not zero, because containerd
/// reads a zero `dial_timeout` as no timeout at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTimeout(GoDuration);

impl FromStr for DialTimeout {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let duration: GoDuration = input.parse()?;
        if duration.is_zero() {
            return Err(ValueError::ZeroDuration {
                input: input.to_owned(),
            });
        }
        Ok(DialTimeout(duration))
    }
}

impl fmt::Display for DialTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
