//! What to write, decided from flags alone: the registries, the mirror
//! targets, and the text of each `hosts.toml`. Nothing here touches the disk,
//! so the golden tests can pin every byte.
//!
//! URLs are parsed by hand for the narrow shapes containerd accepts here
//! (`http(s)://host[:port][/path]`), so that each refusal can say exactly
//! what is wrong and how to write it instead.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use toml::{Table, Value};

/// The first line of every `hosts.toml` reflektor writes. Cleanup without a
/// backup removes exactly the files that start with it.
pub const MARKER: &str = "# Written by reflektor; restored by 'reflektor cleanup'.";

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
    #[error(
        "{input:?} is not a duration; expected a positive Go duration such as \"200ms\", \"1s\" \
         or \"1m30s\" (units ns, us, ms, s, m, h)"
    )]
    Duration { input: String },
    #[error(
        "{input:?} is zero; containerd reads a zero dial_timeout as no timeout, so an \
         unreachable mirror would stall pulls. Fix: use a positive duration such as \"200ms\""
    )]
    ZeroDuration { input: String },
}

/// Why the flags, each valid alone, do not make a configuration together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "--mirror-targets is empty; expected one or more URLs such as http://127.0.0.1:30020. \
         Fix: set --mirror-targets (or MIRROR_TARGETS) to the addresses reflektor serves on"
    )]
    NoTargets,
    #[error(
        "--mirror-targets lists {first} and {second}, the same mirror; containerd would try it \
         twice. Fix: list each mirror target once"
    )]
    DuplicateTarget { first: String, second: String },
    #[error(
        "--mirrored-registries lists \"_default\" or \"*\" more than once; both mean every \
         registry. Fix: list it once"
    )]
    DuplicateDefault,
    #[error(
        "--mirrored-registries lists {first} and {second}, which both go to the directory \
         {dir:?}. Fix: list each registry once"
    )]
    DuplicateRegistry {
        first: String,
        second: String,
        dir: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
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
struct HttpUrl {
    scheme: Scheme,
    /// `host`, `host:port` or `[v6]:port`, as given.
    authority: String,
    /// Empty, or `/segment/…` without a trailing slash.
    path: String,
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
    fn parse(input: &str, example: &'static str) -> Result<Self, ValueError> {
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
    fn identity(&self) -> String {
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
pub enum Registry {
    /// `_default` or `*`: every registry that has no directory of its own.
    Default,
    /// `http(s)://host[:port]`; the scheme is how containerd reaches the
    /// registry itself when no mirror answers.
    Url(String),
}

impl FromStr for Registry {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input == DEFAULT_DIR || input == "*" {
            return Ok(Registry::Default);
        }
        let url = HttpUrl::parse(input, "https://docker.io")?;
        if !url.path.is_empty() {
            return Err(ValueError::RegistryPath {
                input: input.to_owned(),
                path: url.path,
            });
        }
        Ok(Registry::Url(url.to_string()))
    }
}

impl Registry {
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

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Registry::Default => f.write_str(DEFAULT_DIR),
            Registry::Url(url) => f.write_str(url),
        }
    }
}

impl Registry {
    /// The directory under the config path: the registry's host as image
    /// references spell it, port included, or `_default`.
    pub fn dir(&self) -> &str {
        match self {
            Registry::Default => DEFAULT_DIR,
            Registry::Url(url) => url.split_once("://").map_or(url.as_str(), |(_, a)| a),
        }
    }

    /// The directories containerd tries for this registry, in its order:
    /// `host_port_` before `host:port` (see `hostPaths` in containerd's
    /// `remotes/docker/config`). The first one that exists is the registry's
    /// configuration; `_default` is only used when none does.
    pub fn candidate_dirs(&self) -> Vec<String> {
        let dir = self.dir();
        match dir.rfind(':') {
            Some(i) if i > 0 && self != &Registry::Default => {
                vec![format!("{}_{}_", &dir[..i], &dir[i + 1..]), dir.to_owned()]
            }
            _ => vec![dir.to_owned()],
        }
    }

    /// The `server` line: the upstream containerd falls back to. Docker Hub
    /// images are named `docker.io/…` but served by `registry-1.docker.io`;
    /// `_default` has none, so containerd uses each image's own host.
    fn server(&self) -> Option<String> {
        match self {
            Registry::Default => None,
            Registry::Url(url) if url == "https://docker.io" => {
                Some("https://registry-1.docker.io".to_owned())
            }
            Registry::Url(url) => Some(url.clone()),
        }
    }
}

/// One value of `--mirror-targets`: where containerd should try first.
/// A path is allowed (a reflektor behind a path-routing proxy); containerd
/// appends `/v2` to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorTarget(HttpUrl);

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

/// `--dial-timeout`: a Go duration, because containerd parses it with
/// `time.ParseDuration`, and a value it cannot parse makes it ignore the
/// whole `hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTimeout(String);

impl FromStr for DialTimeout {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = || ValueError::Duration {
            input: input.to_owned(),
        };
        let mut rest = input;
        let mut nonzero = false;
        if rest.is_empty() {
            return Err(invalid());
        }
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .ok_or_else(invalid)?;
            let number = &rest[..number_len];
            let digits_ok = number.matches('.').count() <= 1 && number.chars().any(|c| c != '.');
            if !digits_ok {
                return Err(invalid());
            }
            nonzero |= number.chars().any(|c| ('1'..='9').contains(&c));
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            if !matches!(
                &rest[..unit_len],
                "ns" | "us" | "µs" | "μs" | "ms" | "s" | "m" | "h"
            ) {
                return Err(invalid());
            }
            rest = &rest[unit_len..];
        }
        if !nonzero {
            return Err(ValueError::ZeroDuration {
                input: input.to_owned(),
            });
        }
        Ok(DialTimeout(input.to_owned()))
    }
}

impl fmt::Display for DialTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The flags as given, before they are checked against each other.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    /// Empty means every registry, through `_default`.
    pub registries: Vec<Registry>,
    pub targets: Vec<MirrorTarget>,
    /// Whether mirrors may resolve tags to digests (`resolve` capability).
    pub resolve_tags: bool,
    /// Keep the existing configuration in effect, after ours.
    pub prepend_existing: bool,
    pub dial_timeout: DialTimeout,
}

/// A checked request: at least one target, no registry or target twice.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    registries: Vec<Registry>,
    targets: Vec<MirrorTarget>,
    resolve_tags: bool,
    prepend_existing: bool,
    dial_timeout: DialTimeout,
}

impl MirrorRequest {
    pub fn validate(self) -> Result<MirrorConfig, ConfigError> {
        if self.targets.is_empty() {
            return Err(ConfigError::NoTargets);
        }
        for (i, target) in self.targets.iter().enumerate() {
            if let Some(first) = self.targets[..i]
                .iter()
                .find(|t| t.0.identity() == target.0.identity())
            {
                return Err(ConfigError::DuplicateTarget {
                    first: first.to_string(),
                    second: target.to_string(),
                });
            }
        }
        let mut registries = self.registries;
        if registries.is_empty() {
            registries.push(Registry::Default);
        }
        for (i, registry) in registries.iter().enumerate() {
            if let Some(first) = registries[..i].iter().find(|r| r.dir() == registry.dir()) {
                if registry == &Registry::Default {
                    return Err(ConfigError::DuplicateDefault);
                }
                return Err(ConfigError::DuplicateRegistry {
                    first: first.to_string(),
                    second: registry.to_string(),
                    dir: registry.dir().to_owned(),
                });
            }
        }
        Ok(MirrorConfig {
            registries,
            targets: self.targets,
            resolve_tags: self.resolve_tags,
            prepend_existing: self.prepend_existing,
            dial_timeout: self.dial_timeout,
        })
    }
}

/// What an existing `hosts.toml` had in effect, to be kept after our hosts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Existing {
    /// Top-level settings (`server`, `ca`, `skip_verify`, `[header]`, …):
    /// they configure the upstream, which we do not change.
    pub root: Table,
    /// `[host."…"]` tables in file order, which is containerd's order.
    pub hosts: Vec<(String, Value)>,
}

impl Existing {
    /// Reads a `hosts.toml` the way containerd does, keeping host order.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut root: Table = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let Some(host) = root.remove("host") else {
            return Ok(Existing {
                root,
                hosts: Vec::new(),
            });
        };
        let Value::Table(mut host) = host else {
            return Err("`host` is not a table".to_owned());
        };
        // toml::Table sorts keys; the spans of the raw parse give file order.
        let document = toml::de::DeTable::parse(text).map_err(|e| e.message().to_owned())?;
        let mut order: Vec<(usize, String)> = document
            .get_ref()
            .iter()
            .filter(|(key, _)| key.get_ref().as_ref() == "host")
            .filter_map(|(_, value)| match value.get_ref() {
                toml::de::DeValue::Table(hosts) => Some(hosts),
                _ => None,
            })
            .flat_map(|hosts| hosts.keys())
            .map(|key| (key.span().start, key.get_ref().to_string()))
            .collect();
        order.sort();
        let mut hosts = Vec::new();
        for (_, name) in order {
            let value = host.remove(&name).expect("both parses see the same keys");
            if !value.is_table() {
                return Err(format!("host.{name:?} is not a table"));
            }
            hosts.push((name, value));
        }
        Ok(Existing { root, hosts })
    }

    /// What containerd uses for a directory with no `hosts.toml`: Docker's
    /// certificate layout, `*.crt` as CAs and `*.cert` (with `*.key`) as
    /// client pairs, for the registry itself. `names` are the directory's
    /// file names.
    pub fn from_cert_files(names: &[String]) -> Self {
        let mut names = names.to_vec();
        names.sort();
        let ca: Vec<Value> = names
            .iter()
            .filter(|n| n.ends_with(".crt"))
            .map(|n| Value::String(n.clone()))
            .collect();
        let client: Vec<Value> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".cert"))
            .map(|stem| {
                let key = format!("{stem}.key");
                let key = if names.contains(&key) {
                    key
                } else {
                    String::new()
                };
                Value::Array(vec![
                    Value::String(format!("{stem}.cert")),
                    Value::String(key),
                ])
            })
            .collect();
        let mut root = Table::new();
        if !ca.is_empty() {
            root.insert("ca".to_owned(), Value::Array(ca));
        }
        if !client.is_empty() {
            root.insert("client".to_owned(), Value::Array(client));
        }
        Existing {
            root,
            hosts: Vec::new(),
        }
    }
}

/// One rendered `hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    pub text: String,
    /// The upstream containerd falls back to; `None` for the image's own
    /// registry.
    pub server: Option<String>,
    /// Our hosts.
    pub targets: usize,
    /// Existing hosts kept after ours.
    pub kept_hosts: usize,
    /// Existing hosts dropped because they are one of our targets.
    pub dropped_hosts: Vec<String>,
}

impl MirrorConfig {
    /// The registries to write, `_default` standing for "every registry".
    pub fn registries(&self) -> &[Registry] {
        &self.registries
    }

    pub fn prepend_existing(&self) -> bool {
        self.prepend_existing
    }

    /// The `hosts.toml` for one registry: our targets in order, then, with
    /// `--prepend-existing`, what the original file had in effect.
    /// `existing_source` names where that came from, for the comment.
    pub fn render(&self, registry: &Registry, existing: Option<(&Existing, &str)>) -> HostsFile {
        let mut text = format!("{MARKER}\n");
        let mut root = Table::new();
        if let Some(server) = registry.server() {
            root.insert("server".to_owned(), Value::String(server));
        }
        if let Some((existing, source)) = existing {
            text.push_str(&format!(
                "# reflektor's hosts come first; the rest is kept from {source}.\n"
            ));
            root.extend(existing.root.clone());
        }
        // `server` first for people; the rest as the TOML writer orders it.
        let server = root.remove("server");
        if let Some(server) = &server {
            text.push_str(&format!("server = {server}\n"));
        }
        if !root.is_empty() {
            text.push_str(&toml::to_string(&root).expect("a parsed TOML table serialises"));
        }

        let capabilities = if self.resolve_tags {
            r#"["pull", "resolve"]"#
        } else {
            r#"["pull"]"#
        };
        for target in &self.targets {
            text.push_str(&format!(
                "\n[host.\"{target}\"]\ncapabilities = {capabilities}\ndial_timeout = \"{}\"\n",
                self.dial_timeout
            ));
        }

        let mut kept_hosts = 0;
        let mut dropped_hosts = Vec::new();
        for (name, value) in existing.map_or(&[][..], |(e, _)| &e.hosts) {
            if self.is_target(name) {
                dropped_hosts.push(name.clone());
                continue;
            }
            let mut host = Table::new();
            host.insert(name.clone(), value.clone());
            let mut wrapper = Table::new();
            wrapper.insert("host".to_owned(), Value::Table(host));
            text.push('\n');
            text.push_str(&toml::to_string(&wrapper).expect("a parsed TOML table serialises"));
            kept_hosts += 1;
        }
        HostsFile {
            text,
            server: server.map(|s| match s {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            targets: self.targets.len(),
            kept_hosts,
            dropped_hosts,
        }
    }

    /// Whether an existing `[host."…"]` key is one of our targets, read the
    /// way containerd reads it (no scheme means https).
    fn is_target(&self, key: &str) -> bool {
        let with_scheme = if key.starts_with("http") {
            key.to_owned()
        } else {
            format!("https://{key}")
        };
        HttpUrl::parse(&with_scheme, "").is_ok_and(|url| {
            self.targets
                .iter()
                .any(|t| t.0.identity() == url.identity())
        })
    }
}
