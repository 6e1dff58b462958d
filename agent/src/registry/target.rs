//! What a `/v2/…` URL asks for. Parsed from the raw path, never a decoded
//! one: a name never needs a percent escape, so any `%` is refused before it
//! could smuggle a `/` or `..` past the grammar.

use crate::oci::{Digest, Name, Reference, RegistryHost};

use super::error::RegistryError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// From `?ns=`, as containerd sends it to mirrors, or from a host-like
    /// first path component, as people and skopeo send it.
    pub registry: Option<RegistryHost>,
    pub name: Name,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Manifest(Reference),
    Blob(Digest),
}

impl Target {
    /// `path` is everything after `/v2/`; `query` the raw query string.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Self, RegistryError> {
        if path.contains('%') {
            return Err(RegistryError::NameInvalid(
                "percent-encoded characters are not allowed in repository paths".to_owned(),
            ));
        }
        let manifests = path
            .rfind("/manifests/")
            .map(|i| (i, "/manifests/".len(), true));
        let blobs = path.rfind("/blobs/").map(|i| (i, "/blobs/".len(), false));
        let Some((at, skip, is_manifest)) = manifests.max(blobs) else {
            return Err(RegistryError::Unsupported(
                "only manifests and blobs can be pulled from this mirror".to_owned(),
            ));
        };
        let (repository, reference) = (&path[..at], &path[at + skip..]);
        let kind = if is_manifest {
            Kind::Manifest(reference.parse()?)
        } else {
            Kind::Blob(reference.parse()?)
        };
        let (registry, name) = match namespace(query)? {
            Some(registry) => (Some(registry), repository),
            None => match repository.split_once('/') {
                Some((host, rest)) if RegistryHost::looks_like_host(host) => {
                    (Some(host.parse()?), rest)
                }
                _ => (None, repository),
            },
        };
        Ok(Self {
            registry,
            name: name.parse()?,
            kind,
        })
    }
}

/// The first `ns` query parameter, percent-decoded: containerd escapes the
/// `:` of a port.
fn namespace(query: Option<&str>) -> Result<Option<RegistryHost>, RegistryError> {
    let Some(query) = query else { return Ok(None) };
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "ns")
        .map(|(_, value)| value.parse().map_err(RegistryError::from))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> String {
        format!("sha256:{}", "a".repeat(64))
    }

    #[test]
    fn containerd_mirror_requests_carry_ns() {
        let target = Target::parse("library/nginx/manifests/1.27", Some("ns=docker.io")).unwrap();
        assert_eq!(target.registry.unwrap().as_str(), "docker.io");
        assert_eq!(target.name.as_str(), "library/nginx");
        assert_eq!(target.kind, Kind::Manifest("1.27".parse().unwrap()));
        let target = Target::parse("a/b/blobs/x", None).unwrap_err();
        assert!(
            matches!(target, RegistryError::DigestInvalid(_)),
            "{target:?}"
        );
        let port = Target::parse("app/manifests/v1", Some("ns=127.0.0.1%3A5000")).unwrap();
        assert_eq!(port.registry.unwrap().as_str(), "127.0.0.1:5000");
    }

    #[test]
    fn people_put_the_registry_first() {
        let target = Target::parse(&format!("ghcr.io/org/app/blobs/{}", digest()), None).unwrap();
        assert_eq!(target.registry.unwrap().as_str(), "ghcr.io");
        assert_eq!(target.name.as_str(), "org/app");
        let plain = Target::parse(&format!("org/app/blobs/{}", digest()), None).unwrap();
        assert_eq!(plain.registry, None);
        assert_eq!(plain.name.as_str(), "org/app");
    }

    #[test]
    fn the_last_marker_splits_name_from_reference() {
        let target = Target::parse("a/manifests/b/manifests/v1", None).unwrap();
        assert_eq!(target.name.as_str(), "a/manifests/b");
    }

    #[test]
    fn hostile_paths_are_4xx_errors() {
        for (path, query) in [
            ("library/%2e%2e/manifests/v1", None),
            ("../../etc/manifests/v1", None),
            ("a/../b/manifests/v1", None),
            ("a//b/manifests/v1", None),
            ("/manifests/v1", None),
            ("a/manifests/", None),
            ("a/manifests/v1/extra", None),
            ("a/blobs/sha256:../../x", None),
            ("a/manifests/v1", Some("ns=bad/host")),
            ("a/manifests/v1", Some("ns=")),
            ("a\0b/manifests/v1", None),
            ("a/tags/list", None),
        ] {
            assert!(
                Target::parse(path, query).is_err(),
                "{path:?} {query:?} accepted"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever path and query arrive, parsing ends in a target or a
        /// client error, and an accepted name never climbs out of a store.
        #[test]
        fn any_path_is_a_target_or_a_client_error(
            path in "([a-z0-9.%/_-]{0,20}/(manifests|blobs)/)?\\PC{0,80}",
            query in proptest::option::of("\\PC{0,60}"),
        ) {
            match Target::parse(&path, query.as_deref()) {
                Ok(target) => prop_assert!(!target.name.as_str().split('/').any(|c| c == "..")),
                Err(error) => prop_assert!(!matches!(error, RegistryError::Unavailable(_))),
            }
        }
    }
}
