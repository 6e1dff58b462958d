//! What to write, decided from the checked values alone: the text of each
//! `hosts.toml`, and what an existing one had in effect. Nothing here
//! touches the disk, so the golden tests can pin every byte.

use toml::{Table, Value};

use crate::auth::BasicAuth;

use super::values::{DialTimeout, HttpUrl, MirrorTarget, MirroredRegistry};

/// The first line of every `hosts.toml` reflektor writes. Cleanup without a
/// backup removes exactly the files that start with it.
pub const MARKER: &str = "# Written by reflektor; restored by 'reflektor cleanup'.";

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

/// The flags as given, before they are checked against each other.
#[derive(Debug, Clone)]
pub struct MirrorRequest {
    /// Empty means every registry, through `_default`.
    pub registries: Vec<MirroredRegistry>,
    pub targets: Vec<MirrorTarget>,
    /// Whether mirrors may resolve tags to digests (`resolve` capability).
    pub resolve_tags: bool,
    /// Keep the existing configuration in effect, after ours.
    pub prepend_existing: bool,
    pub dial_timeout: DialTimeout,
    /// Credentials the mirror requires, sent by containerd as a header.
    pub auth: Option<BasicAuth>,
}

/// A checked request: at least one target, no registry or target twice.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    registries: Vec<MirroredRegistry>,
    targets: Vec<MirrorTarget>,
    resolve_tags: bool,
    prepend_existing: bool,
    dial_timeout: DialTimeout,
    auth: Option<BasicAuth>,
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
            registries.push(MirroredRegistry::Default);
        }
        for (i, registry) in registries.iter().enumerate() {
            if let Some(first) = registries[..i].iter().find(|r| r.dir() == registry.dir()) {
                if registry == &MirroredRegistry::Default {
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
            auth: self.auth,
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
    pub fn registries(&self) -> &[MirroredRegistry] {
        &self.registries
    }

    pub fn prepend_existing(&self) -> bool {
        self.prepend_existing
    }

    /// The `hosts.toml` for one registry: our targets in order, then, with
    /// `--prepend-existing`, what the original file had in effect.
    /// `existing_source` names where that came from, for the comment.
    pub fn render(
        &self,
        registry: &MirroredRegistry,
        existing: Option<(&Existing, &str)>,
    ) -> HostsFile {
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
            // The header table Spegel writes: the value is base64, so it
            // needs no escaping.
            if let Some(auth) = &self.auth {
                text.push_str(&format!(
                    "[host.\"{target}\".header]\nAuthorization = \"{}\"\n",
                    auth.header_value()
                ));
            }
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
